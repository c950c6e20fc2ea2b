"""Videos on /api/<service>: sampled frames answered per frame, batched with each other, as images would be."""

from __future__ import annotations

import base64

import pytest
from load import burst
from videos import flipping_video, sampled_frames_as_png

from podserve.settings import ServingSettings

VIDEO_TYPE = {"Content-Type": "video/mp4"}


@pytest.fixture(scope="module")
def server(start_module_server, example_model):
    return start_module_server(handler="server:TextDirection", model_path=str(example_model), service_name="example",
                               max_batch_size=16, max_batch_delay_ms=5)


@pytest.fixture(scope="module")
def video():
    return flipping_video(seconds=10, rate=10, flip_at=5.0)


def _frames(reply) -> list[dict]:
    assert reply.status_code == 200, reply.text if hasattr(reply, "text") else reply.content
    return reply.json()["results"]["frames"]


def test_a_video_by_json_and_by_raw_bytes_gets_each_sampled_frame_s_angle_as_its_image_would(server, video):
    as_json = _frames(server.post({"postid": "v1", "video": base64.b64encode(video).decode()}))
    raw = server.post(data=video, headers=VIDEO_TYPE, params={"postid": "v2", "uid": "u"})
    assert raw.json()["postid"] == "v2"
    as_raw = _frames(raw)
    assert [f["timestamp"] for f in as_json] == [float(t) for t in range(10)]  # one a second (video_fps = 1)
    assert [f["angle"] for f in as_json] == [0] * 5 + [180] * 5
    assert as_raw == as_json
    for frame, (timestamp, png) in zip(as_json, sampled_frames_as_png(video)):
        image = server.post(data=png, headers={"Content-Type": "image/png"}).json()["results"]
        assert frame["timestamp"] == timestamp and frame["angle"] == image["angle"]
        assert abs(frame["score"] - image["score"]) <= 1e-3


def test_eight_videos_at_once_share_batches_and_each_gets_its_own_answer(server):
    videos = [flipping_video(seconds=6, rate=5, flip_at=flip) for flip in (1, 2, 3, 4, 5, 6, 1.5, 2.5)]
    alone = [_frames(server.post(data=v, headers=VIDEO_TYPE)) for v in videos]
    calls, inputs = server.metric_sum("podserve_batch_size_count"), server.metric_sum("podserve_batch_size_sum")
    replies = burst(server.api, [{"data": v, "headers": VIDEO_TYPE} for v in videos])
    calls = server.metric_sum("podserve_batch_size_count") - calls
    inputs = server.metric_sum("podserve_batch_size_sum") - inputs
    for reply, answer in zip(replies, alone):
        assert [f["angle"] for f in _frames(reply)] == [f["angle"] for f in answer]
    frames = sum(len(answer) for answer in alone)
    print(f"{frames} frames of 8 videos in {calls:.0f} predict calls")
    assert inputs == frames and calls < frames and inputs / calls > 1, (calls, inputs)
    assert [[f["angle"] for f in a] for a in alone][0] == [0] + [180] * 5


def test_rotation_metadata_is_honoured(server):
    from videos import encode, text_frame
    upside_down_but_shown_turned = encode([text_frame(True)] * 4, 2, rotation=180)
    assert [f["angle"] for f in _frames(server.post(data=upside_down_but_shown_turned, headers=VIDEO_TYPE))] == [0, 0]


def test_video_limits_never_exceed_what_the_pod_holds():
    from podserve.runtime.api import InputLimits
    limits = InputLimits.from_settings(ServingSettings(max_video_frames=500, queue_size=64), holding_limit=64)
    assert limits.video.max_frames == 64
