"""The `grid`, `sheet`, `report` and `verify` subcommands of `turbo-batch` (wired in by `cli.build_parser`)."""
from __future__ import annotations

import argparse

NO_OVERRIDES = "takes no key=value config overrides"


def _print(msg: str) -> None:
    print(msg, flush=True)


def cmd_grid(args) -> int:
    from .config import load_config
    from .grid import GridError, build_grid, grid_table, parse_seeds, parse_set, parse_vary, read_prompts, write_grid
    from .manifest import validate

    prompts, images = read_prompts(args.prompts) if args.prompts else ([], [])
    cli_prompts = list(args.prompt or [])
    cli_images = list(args.image or [])
    if cli_images and len(cli_images) != len(cli_prompts):
        raise GridError(f"{len(cli_images)} --image for {len(cli_prompts)} --prompt: give one --image per --prompt, in order")
    prompts += cli_prompts
    images += cli_images or [None] * len(cli_prompts)
    vary = parse_vary(args.vary or [])
    grid = build_grid(prompts, parse_seeds(args.seeds), vary, parse_set(args.set or [], vary),
                      images if any(i is not None for i in images) else None)
    table = grid_table(grid, args.out)
    bad = [r for r in validate(table, load_config(args.overrides), args.out) if not r.ok]
    if bad:
        shown = "; ".join(f"{r.id}: {r.error}" for r in bad[:3])
        raise GridError(f"{len(bad)} of {table.num_rows} grid rows would fail validation ({shown}); nothing written")
    write_grid(table, args.out)
    _print(f"{grid.describe()} -> {args.out}")
    return 0


def cmd_sheet(args) -> int:
    from .report import write_report
    from .sheets import write_sheets

    if args.overrides:
        raise ValueError(f"sheet {NO_OVERRIDES}")
    sheets = write_sheets(args.out, frames_per_cell=args.frames, video=not args.no_video)
    if not sheets:
        _print(f"{args.out}: not a grid (no grid_* columns in the index): no contact sheets")
    for s in sheets:
        rows, cols = s.layout.rows, s.layout.cols
        _print(f"{args.out}/{s.png}  ({rows} seeds x {cols} variants)" + (f"   {args.out}/{s.mp4}  ({s.video_frames} frames)" if s.mp4 else ""))
    _print(f"{args.out}/{write_report(args.out)}")
    return 0


def cmd_report(args) -> int:
    from .report import write_nightly_report, write_report

    if args.overrides:
        raise ValueError(f"report {NO_OVERRIDES}")
    _print(f"{args.out}/{write_report(args.out)}")
    _print(f"{args.out}/{write_nightly_report(args.out)}")
    return 0


def cmd_verify(args) -> int:
    from .verify import format_checks, verify

    result = verify(args.out, sample=args.sample, seed=args.seed, force=args.force, overrides=args.overrides, log=_print)
    for line in format_checks(result, show_all=len(result.checks) <= 200):
        _print(line)
    _print(result.final_line())
    return result.exit_code


def add_tool_commands(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("grid", help="write an A/B manifest: prompts x seeds x parameter variants",
                       description="Cross prompts, seeds and parameter variants into a manifest with grid coordinates. "
                                   "Example: turbo-batch grid prompts.txt --seeds 0-3 --vary sla_topk=0.1,0.15 "
                                   "--vary ode=true,false --set model=wan2.1-t2v-1.3b --out grid.parquet")
    g.add_argument("prompts", nargs="?", help="prompts file: .txt (one per line), .csv or .parquet (`prompt`, optional `image`)")
    g.add_argument("--prompt", action="append", help="a prompt (repeatable; added after the file's)")
    g.add_argument("--image", action="append", help="input image for the --prompt at the same position (repeatable)")
    g.add_argument("--seeds", required=True, help="seeds: 0,7,42 or inclusive ranges 0-99, mixable: 0-3,10")
    g.add_argument("--vary", action="append", metavar="KEY=V1,V2", help="a varied parameter; several are crossed")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="a parameter fixed for every row")
    g.add_argument("--out", required=True, help="the manifest to write (.parquet; local path or URI)")
    g.set_defaults(func=cmd_grid)

    s = sub.add_parser("sheet", help="contact sheets (PNG + tiled MP4 per prompt) of a rendered grid, and report.html")
    s.add_argument("out", metavar="OUT_DIR")
    s.add_argument("--frames", type=int, default=3, help="frames per cell in the PNG (first ... last)")
    s.add_argument("--no-video", action="store_true", help="skip the tiled MP4s")
    s.set_defaults(func=cmd_sheet)

    r = sub.add_parser("report", help="write OUT/report.html and OUT/nightly_report.json")
    r.add_argument("out", metavar="OUT_DIR")
    r.set_defaults(func=cmd_report)

    v = sub.add_parser("verify", help="check every MP4 against its hash and re-render a sample to compare frames")
    v.add_argument("out", metavar="OUT_DIR")
    v.add_argument("--sample", type=int, default=4, help="rows to re-render (default 4; 0 checks MP4s only)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    v.add_argument("--force", action="store_true", help="compare even when this machine's runtime or weights differ")
    v.set_defaults(func=cmd_verify)
