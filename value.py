"""The example service's deployment: everything CI needs to serve it, and nothing else.

Only `name = literal` assignments are allowed here (the tooling reads this file without
running it). Fields left out take the platform defaults.
"""

# --- who and what -------------------------------------------------------------------
service_name = "text-direction"  # unique; callers reach it at /api/<username>/<service_name>
username = "like"                # your team: one of the teams in conf/teams.yaml
handler = "server:TextDirection"  # module:Class in src/ that serves the model
model_path = "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx"  # relative to the repo (and the image's /app)

# --- resources of one pod (one pod = one GPU = one process) --------------------------
cpu = 4              # CPU cores per pod; also sets the model's CPU threads
memory = "8Gi"       # memory limit per pod, a Kubernetes quantity ("24Gi", not "24GB")
gpu_num = 1          # GPUs per pod; 0 serves on the CPU
ins_num_per_gpu = 1  # model instances per GPU (each with its own batch queue)
gpu_memory = 2       # GiB of GPU memory each instance's session may use (a 2080Ti offers 10)

# --- replicas per stage --------------------------------------------------------------
replicas = 2         # default production replicas in a region
ab_replicas = 1      # replicas of the A/B copy
hk_replicas = 2      # per-region production replicas (0 takes `replicas`)
eu_replicas = 1
na_replicas = 1

# --- start-up and discovery ----------------------------------------------------------
init_delay_second = 60      # longest start-up (load + warm-up) before Kubernetes restarts the pod
use_decode_sidecar = False  # run the video-decode sidecar beside the server
use_srv = False             # register with Kong service discovery (probes IP:host_port/api/ping)
host_port = 0               # the host port Kong probes when use_srv is True

# --- serving (the platform defaults suit most services) ------------------------------
max_batch_size = 16        # most requests one predict call receives
max_batch_delay_ms = 5     # longest wait for a batch to fill after its first request
queue_size = 64            # requests queued per instance before answering 503
request_timeout_ms = 10000  # default deadline; callers may only lower it
drain_seconds = 5          # on shutdown, seconds /api/ping is 503 before the server closes
