# expect: source_topic -- with 'grey.' after the team, grey's own stream is over Kafka's 249 characters
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
source_topic = 'like.rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr'
sink_topic = 'like.text-directions'
dead_letter_topic = 'like.text-lines-dead'
