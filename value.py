"""The example service's deployment: everything CI needs to serve it, and nothing else.

Only `name = literal` assignments are allowed here (the tooling reads this file without
running it). Fields left out take the defaults shown in the comments. Check it and see what
it becomes with `make render` (manifests in build/manifests/<stage>/).
"""

# --- who and what -------------------------------------------------------------------
service_name = "text-direction"  # unique; lowercase letters, digits, '-' (a letter first, at most 63)
username = "like"                # your team: one of the teams in conf/teams.yaml
handler = "server:TextDirection"  # module:Class in src/ that serves the model
model_path = "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx"  # relative to the repo (and the image's /app)

# --- resources of one pod (one pod = one GPU = one process owning it, fed by decoders) ---
cpu = 4              # CPU cores per pod (4, 0.5 or "500m"); also sets the model's CPU threads
memory = "8Gi"       # memory per pod, a Kubernetes quantity ("24Gi", not "24GB"); default "8Gi"
gpu_num = 1          # GPUs per pod: 1, or 0 to serve on the CPU (the platform allows at most 1)
ins_num_per_gpu = 1  # model instances per GPU (or on the CPU), each with its own batch queue; 1 to 16
gpu_memory = 2       # GiB of GPU memory each instance's session may use; 0: no limit (and always 0
                     # when gpu_num = 0). gpu_memory x ins_num_per_gpu must fit one GPU of every
                     # region (a 2080Ti offers 10; see conf/regions.yaml)

# --- replicas per stage --------------------------------------------------------------
# grey always runs exactly one pod.
replicas = 2         # production pods in a region, for regions whose own field is left out
ab_replicas = 1      # pods of the A/B copy
hk_replicas = 2      # per-region production pods; leave out (or None) to take `replicas`
eu_replicas = 1      # likewise for eu
na_replicas = 1      # likewise for na
max_replicas = 0     # 0: fixed replicas. Above a region's replicas: KEDA scales production between them
# autoscale_metric = "queue_depth"  # per pod: "queue_depth" (requests queued for a free batch lane) or "in_flight"
# autoscale_target = 16             # the per-pod mean over a minute it keeps; default max_batch_size
# regions = ["hk", "eu"]            # production regions to run in (default: every one); CI's job for another ends passed

# --- start-up and discovery ----------------------------------------------------------
init_delay_second = 60      # longest start-up (load + warm-up) before Kubernetes restarts the pod
# use_decode_sidecar = False  # the old platform's decode sidecar: none here, the server decodes videos (docs/videos.md)
use_srv = False             # register production pods with Kong service discovery (a hostPort)
host_port = 0               # the host port Kong probes at IP:host_port/api/ping; required (in your
                            # team's own range, conf/teams.yaml host_ports: like's 20000 to 22499)
                            # when use_srv is True, and 0 when it is not

# --- serving (the platform defaults suit most services) ------------------------------
max_batch_size = 16        # most requests one predict call receives; default 8
max_batch_delay_ms = 5     # longest wait for a batch to fill after its first request; default 2
queue_size = 64            # requests queued per instance before answering 503; at least max_batch_size
request_timeout_ms = 10000  # default deadline; callers may only lower it
drain_seconds = 5          # on shutdown, seconds /api/ping is 503 before the server closes
# decode_processes = -1           # processes that decode and encode beside the one that owns the GPU
                                  # (docs/processes.md): -1: one per core on a GPU pod, none on a CPU pod;
                                  # 0: one process does everything
# http_threads = 1                # request threads (parse, decode, encode); 0: one per CPU core
                                  # (on a GPU 0 answered 1.09-1.14x more at 64 callers: bench/results/gpu-runs.md)
# max_body_bytes = 10485760       # largest request body (413 above)
# max_image_pixels = 12500000     # largest decoded image (400 above); 16 bytes a pixel per decoding thread
                                  # count against memory (docs/processes.md, "Memory")
# stuck_batch_seconds = 120.0     # a batch running longer fails liveness (the pod restarts)

# --- video (sent as 'video' base64 in JSON, or raw with a video/* Content-Type; see README) ---
# video_fps = 1.0                   # frames sampled per second of video, each one model input
# max_video_bytes = 33554432        # largest video, before base64 (413 above)
# max_video_seconds = 60.0          # longest video, by its header or by what it holds (400 above)
# max_video_frames = 60             # most sampled frames of one video (400 above); at most queue_size per instance
# max_video_pixels = 8294400        # largest frame, 3840x2160 (400 above, before any frame is decoded)
# video_decode_timeout_seconds = 10.0  # longest decoding of one video (400 above)

# --- service level objectives (alerts page or open a ticket when the error budget burns fast) ---
# slo_availability = 0.999          # share of requests answered without a 5xx; 0: the platform's (conf/observability.yaml)
# slo_latency_target = 0.99         # share answered within the platform's latency threshold (0.5 s); 0: the platform's

# --- releasing production (docs/deploy.md: the verdict, the canary, mirroring) ------------------
# grey_mirror_percent = 0           # share of hk's production requests also sent to grey (0 to 50): grey answers
                                  # production's payloads, callers get production's answers only; 0: off
# canary_steps = []                 # e.g. [10, 50]: production gets the new pod template as a canary at 10%,
                                  # then 50% of requests, judged by the verdict at each step, before its rollout;
                                  # []: a plain rolling update (the only choice with use_srv = True)
# verdict_error_margin = None       # tighter than conf/deploy.yaml's verdict: the 5xx share over stable's allowed
# verdict_latency_margin = None     # the share of requests above stable's 90% latency bucket over stable's
# verdict_window_seconds = None     # a longer window to judge each step by

# --- offline mode: a Kafka worker instead of the HTTP server (see examples/offline/value.py) ---
# mode = "online"                   # "online": the HTTP server; "offline": a worker consuming source_topic
# source_topic = "text-lines"       # offline: the Kafka topic it reads (the same JSON body as /api/<service>)
# consumer_group = "text-direction" # offline: its consumer group; default service_name (grey adds "-grey")
# sink_topic = "text-directions"    # offline: where results go, keyed like their input (grey: "<sink>-grey")
# sink_file = "results.jsonl"       # offline, instead of sink_topic: a JSON-lines file, for one-off local jobs
# dead_letter_topic = "text-lines-dead"  # offline: poison messages, with their error in the headers
# lag_target = 1000                 # offline: consumer lag per replica KEDA keeps, between replicas and max_replicas
