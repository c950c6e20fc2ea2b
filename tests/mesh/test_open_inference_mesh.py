"""The Open Inference Protocol through the mesh: Triton's own client reaches a pod by /api/<team>/<service>/v2/...

The route's existing prefix rewrite (/api/<team>/<service>/ -> /api/<service>/) carries the protocol's
paths; the real Envoy, fed by istiod, plays the region's gateway (the kubelet's part is simulated, as in the rest of
this suite).
"""

from __future__ import annotations

import numpy as np
import tritonclient.http as triton

from traffic import HOST


def test_triton_s_client_infers_through_the_gateway_by_the_team_s_path(mesh):
    client = triton.InferenceServerClient(url=mesh.url.removeprefix("http://") + "/api/like/test")
    headers = {"Host": HOST}
    assert client.is_server_ready(headers=headers) and client.is_model_ready("test", headers=headers)
    assert client.get_model_metadata("test", headers=headers)["inputs"][0]["name"] == "x"
    rows = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], dtype=np.float32)
    for binary in (False, True):
        given = triton.InferInput("x", list(rows.shape), "FP32")
        given.set_data_from_numpy(rows, binary_data=binary)
        result = client.infer("test", [given], headers=headers,
                              outputs=[triton.InferRequestedOutput("y", binary_data=binary)])
        np.testing.assert_allclose(result.as_numpy("y"), 2 * rows + 1)
