"""The Ray batch renderer end to end on CPU actors with logical GPUs (tiny presets).

Covers: a mixed T2V/I2V manifest; identical hashes from scratch; an actor killed mid-batch; the driver killed
and rerun; bad rows recorded as failed while the rest render; a finished batch rerun renders nothing.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from turbo_batch.config import load_config  # noqa: E402
from turbo_batch.demo import demo_image  # noqa: E402
from turbo_batch.driver import actor_runtime_env, render  # noqa: E402
from turbo_batch.store import Store  # noqa: E402

OVERRIDES = ["runtime.attention=dense", "render.max_retries=2"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("manifest")
    Image.fromarray(demo_image(96, 64)).save(folder / "product.png")
    Image.fromarray(demo_image(64, 96)).save(folder / "tall.png")
    n_t2v, n_i2v = 8, 4
    table = pa.table({
        "id": [f"r{i:02d}" for i in range(n_t2v + n_i2v)],
        "prompt": [f"product clip {i % 5}" for i in range(n_t2v)] + ["turn to camera"] * n_i2v,
        "seed": pa.array(list(range(n_t2v)) + [100, 101, 102, 103], pa.int64()),
        "model": ["tiny-t2v"] * n_t2v + ["tiny-i2v"] * n_i2v,
        "image": [None] * n_t2v + ["product.png", "tall.png", "product.png", "tall.png"],
        "adaptive_resolution": [None] * n_t2v + [False, True, False, True],
        "steps": pa.array([4, 2, 4, 1, 4, 4, 3, 4] + [4, 4, 2, 4], pa.int64()),
        "num_frames": pa.array([5] * (n_t2v + n_i2v), pa.int64()),
        "sku": [f"SKU-{i}" for i in range(n_t2v + n_i2v)],
    })
    path = folder / "manifest.parquet"
    pq.write_table(table, path)
    return str(path)


@pytest.fixture(scope="module")
def baseline(cluster, manifest, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out") / "run")
    result = render(manifest, out, load_config(OVERRIDES), live=False)
    return out, result


def hashes(out):
    index = Store(out).read_index().to_pylist()
    return {r["id"]: r["frames_sha256"] for r in index}


def test_a_mixed_manifest_renders_every_row_with_hashes_and_passthrough(baseline):
    out, result = baseline
    assert result.exit_code == 0, result.summary["failures"]
    index = Store(out).read_index().to_pylist()
    assert len(index) == 12 and all(r["status"] == "ok" for r in index)
    assert [r["sku"] for r in index] == [f"SKU-{i}" for i in range(12)]
    store = Store(out)
    for r in index:
        data = store.read_bytes(r["mp4_path"])
        import hashlib

        assert hashlib.sha256(data).hexdigest() == r["mp4_sha256"]
        assert len(r["frames_sha256"]) == 64 and r["actor"].startswith("actor-") and r["gpu"] in ("0", "1")
    tall = [r for r in index if r["id"] == "r09"][0]
    assert tall["height"] > tall["width"]  # adaptive resolution followed the tall image
    assert len({r["actor"].split(".")[0] for r in index}) == 2  # both actors worked
    summary = result.summary
    assert summary["ok"] == 12 and summary["failed"] == 0 and summary["videos_per_minute"] > 0
    assert os.path.exists(os.path.join(out, "summary.json"))


def test_rendering_again_from_scratch_gives_identical_frame_hashes(baseline, manifest, tmp_path):
    out, _ = baseline
    again = f"file://{tmp_path}/again"  # actors and driver write through a pyarrow filesystem URI
    assert render(manifest, again, load_config(OVERRIDES), live=False).exit_code == 0
    assert hashes(again) == hashes(out)


def test_rerunning_a_finished_batch_renders_nothing_and_exits_0(baseline, manifest):
    out, _ = baseline
    result = render(manifest, out, load_config(OVERRIDES), live=False)
    assert result.exit_code == 0 and result.summary["rendered_this_run"] == 0
    assert result.summary["skipped_already_done"] == 12


def _alive_worker_pids():
    """PIDs of live actor processes (Ray titles them `ray::RenderWorker...`)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::RenderWorker"):
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_an_actor_killed_mid_batch_is_replaced_and_nothing_is_lost_or_duplicated(baseline, manifest, tmp_path):
    out, _ = baseline
    killed_out = str(tmp_path / "killed")
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=render(manifest, killed_out, load_config(OVERRIDES), live=False)))
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.isdir(os.path.join(killed_out, "records")):
        time.sleep(0.2)
    pids = _alive_worker_pids()
    assert pids, "no worker to kill"
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=600)
    r = result["r"]
    assert r.exit_code == 0, r.summary["failures"]
    assert hashes(killed_out) == hashes(out)
    index = Store(killed_out).read_index().to_pylist()
    videos = [f for _, _, fs in os.walk(os.path.join(killed_out, "videos")) for f in fs]
    assert len(index) == 12 and len(videos) == len({row["key"] for row in index})
    assert any(row["actor"].endswith(".2") for row in index) or max(row["attempt"] for row in index) >= 1


def test_a_killed_driver_reruns_only_the_missing_rows(cluster, baseline, manifest, tmp_path):
    out, _ = baseline
    partial = str(tmp_path / "partial")
    env = {**os.environ, "RAY_ADDRESS": cluster, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, "-m", "turbo_batch.cli", "render", manifest, "--out", partial, *OVERRIDES],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = os.path.join(partial, "records")
    deadline = time.time() + 180
    while time.time() < deadline:
        n = sum(len(fs) for _, _, fs in os.walk(records)) if os.path.isdir(records) else 0
        if n >= 3:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    # the dead driver's actors die with it, possibly finishing a row first: wait until the output is quiet
    last, quiet_since = -1, time.time()
    while time.time() - quiet_since < 3.0:
        n = len(Store(partial).done_keys())
        if n != last:
            last, quiet_since = n, time.time()
        time.sleep(0.3)
    done_before = last
    assert 3 <= done_before < 12
    result = render(manifest, partial, load_config(OVERRIDES), live=False)
    assert result.exit_code == 0
    assert result.summary["rendered_this_run"] == 12 - done_before
    assert hashes(partial) == hashes(out)


def test_bad_rows_are_recorded_as_failed_with_clear_errors_and_the_rest_render(cluster, tmp_path):
    Image.fromarray(demo_image()).save(tmp_path / "ok.png")
    table = pa.table({
        "id": ["good", "empty", "noimg", "frames", "model", "negseed", "good", "good2"],
        "prompt": ["fine", "  ", "x", "x", "x", "x", "dup", "fine too"],
        "seed": pa.array([1, 2, 3, 4, 5, -6, 7, 8], pa.int64()),
        "model": ["tiny-t2v", "tiny-t2v", "tiny-i2v", "tiny-t2v", "wan9", "tiny-t2v", "tiny-t2v", "tiny-i2v"],
        "image": [None, None, "missing.png", None, None, None, None, "ok.png"],
        "num_frames": pa.array([5, 5, 5, 6, 5, 5, 5, 5], pa.int64()),
    })
    pq.write_table(table, tmp_path / "bad.parquet")
    result = render(str(tmp_path / "bad.parquet"), str(tmp_path / "out"), load_config(OVERRIDES), live=False)
    assert result.exit_code == 1
    rows = {r["row"]: r for r in Store(str(tmp_path / "out")).read_index().to_pylist()}
    assert rows[0]["status"] == "ok" and rows[7]["status"] == "ok"
    expected = {1: "prompt: empty", 2: "image: cannot read 'missing.png'", 3: "num_frames:", 4: "model:",
                5: "seed:", 6: "id: 'good' duplicates the id of row 0"}
    for row, prefix in expected.items():
        assert rows[row]["status"] == "failed" and rows[row]["error"].startswith(prefix), rows[row]["error"]
    assert result.summary["failed"] == 6 and result.summary["ok"] == 2


def test_a_wrong_column_type_fails_its_rows(cluster, tmp_path):
    pq.write_table(pa.table({"prompt": ["a", "b"], "seed": ["1", "2"]}), tmp_path / "m.parquet")
    result = render(str(tmp_path / "m.parquet"), str(tmp_path / "out"), load_config(OVERRIDES), live=False)
    assert result.exit_code == 1
    errors = [r["error"] for r in Store(str(tmp_path / "out")).read_index().to_pylist()]
    assert errors == ["seed: column has type string, expected integer"] * 2


def test_actors_start_with_the_configured_cuda_allocator_setting(cluster, monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    probe = ray.remote(lambda: __import__("os").environ.get("PYTORCH_CUDA_ALLOC_CONF"))  # by value: no test import
    env = actor_runtime_env(load_config(OVERRIDES))
    assert ray.get(probe.options(num_cpus=0, runtime_env=env).remote()) == "expandable_segments:True"
    assert actor_runtime_env(load_config(OVERRIDES + ["render.cuda_alloc_conf=null"])) is None
