"""The worker's logic without a broker: NullLink in place of the AMQP link, PrecomputedEngine in place of the
networks (duplicates, late frames, segment ends, engine failures, restarts, bounded streams)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from slam3r.service.config import ServiceConfig
from slam3r.service.publish import encode_jpeg
from slam3r.service.testing import NullLink, PrecomputedEngine, room_results
from slam3r.service.worker import Service

RESULTS = room_results(6, size=16)
JPEG = encode_jpeg(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))


class Rig:
    """A worker on a NullLink with PrecomputedEngines (kept in :attr:`engines`)."""

    def __init__(self, encoding: str = "deployed", init: int = 1, min_frames: int = 1,
                 results: list | None = None, make=None, **changes) -> None:
        self.cfg = dataclasses.replace(ServiceConfig(encoding=encoding, decode_min_side=0), **changes)
        self.link = NullLink()
        self.engines: list[PrecomputedEngine] = []
        self.init, self.min_frames, self.results = init, min_frames, results or RESULTS
        self.make = make or (lambda: PrecomputedEngine(self.results, self.init, self.min_frames))
        self.svc = Service(self.cfg, self._engine, net_size=16, conf_thres_l2w=1.0, link=self.link)

    def _engine(self) -> PrecomputedEngine:
        self.engines.append(self.make())
        return self.engines[-1]

    def send(self, *headers: dict, body: bytes = JPEG, redelivered: bool = False, source: str = "frames") -> list:
        ds = [self.link.delivery(body, h, source, redelivered) for h in headers]
        self.svc.handle(ds)
        return ds

    def out(self, which: str) -> list[dict]:
        return self.link.messages(self.cfg.name(getattr(self.cfg, f"{which}_exchange")))

    def dead(self) -> list[str]:
        return [h["x-reject-reason"] for h in self.link.dead_letters(self.cfg.name(self.cfg.dead_letter_exchange))]

    def stamps(self, stream: str | None = None) -> list[int]:
        return [m["timestamp_ns"] for m in self.out("pose") if stream is None or m["stream_id"] == stream]


def frames(ts: range, **extra) -> list[dict]:
    return [{"timestamp_ns": t, **extra} for t in ts]


def test_phone_frames_without_segment_and_deployed_messages():
    rig = Rig()
    rig.send(*frames(range(100, 105)))                  # the phone server: timestamp_ns only (as a string there)
    rig.send({"timestamp_ns": "105", "width": "64", "height": "48"})
    assert rig.stamps() == list(range(100, 106))
    pose = rig.out("pose")[0]
    assert isinstance(pose["processing_timestamp"], str) and pose["video_segment"] is None
    pc = rig.out("pointcloud")[0]
    assert np.asarray(pc["points"]).shape[1] == 3 and len(pc["points"]) == 16 * 16
    vis = rig.out("vis")
    assert {m["type"] for m in vis} == {"points_update_incremental"}
    assert len(vis[-1]["vertices"]) == len(vis[-1]["colors"]) > 0 and vis[-1]["faces"] == []
    assert len(rig.link.settled) == 6 and rig.dead() == []


def test_redelivered_frames_are_registered_once_and_late_frames_dead_lettered():
    rig = Rig(encoding="json", init=3)
    first = rig.send(*frames(range(10, 14), video_segment="a"))
    assert rig.stamps() == [10, 11, 12, 13]
    rig.send(first[1].headers, redelivered=True)                  # outputs still cached: republished
    assert rig.stamps() == [10, 11, 12, 13, 11]
    assert rig.engines[0].pushed == [10, 11, 12, 13] and rig.svc.stats.duplicates == 1
    rig.send({"timestamp_ns": 20, "video_segment": "b"})          # ends "a"
    rig.send({"timestamp_ns": 9, "video_segment": "a"})           # a late frame of the finished "a"
    assert len(rig.dead()) == 1 and "late frame" in rig.dead()[0]
    ends = [m for m in rig.out("vis") if m.get("event") == "end"]
    assert [(e["video_segment"], e["next_segment"], e["frames"]) for e in ends] == [("a", "b", 4)]


def test_segment_boundaries_in_the_deployed_layout():
    rig = Rig()
    rig.send(*frames(range(0, 3), video_segment="0000_segment_000.mp4"))
    rig.send(*frames(range(3, 5), video_segment="0001_segment_001.mp4"))
    rig.send({"video_segment": "0001_segment_001.mp4", "end_of_segment": True})
    b = [m for m in rig.out("vis") if m["type"] == "segment_boundary"]
    assert [(m["previous_segment"], m["new_segment"], m["timestamp_ns"], m["frames"]) for m in b] == \
        [("0000_segment_000.mp4", "0001_segment_001.mp4", 3, 3), ("0001_segment_001.mp4", None, 4, 2)]


def test_a_segment_too_short_to_initialise_is_dead_lettered_with_a_reason(caplog):
    rig = Rig(encoding="json", init=5, min_frames=3)
    rig.send(*frames(range(1, 3), video_segment="short"))
    rig.send({"video_segment": "short", "end_of_segment": True})
    reasons = rig.dead()
    assert len(reasons) == 2 and all("segment too short to initialise: 2 frame(s)" in r for r in reasons)
    assert not any("engine error" in r for r in reasons) and "Traceback" not in caplog.text
    assert rig.stamps() == [] and len(rig.link.settled) == 3      # both frames and the marker acknowledged


def test_engine_failure_dead_letters_pending_frames_and_restarts_the_map():
    rig = Rig(encoding="json", init=4)
    rig.send(*frames(range(1, 3), video_segment="s"))
    rig.engines[0].push_many = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("GPU fell off"))
    rig.send({"timestamp_ns": 3, "video_segment": "s"})
    assert len(rig.dead()) == 3 and all("engine error: RuntimeError: GPU fell off" in r for r in rig.dead())
    assert rig.svc.streams["default"].pending == {} and len(rig.link.settled) == 3


def test_replays_restart_and_timestamps_going_back():
    rig = Rig()
    rig.send(*frames(range(0, 4)))                                 # the simulator's single-video mode: t from 0
    rig.send(*frames(range(0, 3)))                                 # the next video: t from 0 again
    assert rig.stamps() == [0, 1, 2, 3, 0, 1, 2]
    b = [m for m in rig.out("vis") if m["type"] == "segment_boundary"]
    assert [m["reason"] for m in b] == ["timestamps went back: a new recording"]
    rig.send(*frames(range(0, 3), video_segment="v.mp4"))
    rig.send({"video_segment": "v.mp4", "end_of_segment": True})
    rig.send(*frames(range(0, 3), video_segment="v.mp4"))         # replay without restart: late frames
    assert len(rig.dead()) == 3
    rig.send({}, body=b'{"type":"restart"}', source="restart")
    assert rig.svc.streams == {}
    rig.send(*frames(range(0, 3), video_segment="v.mp4"))         # after the restart: processed again
    assert rig.stamps()[-3:] == [0, 1, 2] and len(rig.dead()) == 3


def test_live_streams_are_bounded_least_recently_used_first():
    rig = Rig(encoding="json", max_streams=3)
    for i in range(6):
        rig.send({"timestamp_ns": 1, "video_segment": "s", "stream_id": f"cam{i}"})
    assert list(rig.svc.streams) == ["cam3", "cam4", "cam5"] and rig.svc.stats.evicted == 3
    ends = [m for m in rig.out("vis") if m.get("event") == "end"]
    assert [e["stream_id"] for e in ends] == ["cam0", "cam1", "cam2"]
    assert all("max_streams=3" in e["reason"] for e in ends)


def test_idle_streams_are_finished_and_forgotten(tmp_path):
    rig = Rig(encoding="json", stream_idle_s=60, save_segments=True, segment_output_dir=str(tmp_path))
    rig.send(*frames(range(1, 4), video_segment="s", stream_id="idle"))
    rig.svc.housekeeping(now=rig.svc.streams["idle"].last_active + 30)
    assert "idle" in rig.svc.streams
    rig.svc.housekeeping(now=rig.svc.streams["idle"].last_active + 61)
    assert rig.svc.streams == {}
    end = [m for m in rig.out("vis") if m.get("event") == "end"][0]
    assert end["frames"] == 3 and "idle" in end["reason"] and (tmp_path / "idle" / "s" / "points.ply").is_file()


def test_held_frames_of_many_streams_never_starve_a_normal_stream():
    rig = Rig(encoding="json", init=6, max_in_flight=24, prefetch=4, batch_size=4, max_streams=100)
    for i in range(40):                                        # 40 streams that each send a few frames and stop
        rig.send(*frames(range(1, 5), video_segment="s", stream_id=f"noise{i}"))
        rig.svc.housekeeping()
        assert rig.svc.held() <= 24 - 4
        rig.send({"timestamp_ns": 100 + i, "video_segment": "s", "stream_id": "normal"})
        rig.svc.housekeeping()
    assert rig.stamps("normal") == [100 + i for i in range(40)]        # every frame, none held back
    assert rig.svc.stats.evicted > 30 and rig.link.prefetch <= 24 and rig.dead() == []


@pytest.mark.parametrize("encoding", ["deployed", "json", "msgpack"])
def test_every_encoding_produces_decodable_messages(encoding):
    rig = Rig(encoding=encoding)
    rig.send(*frames(range(1, 4), video_segment="s"))
    rig.send({"video_segment": "s", "end_of_segment": True})
    assert rig.stamps() == [1, 2, 3] and len(rig.out("pointcloud")) == 3 and rig.out("vis")


def test_an_unregistered_frame_gets_no_fake_pose():
    """A frame the engine could not place (NaN pose, ``registered`` False) is settled and counted, never published
    as a pose or points."""
    nan_pose = np.full((4, 4), np.nan)
    rig = Rig(results=[dataclasses.replace(r, registered=False, pose_c2w=nan_pose) if i == 1 else r
                       for i, r in enumerate(RESULTS)])
    rig.send(*frames(range(100, 104)))
    assert rig.stamps() == [100, 102, 103]
    assert all(np.isfinite(np.asarray(m["raw_pose_matrix"], float)).all() for m in rig.out("pose"))
    assert len(rig.link.settled) == 4 and rig.dead() == [] and rig.svc.stats.unregistered == 1


def test_map_updates_every_few_frames_of_a_stream_however_many_streams_share_the_batches():
    rig = Rig(batch_size=4, map_update_frames=4)
    streams = [f"cam{k}" for k in range(4)]
    for t in range(10):                               # each batch: one frame of every stream
        rig.send(*[{"timestamp_ns": 100 + t, "video_segment": "s", "stream_id": s} for s in streams])
    rig.send(*[{"video_segment": "s", "end_of_segment": True, "stream_id": s} for s in streams], body=b"")
    vis = rig.out("vis")
    for s in streams:
        updates = [m for m in vis if m["stream_id"] == s and m["type"] == "points_update_incremental"]
        poses = [m for m in rig.out("pose") if m["stream_id"] == s]
        assert len(poses) == 10
        # after the 4th and 8th registered frames, then the last state (frame 10) at the segment end
        assert [m["timestamp_ns"] for m in updates] == [103, 107, 109]
        last = max(i for i, m in enumerate(vis) if m in updates)
        end = next(i for i, m in enumerate(vis) if m["stream_id"] == s and m["type"] == "segment_boundary")
        assert last < end


class LoopClosingEngine(PrecomputedEngine):
    """A PrecomputedEngine whose loop closure, once ``at`` frames were returned, moves frames 0-2 by ``shift``
    (``StreamingReconstructor.map_update``'s contract: cumulative corrections of every returned frame)."""

    def __init__(self, results, at: int, shift: np.ndarray) -> None:
        super().__init__(results)
        self.at, self.shift = at, shift

    def map_update(self, since_version: int = 0):
        from slam3r.recon.loop import MapUpdate

        if self.n < self.at or since_version >= 1:
            return None
        ids = list(range(self.n))
        return MapUpdate(1, ids, np.stack([self.shift if f < 3 else np.eye(4) for f in ids]), [(0, 4)])


def test_a_closed_loop_moves_the_service_map_and_trajectory_at_once():
    shift = np.eye(4)
    shift[0, 3] = 100.0
    rig = Rig(map_update_frames=100, make=lambda: LoopClosingEngine(RESULTS, 5, shift))
    for t in range(4):
        rig.send({"timestamp_ns": 100 + t, "video_segment": "s"})
    assert not rig.out("vis")                                # no loop yet, and map_update_frames not reached
    rig.send({"timestamp_ns": 104, "video_segment": "s"})   # the 5th frame: the loop closes
    (update,) = [m for m in rig.out("vis") if m["type"] == "points_update_incremental"]
    vertices = np.asarray(update["vertices"], np.float64)
    moved = vertices[:, 0] > 50
    st = next(iter(rig.svc.streams.values()))
    own = np.concatenate([RESULTS[f].pts3d_world.reshape(-1, 3) for f in range(3)])
    assert moved.any() and (~moved).any()
    d = np.abs((vertices[moved] - [100, 0, 0])[:, None] - own[None]).max(-1).min(1)
    assert d.max() < 1e-3                                    # moved points are frames 0-2's, shifted
    np.testing.assert_allclose(np.stack(st.poses)[:3, 0, 3], [RESULTS[f].pose_c2w[0, 3] + 100 for f in range(3)])
    np.testing.assert_allclose(np.stack(st.poses)[3:, 0, 3], [RESULTS[f].pose_c2w[0, 3] for f in (3, 4)])
    rig.send({"timestamp_ns": 105, "video_segment": "s"})   # the same map version: nothing moves twice
    assert len([m for m in rig.out("vis") if m["type"] == "points_update_incremental"]) == 1
    np.testing.assert_allclose(st.poses[0][0, 3], RESULTS[0].pose_c2w[0, 3] + 100)
