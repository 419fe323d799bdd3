"""The `jobs/` entrypoints: the nightly job writes a dated folder with its report and exits 1 on row failures."""
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_nightly_job_renders_into_a_dated_folder_reports_and_flags_failures(tmp_path):
    pq.write_table(pa.table({"prompt": ["a mug", ""], "seed": pa.array([1, 2], pa.int64())}), tmp_path / "m.parquet")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "nightly.py"), str(tmp_path / "m.parquet"),
                           "--root", str(tmp_path / "nightly"), "--date", "2026-01-31", "runtime.attention=dense",
                           "sampling.num_frames=5", "render.encode_workers=0"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    out = tmp_path / "nightly" / "2026-01-31"
    report = json.loads((out / "nightly_report.json").read_text())
    assert (out / "report.html").exists() and (out / "summary.json").exists()
    assert json.loads((out / "summary.json").read_text())["failed"] == 1
    assert "prompt: empty" in (out / "report.html").read_text()
    assert report is not None


def test_the_render_job_refuses_arguments_that_are_not_overrides(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "render.py"), "m.parquet", "--out", str(tmp_path),
                           "--bogus"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr
