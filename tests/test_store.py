"""The output store: atomic, key-addressed writes; records mark completion; index shards replace cleanly."""
import json
import os

import pyarrow as pa

from turbo_batch.store import Store


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("videos/ab/abc.mp4", b"x" * 10)
    store.write_bytes("videos/ab/abc.mp4", b"y" * 5)
    assert (tmp_path / "videos/ab/abc.mp4").read_bytes() == b"yyyyy"
    assert [p.name for p in (tmp_path / "videos/ab").iterdir()] == ["abc.mp4"]


def test_a_row_is_done_only_with_an_ok_record_and_its_mp4(tmp_path):
    store = Store(f"file://{tmp_path}")
    store.write_bytes(Store.video_relpath("k1"), b"mp4")
    store.write_record({"key": "k1", "status": "ok", "mp4_path": Store.video_relpath("k1")})
    store.write_record({"key": "k2", "status": "failed", "mp4_path": None, "error": "boom"})
    store.write_record({"key": "k3", "status": "ok", "mp4_path": Store.video_relpath("k3")})  # its MP4 was lost
    assert store.done_keys() == {"k1"}
    assert store.read_record("k2")["error"] == "boom"
    assert json.loads((tmp_path / "records/k1/k1.json").read_text())["status"] == "ok"


def test_index_shards_are_replaced_not_appended(tmp_path):
    store = Store(str(tmp_path))
    store.write_index(pa.table({"row": list(range(10))}), shard_rows=3)
    assert sorted(os.listdir(tmp_path / "index")) == [f"part-0000{i}.parquet" for i in range(4)]
    store.write_index(pa.table({"row": list(range(4))}), shard_rows=3)
    assert sorted(os.listdir(tmp_path / "index")) == ["part-00000.parquet", "part-00001.parquet"]
    assert store.read_index().column("row").to_pylist() == [0, 1, 2, 3]


def test_a_finished_run_sweeps_the_temp_files_its_killed_writers_left_and_no_one_elses(tmp_path):
    run, other = Store(str(tmp_path), writer_tag="run1"), Store(str(tmp_path), writer_tag="run2")
    run.write_bytes("videos/ab/abc.mp4", b"done")
    (tmp_path / "videos/ab/abd.mp4.tmp-run1-0123abcd").write_bytes(b"half a video")  # an actor killed mid-write
    (tmp_path / "records/ab").mkdir(parents=True)
    (tmp_path / "records/ab/abd.json.tmp-run1-4567abcd").write_bytes(b"{")
    (tmp_path / "videos/ab/abe.mp4.tmp-run2-89abcdef").write_bytes(b"another run, still writing")
    for stale in (tmp_path / "videos/ab/abf.mp4.tmp-run0-00000000", tmp_path / "summary.json.tmp-run0-11111111"):
        stale.write_bytes(b"a run killed yesterday")
        os.utime(stale, (0, 0))

    assert run.remove_orphaned_temps() == 4
    assert sorted(p.name for p in (tmp_path / "videos/ab").iterdir()) == ["abc.mp4", "abe.mp4.tmp-run2-89abcdef"]
    assert list((tmp_path / "records/ab").iterdir()) == [] and not (tmp_path / "summary.json.tmp-run0-11111111").exists()
    assert other.read_bytes("videos/ab/abc.mp4") == b"done"
