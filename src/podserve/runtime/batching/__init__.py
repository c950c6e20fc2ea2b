"""The model instances and dynamic batching: the pool, each instance's batcher and its batch policy, a request's N
inputs fanned out and gathered, and where a request's own steps run (the event loop or a request thread)."""
