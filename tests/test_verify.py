"""`verify` on output of the real Ray driver (tiny preset, CPU): intact output passes, tampering is caught."""
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers import render_on_local_ray
from PIL import Image

ray = pytest.importorskip("ray")

from turbo_batch import NUMERICS_VERSION  # noqa: E402
from turbo_batch.cli import main  # noqa: E402
from turbo_batch.demo import demo_image  # noqa: E402
from turbo_batch.grid import build_grid, grid_table, parse_vary  # noqa: E402
from turbo_batch.store import Store  # noqa: E402
from turbo_batch.verify import CANNOT, MISMATCH, MISSING, OK, sample_rows, verify  # noqa: E402

ROWS = 5


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """1 prompt x seeds 3,4 x ode=true,false (num_frames 5) plus one I2V row whose image sits beside the
    manifest, rendered once; tests work on copies."""
    folder = tmp_path_factory.mktemp("verify")
    Image.fromarray(demo_image()).save(folder / "product.png")
    table = grid_table(build_grid(["a lamp"], [3, 4], parse_vary(["ode=true,false"]), {"num_frames": 5, "steps": 2}))
    i2v = pa.table({"id": ["i2v-0"], "prompt": ["turn to camera"], "seed": pa.array([9], pa.int64()),
                    "image": ["product.png"], "model": ["tiny-i2v"], "num_frames": pa.array([5], pa.int64())})
    pq.write_table(pa.concat_tables([table, i2v], promote_options="default"), folder / "grid.parquet")
    out = str(folder / "out")
    result = render_on_local_ray(str(folder / "grid.parquet"), out)
    assert result.exit_code == 0 and result.summary["ok"] == ROWS
    return out


@pytest.fixture
def out(rendered, tmp_path):
    copy = str(tmp_path / "out")
    shutil.copytree(rendered, copy)
    return copy


def _rewrite_index(out: str, column: str, row: int, value) -> None:
    store = Store(out)
    table = store.read_index()
    values = table.column(column).to_pylist()
    values[row] = value
    table = table.set_column(table.column_names.index(column), column, pa.array(values, table.schema.field(column).type))
    store.write_index(table, 64)


def test_untouched_output_verifies_every_mp4_and_reproduces_the_sampled_frames(out):
    result = verify(out, sample=ROWS, log=lambda _: None)
    assert [c.result for c in result.of("mp4")] == [OK] * ROWS
    assert [c.result for c in result.of("frames")] == [OK] * ROWS
    assert result.runtime == f"cpu|float32|dense|none|numerics-{NUMERICS_VERSION}" and result.exit_code == 0
    assert result.final_line().endswith("-> OK")


def test_the_sample_is_reproducible_from_its_seed_and_never_larger_than_the_batch(out):
    rows = Store(out).read_index().to_pylist()
    assert sample_rows(rows, 2, seed=5) == sample_rows(rows, 2, seed=5)
    assert len(sample_rows(rows, 99, seed=0)) == ROWS and sample_rows(rows, 0, seed=0) == []


def test_a_flipped_byte_in_an_mp4_fails_verification(out, capsys):
    store = Store(out)
    path = store.local_path(store.read_index().to_pylist()[1]["mp4_path"])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    assert main(["verify", out, "--sample", "0"]) == 1
    printed = capsys.readouterr().out
    assert "MISMATCH" in printed and printed.strip().splitlines()[-1].endswith("-> FAILED")
    result = verify(out, sample=0)
    assert [c.result for c in result.of("mp4")] == [OK, MISMATCH, OK, OK, OK]


def test_a_missing_mp4_fails_verification(out):
    store = Store(out)
    store.fs.delete_file(store.path(store.read_index().to_pylist()[2]["mp4_path"]))
    result = verify(out, sample=0)
    assert [c.result for c in result.of("mp4")] == [OK, OK, MISSING, OK, OK] and result.exit_code == 1


def test_a_wrong_frames_hash_in_the_index_is_caught_by_the_re_render(out, capsys):
    _rewrite_index(out, "frames_sha256", 0, "0" * 64)
    assert main(["verify", out, "--sample", str(ROWS), "--seed", "1"]) == 1
    printed = capsys.readouterr().out
    assert f"row 0 (p000-s3-v00) frames: expected {'0' * 64}, got " in printed
    frame_results = [line.split()[3] for line in printed.splitlines() if line.split()[2:3] == ["frames"]]
    assert frame_results == [MISMATCH, OK, OK, OK, OK]


def test_rows_rendered_on_other_numerics_cannot_be_verified_here_unless_forced(out):
    for row in range(ROWS):
        _rewrite_index(out, "runtime", row, "cuda|bfloat16|sla|fp8")
    result = verify(out, sample=2, log=lambda _: None)
    assert [c.result for c in result.of("frames")] == [CANNOT, CANNOT] and result.exit_code == 0
    assert "cuda|bfloat16|sla|fp8" in result.of("frames")[0].detail
    assert "2 cannot be verified on this machine" in result.final_line()
    forced = verify(out, sample=2, force=True, log=lambda _: None)
    assert [c.result for c in forced.of("frames")] == [OK, OK]


def test_rows_rendered_by_a_version_with_other_numerics_are_reported_as_such_not_as_mismatches(out):
    for row in range(ROWS):
        _rewrite_index(out, "runtime", row, "cpu|float32|dense|none")  # an id from before the numerics version
    result = verify(out, sample=1, log=lambda _: None)
    [check] = result.of("frames")
    assert check.result == CANNOT and result.exit_code == 0
    assert f"numerics version 1, this one computes version {NUMERICS_VERSION}" in check.detail


def test_an_i2v_row_whose_input_image_changed_cannot_be_verified(out, tmp_path):
    manifest_dir = tmp_path / "moved_manifest"
    summary = json.loads(Store(out).read_bytes("summary.json"))
    shutil.copytree(os.path.dirname(summary["manifest"]), manifest_dir)
    Image.fromarray(demo_image(64, 96)).save(manifest_dir / "product.png")
    Store(out).write_json("summary.json", {**summary, "manifest": str(manifest_dir / "grid.parquet")})
    i2v = [r for r in Store(out).read_index().to_pylist() if r["id"] == "i2v-0"]
    result = verify(out, sample=ROWS, log=lambda _: None)
    frames = {c.id: c for c in result.of("frames")}
    assert frames["i2v-0"].result == CANNOT and "changed since the render" in frames["i2v-0"].detail
    assert i2v[0]["image"] == "product.png" and result.exit_code == 0
