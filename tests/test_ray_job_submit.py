"""The production path: `ray start --head`, then `ray job submit --working-dir . -- python jobs/render.py ...`.

Recent Ray turns token auth on for `ray start`; both sides here set RAY_AUTH_MODE=disabled (README says how to
keep auth on instead).
"""
import os
import shutil
import socket
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from turbo_batch.store import Store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
pytestmark = pytest.mark.skipif(RAY is None, reason="the ray CLI is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_job_submitted_to_a_started_cluster_renders_the_manifest(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "prompt": ["a mug", "a bag", "a lamp"],
                             "seed": pa.array([1, 2, 3], pa.int64()), "sku": ["S1", "S2", "S3"]}),
                   tmp_path / "manifest.parquet")
    out = tmp_path / "out"
    start = subprocess.run([RAY, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--num-cpus=2",
                            "--num-gpus=0", "--include-dashboard=true", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        submit = subprocess.run(
            [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", REPO, "--",
             "python", "jobs/render.py", str(tmp_path / "manifest.parquet"), "--out", str(out),
             "runtime.attention=dense", "sampling.num_frames=5"],
            env=env, capture_output=True, text=True, timeout=600)
        logs = submit.stdout[-3000:] + submit.stderr[-3000:]
        assert submit.returncode == 0, logs
        assert "succeeded" in logs.lower(), logs
        index = Store(str(out)).read_index().to_pylist()
        assert [r["status"] for r in index] == ["ok"] * 3 and [r["sku"] for r in index] == ["S1", "S2", "S3"]
        assert "[turbo-batch]" in submit.stdout  # progress lines reach the job's logs (anywhere in them)
        assert "Traceback" not in submit.stdout  # actors stop their encoder processes before they are killed
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
