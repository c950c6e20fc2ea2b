"""A service small enough for the local cluster's real node (2 cores): the example's handler and model.

`make image VALUES=examples/real-node/value.py` builds its GPU image (the GPU is the real node's
only stand-in, and the image's CUDA base too: the server starts there but is not ready, its
/api/ping naming the CUDA and cuDNN libraries that do not load, docs/server.md "CPU and GPU");
with `make cluster REAL_NODE_POOL=gpu`, `make deploy STAGE=grey VALUES=examples/real-node/value.py`
starts it on the real node (README), where it stays not ready for that reason.
"""

service_name = "real-node-demo"
username = "like"
handler = "server:TextDirection"
model_path = "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx"

cpu = "500m"         # the example asks 4 cores and 8Gi: more than the real node has
memory = "1Gi"
gpu_num = 1          # one of the fake GPU plugin's nvidia.com/gpu
gpu_memory = 2

replicas = 2
ab_replicas = 1
hk_replicas = 2
init_delay_second = 60
drain_seconds = 2
