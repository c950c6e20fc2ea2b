# expect: raise -- a file that raises
service_name = 'text-direction'
username = 'like'
handler = 'server:TextDirection'
model_path = 'model/ch_ppocr_mobile_v2.0_cls_mobile.onnx'
cpu = 4
memory = '8Gi'
gpu_num = 1
ins_num_per_gpu = 1
gpu_memory = 2
replicas = 2
ab_replicas = 1
hk_replicas = 2
eu_replicas = 1
na_replicas = 1
init_delay_second = 60
use_decode_sidecar = False
use_srv = False
host_port = 0
max_batch_size = 16
max_batch_delay_ms = 5
queue_size = 64
request_timeout_ms = 10000
drain_seconds = 5
raise SystemExit(1)
