"""HTTP/1.1 in the pod: the server and its parser, the limits on what a client may make it hold, admission (slots and
body budget, the paced 503s), the lingering close after a refusal, the lane for connections over the limit."""
