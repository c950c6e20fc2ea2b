"""A service small enough for the local cluster's real node (2 cores): the example's handler and model.

`make image VALUES=examples/real-node/value.py` builds its GPU image (the GPU is the real node's
only stand-in, and the image's CUDA base too: the server starts there but is not ready, its
/api/ping naming the missing GPU device and the CUDA and cuDNN libraries that do not load,
docs/server.md "CPU and GPU"); with `make cluster REAL_NODE_POOL=gpu`,
`make deploy STAGE=grey VALUES=examples/real-node/value.py` starts it on the real node (README),
where it stays not ready for that reason.
"""

service_name = "real-node-demo"
username = "like"
handler = "server:TextDirection"
model_path = "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx"

cpu = "500m"         # the example asks 4 cores and 8Gi: more than the real node has
memory = "2Gi"       # a GPU pod's host side: its model process holds a CUDA context (about 800 MiB measured on an
                     # H200) beside a decoder, and each of its two decoding threads a decoded image (`make render`
                     # says what each share is; docs/processes.md, "Memory")
gpu_num = 1          # one of the fake GPU plugin's nvidia.com/gpu
gpu_memory = 2
max_image_pixels = 4000000  # lines of text, not photos: 4 MP at most (16 bytes a pixel per decoding thread)
max_video_pixels = 2073600  # and videos of at most 1920x1080 (a decoder keeps up to 16 frames of 1.5 bytes a pixel)

replicas = 2
ab_replicas = 1
hk_replicas = 2
init_delay_second = 60
drain_seconds = 2
