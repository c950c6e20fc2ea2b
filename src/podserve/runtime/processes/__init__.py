"""The pod's processes: the layout chosen at start, the supervisor (PID 1 of the split layout), the front, the decoders,
the model process, their shared state, and the wire between them (transport/)."""
