"""The wire between the pod's processes in the split layout (docs/processes.md), apart from the loops that use it.

- `arena`: shared memory one process writes and its peers read (a memfd carved into blocks);
- `tensors`: model inputs and outputs as small descriptors of blocks in an arena, never pickled arrays;
- `link`: framed two-way message links over Unix sockets, batched per turn of the event loop, sendable from any
  thread;
- `handshake`: what two processes exchange when a link opens (who is speaking, and the arenas' file descriptors).

Nothing here knows about HTTP, handlers or batching: the front, the decoders and the model process build on it.
"""
