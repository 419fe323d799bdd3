"""A/B seed grids: prompts x seeds x parameter variants -> an ordinary manifest with grid coordinates.

The grid is only a way of writing a manifest: every cell is a normal row, so it renders, resumes and dedupes
like any batch. The coordinate columns (`grid_prompt`, `grid_seed`, `grid_variant`, `grid_variant_label`) are
passthrough columns, so they reach the output index, where `sheets.py` lays the cells out again.

    turbo-batch grid prompts.txt --seeds 0-3 --vary sla_topk=0.1,0.15 --vary ode=true,false \
        --set model=wan2.1-t2v-1.3b --out grid.parquet

Row order is prompt, then seed, then variant (the first `--vary` changes slowest), and row ids are
`p{prompt:03d}-s{seed}-v{variant:02d}`, so a grid rebuilt with more seeds keeps the ids (and render keys) of
the cells it already had.
"""
from __future__ import annotations

import itertools
import os
import posixpath
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .manifest import COLUMN_TYPES
from .params import MAX_SEED, PARAM_FIELDS
from .store import open_fs

COORDINATE_COLUMNS = ("grid_prompt", "grid_seed", "grid_variant", "grid_variant_label")
DEFAULT_VARIANT_LABEL = "default"
_ARROW_TYPES = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")


class GridError(ValueError):
    """A grid specification that cannot be expanded; the message names the flag and what is allowed."""


@dataclass
class Grid:
    prompts: list[str]
    seeds: list[int]
    images: list[str | None] = field(default_factory=list)  # aligned with prompts; empty = no images
    vary: dict[str, list] = field(default_factory=dict)  # key -> typed values, in command-line order
    fixed: dict[str, object] = field(default_factory=dict)

    @property
    def variants(self) -> list[dict]:
        """Every combination of the varied values (cartesian product; the first key changes slowest)."""
        keys = list(self.vary)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.vary[k] for k in keys))]

    def describe(self) -> str:
        n_p, n_s, n_v = len(self.prompts), len(self.seeds), len(self.variants)
        return f"{n_p} prompts x {n_s} seeds x {n_v} variants = {n_p * n_s * n_v} rows"


# ----------------------------------------------------------------------------------------------- parsing
def parse_seeds(spec: str) -> list[int]:
    """'0,7,42' / '0-99' (inclusive) / '0-3,10' -> seeds in the order given; duplicates are an error."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise GridError(f"--seeds {spec!r}: {part!r} is not a seed or an inclusive range like 0-99") from None
        if a > b:
            raise GridError(f"--seeds {spec!r}: range {part!r} runs backwards; write {b}-{a}")
        seeds.extend(range(a, b + 1))
    if not seeds:
        raise GridError(f"--seeds {spec!r}: no seeds given (e.g. --seeds 0,7,42 or --seeds 0-99)")
    for s in seeds:
        if not 0 <= s <= MAX_SEED:
            raise GridError(f"--seeds: seed {s} is out of range; seeds are integers in [0, 2^63)")
    dupes = sorted({s for s in seeds if seeds.count(s) > 1}) if len(set(seeds)) != len(seeds) else []
    if dupes:
        raise GridError(f"--seeds {spec!r}: seed(s) {', '.join(map(str, dupes))} appear more than once")
    return seeds


def parse_value(text: str):
    """A command-line value as its natural type: int, float, bool (true/false/yes/no/on/off) or string."""
    s = text.strip()
    if s.lower() in _TRUE:
        return True
    if s.lower() in _FALSE:
        return False
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def coerce(key: str, value, flag: str = "--vary"):
    """`value` converted to the manifest type of column `key` (COLUMN_TYPES), or a GridError saying why not."""
    kind = COLUMN_TYPES[key][0]
    if kind == "string":
        return value if isinstance(value, str) else format_value(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise GridError(f"{flag} {key}={format_value(value)}: {key} takes true or false")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise GridError(f"{flag} {key}={format_value(value)}: {key} takes integers")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GridError(f"{flag} {key}={format_value(value)}: {key} takes numbers")
    return float(value)


def format_value(value) -> str:
    """The label form of a value: true/false for booleans, shortest round-tripping text for numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def parse_assignment(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise GridError(f"{flag} {item!r}: expected key=value (e.g. {flag} steps=2,4)")
    if key not in PARAM_FIELDS:
        hint = " (use --seeds for seeds and --prompt/--image for prompts and images)" if key in ("seed", "prompt", "image", "id") else ""
        raise GridError(f"{flag} {key}: unknown parameter{hint}; known parameters: {', '.join(PARAM_FIELDS)}")
    return key, value


def parse_vary(items: list[str]) -> dict[str, list]:
    """['sla_topk=0.1,0.15', 'ode=true,false'] -> {'sla_topk': [0.1, 0.15], 'ode': [True, False]}."""
    vary: dict[str, list] = {}
    for item in items:
        key, text = parse_assignment(item, "--vary")
        if key in vary:
            raise GridError(f"--vary {key}: given twice; list all its values in one flag (--vary {key}=a,b)")
        values = [coerce(key, parse_value(v), "--vary") for v in text.split(",") if v.strip()]
        if not values:
            raise GridError(f"--vary {item!r}: no values (e.g. --vary {key}=a,b)")
        if len({format_value(v) for v in values}) != len(values):
            raise GridError(f"--vary {item!r}: a value appears twice")
        vary[key] = values
    return vary


def parse_set(items: list[str], vary: dict[str, list]) -> dict[str, object]:
    """['model=wan2.1-t2v-1.3b', 'num_frames=49'] -> {'model': 'wan2.1-t2v-1.3b', 'num_frames': 49}."""
    fixed: dict[str, object] = {}
    for item in items:
        key, text = parse_assignment(item, "--set")
        if key in vary:
            raise GridError(f"--set {key}: also given with --vary; a parameter is either fixed or varied")
        fixed[key] = coerce(key, parse_value(text), "--set")
    return fixed


def read_prompts(uri: str) -> tuple[list[str], list[str | None]]:
    """Prompts (and images, if an `image` column exists) from a .txt (one per line), .csv or .parquet file.

    Relative image paths in the file are made relative to the file's folder, as they would be in a manifest.
    """
    fs, path = open_fs(uri)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        with fs.open_input_stream(path) as f:
            lines = f.read().decode("utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip()]
        return prompts, [None] * len(prompts)
    if ext == ".csv":
        with fs.open_input_stream(path) as f:
            table = pacsv.read_csv(f)
    elif ext in (".parquet", ".pq"):
        with fs.open_input_file(path) as f:
            table = pq.read_table(f)
    else:
        raise GridError(f"{uri}: prompts come from a .txt (one per line), .csv or .parquet file")
    if "prompt" not in table.column_names:
        raise GridError(f"{uri}: no `prompt` column; it has {', '.join(table.column_names) or 'no columns'}")
    prompts = [str(p) for p in table.column("prompt").to_pylist() if p is not None and str(p).strip()]
    images: list[str | None] = [None] * len(prompts)
    if "image" in table.column_names:
        rows = [r for r in table.select(["prompt", "image"]).to_pylist() if r["prompt"] is not None and str(r["prompt"]).strip()]
        base = posixpath.dirname(uri) if "://" in uri else os.path.dirname(os.path.abspath(uri))
        images = [None if r["image"] in (None, "") else _join(base, str(r["image"])) for r in rows]
    return prompts, images


def _join(base: str, ref: str) -> str:
    return ref if "://" in ref or os.path.isabs(ref) else posixpath.join(base, ref)


# ----------------------------------------------------------------------------------------------- expansion
def build_grid(prompts: list[str], seeds: list[int], vary: dict[str, list] | None = None,
               fixed: dict[str, object] | None = None, images: list[str | None] | None = None) -> Grid:
    if not prompts:
        raise GridError("no prompts: give a prompts file and/or --prompt TEXT")
    images = list(images or [])
    if images and len(images) != len(prompts):
        raise GridError(f"{len(images)} images for {len(prompts)} prompts: give one --image per --prompt")
    return Grid(prompts=list(prompts), seeds=list(seeds), images=images, vary=dict(vary or {}), fixed=dict(fixed or {}))


def grid_table(grid: Grid, out_uri: str | None = None) -> pa.Table:
    """The manifest of `grid`: id, prompt, seed, [image], typed parameter columns, coordinate columns.

    Local image paths are written relative to the folder of `out_uri` (where the manifest will live), because
    the renderer reads relative paths from the manifest's folder.
    """
    variants = grid.variants
    params = [*grid.vary, *grid.fixed]
    cols: dict[str, list] = {name: [] for name in ("id", "prompt", "seed", "image", *params, *COORDINATE_COLUMNS)}
    images = [_relative_to_manifest(img, out_uri) for img in grid.images] if grid.images else []
    for pi, prompt in enumerate(grid.prompts):
        for seed in grid.seeds:
            for vi, variant in enumerate(variants):
                cols["id"].append(f"p{pi:03d}-s{seed}-v{vi:02d}")
                cols["prompt"].append(prompt)
                cols["seed"].append(seed)
                cols["image"].append(images[pi] if images else None)
                for key in params:
                    cols[key].append(variant[key] if key in variant else grid.fixed[key])
                cols["grid_prompt"].append(pi)
                cols["grid_seed"].append(seed)
                cols["grid_variant"].append(vi)
                cols["grid_variant_label"].append(variant_label(variant))
    types = {"id": pa.string(), "prompt": pa.string(), "seed": pa.int64(), "image": pa.string(),
             "grid_prompt": pa.int64(), "grid_seed": pa.int64(), "grid_variant": pa.int64(), "grid_variant_label": pa.string()}
    types.update({key: _ARROW_TYPES[COLUMN_TYPES[key][0]] for key in params})
    if not any(img is not None for img in images):
        del cols["image"]
    return pa.table({name: pa.array(values, type=types[name]) for name, values in cols.items()})


def variant_label(variant: dict) -> str:
    """'sla_topk=0.1 ode=true' (the varied values only), or 'default' for a grid without --vary."""
    return " ".join(f"{k}={format_value(v)}" for k, v in variant.items()) or DEFAULT_VARIANT_LABEL


def _relative_to_manifest(image: str | None, out_uri: str | None) -> str | None:
    if image is None or "://" in image or out_uri is None or "://" in out_uri:
        return image
    absolute = os.path.abspath(image)
    if not os.path.isfile(absolute):
        raise GridError(f"image {image!r}: no such file")
    return os.path.relpath(absolute, os.path.dirname(os.path.abspath(out_uri)))


def write_grid(table: pa.Table, out_uri: str) -> None:
    fs, path = open_fs(out_uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        pq.write_table(table, f)
