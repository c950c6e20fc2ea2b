"""What each path of the pod answers, and in what format: `/api/<service>` (api.py, service_route.py, video_route.py),
the Open Inference Protocol (v2.py, v2_route.py), the probes, `/metrics` and the 404/405s."""
