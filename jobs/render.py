"""Entrypoint for `ray job submit --working-dir . -- python jobs/render.py MANIFEST --out DIR [key=value ...]`.

Under `ray job submit` Ray sets RAY_ADDRESS, so the driver attaches to the cluster; run directly, it starts a
local Ray. `--demo` writes the built-in example manifest (tiny T2V and I2V rows) into DIR and renders it: the
out-of-the-box run on any machine, CPU included.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from turbo_batch.cli import main  # noqa: E402
from turbo_batch.demo import write_demo_manifest  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("manifest", nargs="?", help="Parquet manifest (local path or URI)")
    p.add_argument("--out", required=True)
    p.add_argument("--demo", action="store_true", help="render the built-in example manifest")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (config overrides are key=value, e.g. sampling.steps=2)")
    args.overrides = extra
    return args


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    manifest = args.manifest
    if args.demo:
        manifest = write_demo_manifest(os.path.join(args.out, "demo_manifest.parquet"), rows=4, i2v=True)
    elif manifest is None:
        sys.exit("give a MANIFEST, or --demo for the built-in example")
    code = main(["render", manifest, "--out", args.out, *args.overrides])
    if args.demo and code in (0, 1):  # show the newcomer the picture, not only the table
        main(["report", args.out])
        print(f"open {os.path.join(args.out, 'report.html')} in a browser to see the videos", file=sys.stderr)
    sys.exit(code)
