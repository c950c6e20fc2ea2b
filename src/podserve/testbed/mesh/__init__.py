"""The region's ingress gateway for real: Envoy in front of our server processes, configured as istiod would.

Two steps through a small intermediate form (Envoy Gateway's layering): `istio.translate`
(rendered Gateway, VirtualServices, DestinationRules -> `ir.GatewayConfig`, refusing any
field it does not know) and `envoy.bootstrap` (IR -> Envoy bootstrap with file-based EDS).
`Mesh` starts the pods and Envoy, keeps the endpoints as the kubelet's readiness probe and
istiod would (simulated), and rolls or kills pods. `make mesh` runs `__main__`.
"""
