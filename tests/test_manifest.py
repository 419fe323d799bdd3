"""Manifest reading and validation: every bad row is named with its field and reason; the file itself fails fast."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from turbo_batch.config import load_config
from turbo_batch.manifest import ManifestError, error_report, passthrough_columns, read_manifest, validate

CFG = load_config()


def write(tmp_path, columns, name="m.parquet"):
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_a_manifest_without_prompt_or_seed_is_refused_as_a_whole(tmp_path):
    with pytest.raises(ManifestError, match="missing required column.*seed"):
        read_manifest(write(tmp_path, {"prompt": ["a"]}))
    with pytest.raises(ManifestError, match="file not found"):
        read_manifest(str(tmp_path / "nope.parquet"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="cannot read as Parquet"):
        read_manifest(str(tmp_path / "bad.parquet"))


def test_bad_rows_get_a_clear_error_and_good_rows_pass(tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    path = write(tmp_path, {
        "id": ["a", "b", "c", "d", "e", "f", "a", "h", "i"],
        "prompt": ["fine", "", "x", "x", "x", "x", "x", "x", "x"],
        "seed": pa.array([1, 2, 3, 4, -5, 6, 7, 8, 9], pa.int64()),
        "model": ["tiny-t2v", "tiny-t2v", "tiny-i2v", "tiny-t2v", "tiny-t2v", "nope", "tiny-t2v", "tiny-i2v", "tiny-i2v"],
        "image": [None, None, "missing.png", None, None, None, None, "broken.png", "ok.png"],
        "num_frames": pa.array([9, 9, 9, 8, 9, 9, 9, 9, 9], pa.int64()),
        "sku": ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"],
    })
    rows = validate(read_manifest(path), CFG, path)
    errors = {r.index: r.error for r in rows}
    assert errors[0] is None and errors[8] is None
    assert errors[1].startswith("prompt: empty")
    assert errors[2].startswith("image: cannot read 'missing.png'")
    assert errors[3].startswith("num_frames:") and "4k+1" in errors[3]
    assert errors[4].startswith("seed:") and "[0, 2^63)" in errors[4]
    assert errors[5].startswith("model:") and "tiny-t2v" in errors[5]
    assert errors[6].startswith("id: 'a' duplicates the id of row 0")
    assert errors[7].startswith("image: cannot decode")
    assert rows[8].image_sha256 is not None and rows[8].params.task == "i2v"
    assert [e[0] for e in error_report(rows)] == [1, 2, 3, 4, 5, 6, 7]
    assert passthrough_columns(read_manifest(path)) == ["sku"]


def test_a_column_of_the_wrong_type_fails_its_rows_with_the_expected_type(tmp_path):
    path = write(tmp_path, {"prompt": ["a", "b"], "seed": ["1", "2"]})
    rows = validate(read_manifest(path), CFG, path)
    assert all(r.error == "seed: column has type string, expected integer" for r in rows)
    path = write(tmp_path, {"prompt": ["a"], "seed": pa.array([1], pa.int64()), "steps": pa.array([2.5])}, "m2.parquet")
    (row,) = validate(read_manifest(path), CFG, path)
    assert row.error == "steps: column has type double, expected integer"


def test_image_bytes_in_the_manifest_are_accepted(tmp_path):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buf, format="PNG")
    path = write(tmp_path, {"prompt": ["p"], "seed": pa.array([3], pa.int64()), "model": ["tiny-i2v"],
                            "image": pa.array([buf.getvalue()], pa.binary())})
    (row,) = validate(read_manifest(path), CFG, path)
    assert row.ok and row.image_ref == f"<{len(buf.getvalue())} bytes>"
