"""The example model as an offline service: a worker reading text lines from Kafka instead of HTTP.

With `make kafka` running, `make serve VALUES=examples/offline/value.py` runs this worker
locally (the broker's address comes from PODSERVE_KAFKA_BOOTSTRAP, 127.0.0.1:9092 by
default for `make serve`); `make render VALUES=examples/offline/value.py` shows its manifests.
Only `name = literal` assignments are allowed here, as in value.py.
"""

service_name = "text-direction-offline"
username = "like"
handler = "server:TextDirection"
model_path = "model/ch_ppocr_mobile_v2.0_cls_mobile.onnx"

cpu = 4
memory = "8Gi"
gpu_num = 1
ins_num_per_gpu = 1
gpu_memory = 2

mode = "offline"
source_topic = "like.text-lines"       # each message: {"postid", "uid", "seqid", "image": "<base64>"}
sink_topic = "like.text-directions"     # each result: {"postid", "uid", "seqid", "results"}, keyed like its input
dead_letter_topic = "like.text-lines-dead"  # poison messages, unchanged, with the error in their headers
# every topic and consumer_group starts with the team ("like."); consumer_group defaults to "like.<service_name>";
# the grey stage uses "<group>-grey" and writes "like.text-directions-grey"

replicas = 1        # KEDA scales each region between replicas and max_replicas on consumer lag
max_replicas = 3    # at most the source topic's partitions do work; more would sit idle
lag_target = 1000   # messages of lag per replica KEDA aims at

max_batch_size = 16
max_batch_delay_ms = 5
queue_size = 64
