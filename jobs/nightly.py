"""Nightly entrypoint: render MANIFEST into a dated folder under ROOT, write the report, exit non-zero on failures.

    ray job submit --working-dir . -- python jobs/nightly.py MANIFEST --root s3://bucket/renders [key=value ...]

Output goes to ROOT/YYYY-MM-DD/ (UTC). Rerunning the same night resumes into the same folder. Exit code 1 if
any row failed (so the scheduler alerts), 2 if the manifest or invocation is invalid.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from turbo_batch.cli import main  # noqa: E402


def dated_out(root: str, date: str | None = None) -> str:
    date = date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    return f"{root.rstrip('/')}/{date}"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("manifest")
    p.add_argument("--root", required=True, help="folder or URI that holds one dated output folder per night")
    p.add_argument("--date", default=None, help="override the folder date (YYYY-MM-DD), e.g. to re-run a night")
    args, overrides = p.parse_known_args()
    bad = [a for a in overrides if "=" not in a or a.startswith("-")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (config overrides are key=value, e.g. sampling.steps=2)")
    args.overrides = overrides
    out = dated_out(args.root, args.date)
    code = main(["render", args.manifest, "--out", out, *args.overrides])
    if code in (0, 1):
        try:
            main(["report", out])
        except SystemExit:
            pass
    sys.exit(code)
