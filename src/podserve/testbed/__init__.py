"""Local stand-ins for production's surroundings, for `make cluster|mesh|kafka` and the tests.

A real Kubernetes control plane (fake nodes from kwok), the region's gateway (a real Envoy
configured as istiod would), a real Kafka broker and a real Prometheus, all on loopback.
Nothing here runs in a pod or in CI's deploy jobs, and nothing here is in the service image.
"""
