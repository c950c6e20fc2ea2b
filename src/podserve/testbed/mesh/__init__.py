"""The region's ingress gateway for real: istiod feeding a real Envoy in front of our server processes.

istiod (built from Go modules: build.py) reads the control plane: the platform chart's Gateway, the rendered
Services, VirtualServices and DestinationRules `Mesh` applies, the EndpointSlices of the pods `Mesh` runs as
processes in a pod network of their own (podnetwork.py); Envoy (gateway.py) runs what istiod pushes.
`make mesh` runs `__main__`.
"""
