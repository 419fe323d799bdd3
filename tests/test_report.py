"""report.html and nightly_report.json for a batch rendered by the real Ray driver (tiny preset, CPU)."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers import render_on_local_ray
from PIL import Image

ray = pytest.importorskip("ray")

from turbo_batch.cli import main  # noqa: E402
from turbo_batch.report import nightly_report, write_report  # noqa: E402
from turbo_batch.store import Store  # noqa: E402

IDS = ["mug-1", "mug-2", "bag-1", "broken"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """An ordinary (non-grid) batch: three good rows with a passthrough column, one row that fails."""
    folder = tmp_path_factory.mktemp("report")
    pq.write_table(pa.table({
        "id": IDS,
        "prompt": ["A red mug <rotating> & shining", "A red mug", "A leather bag", "A lamp"],
        "seed": pa.array([1, 2, 3, 4], pa.int64()),
        "model": ["tiny-t2v", "tiny-t2v", "tiny-t2v", "wan9"],
        "num_frames": pa.array([5, 5, 5, 5], pa.int64()),
        "sku": ["SKU-1", "SKU-1", "SKU-9", "SKU-404"],
    }), folder / "manifest.parquet")
    out = str(folder / "out")
    result = render_on_local_ray(str(folder / "manifest.parquet"), out)
    assert result.summary["ok"] == 3 and result.summary["failed"] == 1
    return out


def test_the_report_lists_every_row_and_failure_with_thumbnails_that_exist(batch):
    assert write_report(batch) == "report.html"
    html = open(os.path.join(batch, "report.html"), encoding="utf-8").read()
    for rid in IDS:
        assert rid in html
    assert "model: &#x27;wan9&#x27; is invalid" in html  # the failure's error, escaped
    assert "A red mug &lt;rotating&gt; &amp; shining" in html and "SKU-404" in html
    thumbs = re.findall(r'src="(report/thumbs/[0-9a-f]+\.png)"', html)
    assert len(thumbs) == 3
    for rel in thumbs:
        img = Image.open(os.path.join(batch, rel))
        assert img.size[1] >= 96  # tiny 32 px frames are upscaled to stay visible
    for link in re.findall(r'href="(videos/[^"]+\.mp4)"', html):
        assert os.path.isfile(os.path.join(batch, link))
    assert "<script" not in html


def test_the_report_command_also_writes_the_nightly_json(batch):
    assert main(["report", batch]) == 0
    nightly = json.load(open(os.path.join(batch, "nightly_report.json")))
    assert nightly["rows"] == 4 and nightly["ok"] == 3 and nightly["failed"] == 1
    assert [f["id"] for f in nightly["failures"]] == ["broken"]
    assert {s["id"] for s in nightly["slowest"]} == {"mug-1", "mug-2", "bag-1"}
    assert nightly["throughput"]["videos_per_minute"] > 0 and nightly["gpu_hours"] >= 0
    assert nightly_report(batch)["failures"] == nightly["failures"]


def test_a_remote_output_gets_its_thumbnails_inlined(batch, tmp_path, monkeypatch):
    copy = tmp_path / "out"
    shutil.copytree(batch, copy, ignore=shutil.ignore_patterns("report*"))
    monkeypatch.setattr(Store, "local_path", lambda self, rel: None)  # what an s3:// or gs:// OUT looks like
    write_report(str(copy))
    html = (copy / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3 and not (copy / "report" / "thumbs").exists()


def test_the_sheet_command_on_a_non_grid_batch_writes_only_the_report(batch, capsys):
    assert main(["sheet", batch]) == 0
    assert "not a grid" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(batch, "sheets"))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_the_report_renders_in_headless_chromium(batch, tmp_path):
    write_report(batch)
    shot = tmp_path / "report.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,1600",
           f"file://{os.path.join(batch, 'report.html')}"]
    subprocess.run(cmd, check=False, timeout=120, capture_output=True)
    assert shot.exists()
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # text, tables, thumbnails
