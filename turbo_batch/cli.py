"""`turbo-batch`: render, validate, demo, and the grid/sheet/verify tools.

Exit codes: 0 every row ok; 1 some rows failed (see the index and summary); 2 invalid invocation or manifest.
"""
from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from .config import ConfigError, load_config

console = Console(stderr=True)


def _print_summary(summary: dict) -> None:
    t = Table(title="turbo-batch summary", show_header=False)
    for k in ("rows", "ok", "failed", "invalid", "rendered_this_run", "skipped_already_done", "videos_per_minute",
              "gpu_hours", "wall_s", "actors"):
        t.add_row(k.replace("_", " "), str(summary[k]))
    console.print(t)
    if summary["failures"]:
        f = Table(title=f"failed rows (first {min(len(summary['failures']), 20)} of {summary['failed']})")
        for c in ("row", "id", "error"):
            f.add_column(c, overflow="fold")
        for fail in summary["failures"][:20]:
            f.add_row(str(fail["row"]), str(fail["id"]), fail["error"])
        console.print(f)
    console.print(f"index: {summary['out']}/index/   summary: {summary['out']}/summary.json")


def cmd_render(args) -> int:
    from .driver import render

    cfg = load_config(args.overrides)
    result = render(args.manifest, args.out, cfg, address=args.address)
    _print_summary(result.summary)
    return result.exit_code


def cmd_validate(args) -> int:
    from .manifest import error_report, read_manifest, validate

    cfg = load_config(args.overrides)
    table = read_manifest(args.manifest)
    rows = validate(table, cfg, args.manifest)
    errors = error_report(rows)
    if not errors:
        console.print(f"[green]{args.manifest}: all {len(rows)} rows valid[/green]")
        return 0
    t = Table(title=f"{len(errors)} invalid rows of {len(rows)}")
    for c in ("row", "id", "field", "reason"):
        t.add_column(c, overflow="fold")
    for row, rid, field, reason in errors:
        t.add_row(str(row), rid, field, reason)
    console.print(t)
    return 1


def cmd_demo(args) -> int:
    """Write a small example manifest (T2V and, with --i2v, I2V rows with a generated image)."""
    from .demo import write_demo_manifest

    path = write_demo_manifest(args.path, rows=args.rows, i2v=args.i2v)
    console.print(f"wrote {path}")
    return 0


def cmd_convert_fp8(args) -> int:
    """Load a preset's DiT expert(s), quantize to FP8 and save safetensors that load back with no re-quantization."""
    import os

    import torch

    from .config import load_preset, resolve_runtime
    from .models.dit import DiTConfig
    from .models.dit_checkpoints import load_dit, random_dit
    from .models.checkpoints import resolve_file
    from .models.loader import random_seed_for
    from .models.quantize import quantize_linears_, save_fp8_safetensors

    cfg = load_config(args.overrides)
    preset = load_preset(args.model)
    dit_cfg = DiTConfig.from_dict(dict(preset.dit))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seed = random_seed_for(preset, cfg)
    os.makedirs(args.out_dir, exist_ok=True)
    for i, name in enumerate(preset.experts):
        if seed is not None:
            model = random_dit(dit_cfg, seed + 1000 * (i + 1), device=device, dtype=torch.bfloat16)
        else:
            spec = preset.checkpoints[name]
            model = load_dit(dit_cfg, resolve_file(spec, name), layout=spec.get("layout", "auto"), device=device)
        quantize_linears_(model, keep=resolve_runtime(cfg)["fp8_keep_bf16"])
        path = os.path.join(args.out_dir, f"{preset.name}-{name}-fp8.safetensors")
        save_fp8_safetensors(model, path)
        console.print(f"wrote {path}; use it with checkpoints.{name}.path={path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="turbo-batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Config overrides: append key=value pairs to render/validate, e.g. sampling.steps=2")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render a Parquet manifest into OUT (resumable)")
    r.add_argument("manifest", help="Parquet manifest: local path or URI (s3://...)")
    r.add_argument("--out", required=True, help="output directory: local path or URI (file://, s3://, gs://)")
    r.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a fresh local Ray)")
    r.set_defaults(func=cmd_render)

    v = sub.add_parser("validate", help="list every invalid row (row, field, reason) without rendering")
    v.add_argument("manifest")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("demo", help="write an example manifest")
    d.add_argument("path")
    d.add_argument("--rows", type=int, default=4)
    d.add_argument("--i2v", action="store_true", help="add I2V rows (tiny-i2v) with a generated input image")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("convert-fp8", help="save a preset's DiT expert(s) as FP8 safetensors (loads without re-quantizing)")
    c.add_argument("--model", required=True, help="preset name")
    c.add_argument("--out-dir", required=True)
    c.set_defaults(func=cmd_convert_fp8)

    from .tools_cli import add_tool_commands

    add_tool_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides are key=value, e.g. sampling.steps=2)")
    args.overrides = extra
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as e:  # ManifestError and CheckpointError are ValueErrors
        console.print(f"[red]error:[/red] {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
