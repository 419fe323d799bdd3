"""The Parquet manifest: read, type-check, validate every row, and say exactly what is wrong with bad ones.

A manifest has one row per video. Required: `prompt` (string), `seed` (integer). Optional: `id`, `image`
(path/URI string or image bytes; makes the row I2V) and the parameter columns in `params.PARAM_FIELDS`. Every
other column is passthrough: copied unchanged into the output index (e.g. a SKU id).

A bad row never stops the batch: it gets `error` = "<field>: <reason>" and is recorded as failed.
A bad manifest FILE (unreadable, no prompt/seed column) raises `ManifestError` (exit code 2).
"""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from .params import PARAM_FIELDS, ParamError, RenderParams, resolve_params
from .store import open_fs

REQUIRED = ("prompt", "seed")
RESERVED = ("id", "prompt", "seed", "image", *PARAM_FIELDS)

_STRING = "string"
_INT = "integer"
_NUM = "number"
_BOOL = "boolean"
COLUMN_TYPES = {
    "prompt": (_STRING,), "seed": (_INT,), "id": (_STRING, _INT), "image": (_STRING, "binary"),
    "model": (_STRING,), "resolution": (_STRING,), "aspect_ratio": (_STRING,), "num_frames": (_INT,), "steps": (_INT,),
    "sigma_max": (_NUM,), "sla_topk": (_NUM,), "boundary": (_NUM,), "guidance": (_NUM,), "shift": (_NUM,),
    "ode": (_BOOL,), "adaptive_resolution": (_BOOL,),
}


class ManifestError(ValueError):
    """The manifest file as a whole cannot be used (exit code 2)."""


@dataclass
class ManifestRow:
    index: int
    id: str
    prompt: str | None = None
    image_ref: str | None = None  # what the manifest said (a path/URI, or "<N bytes>")
    image_sha256: str | None = None
    params: RenderParams | None = None
    error: str | None = None
    key: str | None = None
    _image_bytes: bytes | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


def _kind(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _STRING
    if pa.types.is_integer(t):
        return _INT
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return _NUM
    if pa.types.is_boolean(t):
        return _BOOL
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_null(t):
        return "null"
    return str(t)


def read_manifest(uri: str) -> pa.Table:
    """The manifest table from a local path or pyarrow filesystem URI (s3://...)."""
    try:
        fs, path = open_fs(uri)
        with fs.open_input_file(path) as f:
            table = pq.read_table(f)
    except FileNotFoundError:
        raise ManifestError(f"manifest {uri}: file not found") from None
    except Exception as e:
        raise ManifestError(f"manifest {uri}: cannot read as Parquet ({type(e).__name__}: {e})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"manifest {uri}: missing required column(s) {', '.join(missing)}; it has {', '.join(table.column_names) or 'no columns'}. "
            "Every row needs `prompt` (string) and `seed` (integer)."
        )
    return table


def passthrough_columns(table: pa.Table) -> list[str]:
    return [c for c in table.column_names if c not in RESERVED]


def read_image_bytes(ref: str, base_dir: str | None) -> bytes:
    """Bytes of an image given by local path (relative paths: to the manifest's folder, then cwd) or URI."""
    candidates = [ref]
    if "://" not in ref and not os.path.isabs(ref) and base_dir:
        candidates.insert(0, posixpath.join(base_dir, ref))
    last: Exception | None = None
    for cand in candidates:
        try:
            fs, path = open_fs(cand)
            with fs.open_input_stream(path) as f:
                return f.read()
        except Exception as e:  # try the next candidate
            last = e
    raise FileNotFoundError(f"cannot read {ref!r} ({type(last).__name__}: {last})")


def decode_image(data: bytes):
    """uint8 [h, w, 3] RGB array of image bytes (any format Pillow reads)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def validate(table: pa.Table, cfg: DictConfig, manifest_uri: str | None = None, *, keep_image_bytes: bool = False) -> list[ManifestRow]:
    """One `ManifestRow` per manifest row, each either with params or with `error` naming field and reason."""
    base_dir = None
    if manifest_uri is not None:
        base_dir = posixpath.dirname(manifest_uri) if "://" in manifest_uri else os.path.dirname(os.path.abspath(manifest_uri))
    type_errors = {}
    for col, kinds in COLUMN_TYPES.items():
        if col in table.column_names:
            kind = _kind(table.schema.field(col).type)
            if kind not in kinds and kind != "null":
                type_errors[col] = f"{col}: column has type {table.schema.field(col).type}, expected {' or '.join(kinds)}"
    columns = {c: table.column(c).to_pylist() for c in table.column_names if c in RESERVED}
    seen_ids: dict[str, int] = {}
    rows: list[ManifestRow] = []
    for i in range(table.num_rows):
        raw = {c: v[i] for c, v in columns.items()}
        rid = raw.get("id")
        row = ManifestRow(index=i, id=str(rid) if rid is not None else f"row-{i}")
        rows.append(row)
        row.prompt = raw.get("prompt")
        bad_types = [msg for col, msg in type_errors.items() if raw.get(col) is not None or col in REQUIRED]
        if bad_types:
            row.error = bad_types[0]
            continue
        if rid is not None:
            if row.id in seen_ids:
                row.error = f"id: {row.id!r} duplicates the id of row {seen_ids[row.id]}; ids must be unique"
                continue
            seen_ids[row.id] = i
        if row.prompt is None or not str(row.prompt).strip():
            row.error = "prompt: empty; give the text to render"
            continue
        image = raw.get("image")
        image_size = None
        if image is not None:
            try:
                if isinstance(image, (bytes, bytearray)):
                    data, row.image_ref = bytes(image), f"<{len(image)} bytes>"
                else:
                    row.image_ref = str(image)
                    data = read_image_bytes(row.image_ref, base_dir)
                arr = decode_image(data)
                image_size = (arr.shape[1], arr.shape[0])
            except FileNotFoundError as e:
                row.error = f"image: {e}; check the path (relative paths are read from the manifest's folder)"
                continue
            except Exception as e:
                row.error = f"image: cannot decode {row.image_ref!r} as an image ({type(e).__name__}: {e})"
                continue
            row.image_sha256 = hashlib.sha256(data).hexdigest()
            if keep_image_bytes:
                row._image_bytes = data
        try:
            row.params = resolve_params({k: raw.get(k) for k in (*PARAM_FIELDS, "seed")}, cfg,
                                        has_image=image is not None, image_size=image_size)
        except ParamError as e:
            row.error = e.row_error()
    return rows


def error_report(rows: list[ManifestRow]) -> list[tuple[int, str, str, str]]:
    """(row number, id, field, reason) for every invalid row, for `turbo-batch validate`."""
    out = []
    for r in rows:
        if r.error:
            field_name, _, reason = r.error.partition(": ")
            out.append((r.index, r.id, field_name, reason))
    return out
