# expect: source_topic -- production reading grey's prefix (like.grey.) would read what any branch's code writes
service_name = 'text-direction-offline'
username = 'like'
handler = 'server:TextDirection'
model_path = 'model/ch_ppocr_mobile_v2.0_cls_mobile.onnx'
cpu = 4
memory = '8Gi'
gpu_num = 1
gpu_memory = 2
replicas = 1
max_replicas = 3
mode = 'offline'
source_topic = 'like.grey.out'
sink_topic = 'like.out'
dead_letter_topic = 'like.text-lines-dead'
