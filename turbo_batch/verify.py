"""`turbo-batch verify`: are the videos in OUT intact, and does this machine reproduce their frames?

Two checks, because they answer different questions:
  * integrity: every ok row's MP4 exists and its bytes hash to the index's `mp4_sha256` (catches truncated
    uploads, bit rot, tampering);
  * reproducibility: a random sample of rows is rendered again in this process (plain `Pipeline`, no Ray) with
    the run's own config (OUT/config.yaml) and compared by `frames_sha256`, the identity of a render.
A re-render only means something on the same numerics, so rows rendered with another runtime (device kind,
dtype, attention backend, quantization) or other weights are reported as "cannot verify here" unless --force.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import random
from dataclasses import dataclass, field

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .config import cuda_process_env, load_config, resolve_runtime
from .manifest import decode_image, read_image_bytes, read_manifest
from .params import RenderParams, preset_for, render_key
from .store import Store
from .worker import runtime_id

OK, MISMATCH, MISSING, CANNOT, ERROR = "ok", "MISMATCH", "MISSING", "cannot verify here", "ERROR"


@dataclass
class Check:
    row: int
    id: str
    what: str  # "mp4" (bytes vs mp4_sha256) or "frames" (re-render vs frames_sha256)
    result: str  # OK | MISMATCH | MISSING | CANNOT | ERROR
    expected: str | None = None
    actual: str | None = None
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.result in (MISMATCH, MISSING, ERROR)


@dataclass
class VerifyResult:
    checks: list[Check] = field(default_factory=list)
    runtime: str = ""

    @property
    def exit_code(self) -> int:
        return 1 if any(c.failed for c in self.checks) else 0

    def of(self, what: str) -> list[Check]:
        return [c for c in self.checks if c.what == what]

    def final_line(self) -> str:
        mp4, frames = self.of("mp4"), self.of("frames")
        compared = [c for c in frames if c.result != CANNOT]
        line = (f"verify: {sum(c.result == OK for c in mp4)}/{len(mp4)} MP4s match mp4_sha256; "
                f"{sum(c.result == OK for c in compared)}/{len(compared)} re-rendered rows match frames_sha256")
        skipped = len(frames) - len(compared)
        if skipped:
            line += f" ({skipped} cannot be verified on this machine)"
        return line + (" -> FAILED" if self.exit_code else " -> OK")


# ----------------------------------------------------------------------------------------------- integrity
def check_mp4s(store: Store, rows: list[dict]) -> list[Check]:
    """Every ok row: its MP4 exists and hashes to mp4_sha256 (rows sharing a key share one file and one read)."""
    actual: dict[str, str | None] = {}
    checks = []
    for r in rows:
        path = r.get("mp4_path")
        if path and path not in actual:
            try:
                actual[path] = hashlib.sha256(store.read_bytes(path)).hexdigest()
            except (FileNotFoundError, OSError):
                actual[path] = None
        got = actual.get(path) if path else None
        if got is None:
            checks.append(Check(r["row"], r["id"], "mp4", MISSING, r.get("mp4_sha256"), None, f"{path or 'no mp4_path'} is missing"))
        else:
            checks.append(Check(r["row"], r["id"], "mp4", OK if got == r.get("mp4_sha256") else MISMATCH, r.get("mp4_sha256"), got))
    return checks


# ----------------------------------------------------------------------------------------------- reproducibility
def sample_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """n distinct render keys among `rows`, chosen by `random.Random(seed)`, returned in row order."""
    firsts: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["row"]):
        firsts.setdefault(r["key"], r)
    candidates = list(firsts.values())
    chosen = random.Random(seed).sample(candidates, min(max(0, n), len(candidates)))
    return sorted(chosen, key=lambda r: r["row"])


def load_run_config(store: Store, overrides=()) -> DictConfig:
    """The resolved config the driver wrote to OUT/config.yaml, with optional key=value overrides on top."""
    try:
        cfg = OmegaConf.create(store.read_bytes("config.yaml").decode())
    except (FileNotFoundError, OSError):
        raise FileNotFoundError(f"{store.uri}/config.yaml is missing: verify re-renders with the run's own config, "
                                "which the driver writes there (render again with this version to create it)") from None
    return load_config(list(overrides), base=cfg) if overrides else cfg


class _ImageSource:
    """Input images of I2V rows, found the way the driver found them: via the manifest named in summary.json."""

    def __init__(self, store: Store):
        try:
            self.manifest = json.loads(store.read_bytes("summary.json")).get("manifest")
        except (FileNotFoundError, OSError, ValueError):
            self.manifest = None
        self._table = None

    @property
    def base_dir(self) -> str | None:
        if not self.manifest:
            return None
        return posixpath.dirname(self.manifest) if "://" in self.manifest else os.path.dirname(os.path.abspath(self.manifest))

    def read(self, row: dict) -> bytes:
        ref = row["image"]
        if ref.startswith("<") and ref.endswith(" bytes>"):  # the bytes were embedded in the manifest itself
            if not self.manifest:
                raise FileNotFoundError("the image was embedded in the manifest, and summary.json names no manifest")
            if self._table is None:
                self._table = read_manifest(self.manifest)
            return bytes(self._table.column("image")[row["row"]].as_py())
        return read_image_bytes(ref, self.base_dir)


def _other_runtime(theirs: str | None, here: str) -> str:
    """Why a row made on other numerics cannot be re-rendered here, naming the version when that is the difference."""
    def split(runtime: str) -> tuple[str, str]:
        head, _, version = runtime.rpartition("|numerics-")
        return (head, version) if head else (runtime, "1")  # ids without a version predate NUMERICS_VERSION: 1
    (their_setup, their_version), (our_setup, our_version) = split(theirs or ""), split(here)
    if their_setup == our_setup and their_version != our_version:
        return (f"rendered by a turbo_batch computing numerics version {their_version}, this one computes version "
                f"{our_version}: render the rows again with this version to compare (--force to compare anyway)")
    return f"rendered with {theirs}, this machine runs {here} (--force to compare anyway)"


def check_renders(store: Store, rows: list[dict], cfg: DictConfig, *, force: bool = False, log=print) -> tuple[list[Check], str]:
    """Re-render `rows` in this process and compare frames_sha256; one Check per row."""
    os.environ.update(cuda_process_env(cfg))  # as the actors render (effective unless CUDA is already in use here)
    import torch

    from .models.loader import weights_id
    from .pipeline import Pipeline, RenderJob, frames_sha256

    runtime = resolve_runtime(cfg)
    here = runtime_id(runtime)
    images = _ImageSource(store)
    checks: dict[int, Check] = {}
    jobs: dict[str, list[tuple[dict, RenderJob]]] = {}
    for r in rows:
        expected = r.get("frames_sha256")
        params = RenderParams(**json.loads(r["params"]))
        if r.get("runtime") != here and not force:
            checks[r["row"]] = Check(r["row"], r["id"], "frames", CANNOT, expected, None, _other_runtime(r.get("runtime"), here))
            continue
        if not force and r.get("key"):
            key = render_key(params, r["prompt"], r.get("image_sha256"), weights_id(preset_for(params.model), cfg), here)
            if key != r["key"]:
                checks[r["row"]] = Check(r["row"], r["id"], "frames", CANNOT, expected, None,
                                         "the render key differs here (other weights or checkpoint files); --force to compare anyway")
                continue
        image = None
        if r.get("image") is not None:
            try:
                data = images.read(r)
            except Exception as e:
                checks[r["row"]] = Check(r["row"], r["id"], "frames", CANNOT, expected, None, f"input image unavailable: {e}")
                continue
            if r.get("image_sha256") and hashlib.sha256(data).hexdigest() != r["image_sha256"]:
                checks[r["row"]] = Check(r["row"], r["id"], "frames", CANNOT, expected, None,
                                         f"input image {r['image']!r} changed since the render (image_sha256 differs)")
                continue
            image = np.array(decode_image(data))  # a writable copy, as torch.from_numpy prefers
        jobs.setdefault(params.model, []).append((r, RenderJob(prompt=r["prompt"], params=params, image=image)))

    threads = torch.get_num_threads()
    if runtime["device"] == "cpu":  # as the CPU actors ran; also far faster than oversubscribing small renders
        torch.set_num_threads(max(1, int(cfg.render.cpus_per_actor)))
    try:
        for model, items in jobs.items():
            log(f"verify: loading {model} to re-render {len(items)} row(s) on {here}")
            try:
                pipe = Pipeline(model, cfg, runtime=runtime)
            except Exception as e:
                for r, _ in items:
                    checks[r["row"]] = Check(r["row"], r["id"], "frames", ERROR, r.get("frames_sha256"), None,
                                             f"cannot load {model}: {type(e).__name__}: {e}")
                continue
            for r, job in items:
                try:
                    got = frames_sha256(pipe.render(job).frames)
                except Exception as e:
                    checks[r["row"]] = Check(r["row"], r["id"], "frames", ERROR, r.get("frames_sha256"), None,
                                             f"render failed: {type(e).__name__}: {e}")
                    continue
                checks[r["row"]] = Check(r["row"], r["id"], "frames", OK if got == r.get("frames_sha256") else MISMATCH,
                                         r.get("frames_sha256"), got)
            del pipe
    finally:
        torch.set_num_threads(threads)
    return [checks[r["row"]] for r in rows], here


def verify(out_uri: str, *, sample: int = 4, seed: int = 0, force: bool = False, overrides=(), log=print) -> VerifyResult:
    """Integrity of every ok row's MP4, plus re-render of `sample` random ok rows (see the module docstring)."""
    store = Store(out_uri)
    rows = [r for r in store.read_index().to_pylist() if r.get("status") == "ok"]
    result = VerifyResult(checks=check_mp4s(store, rows))
    chosen = sample_rows(rows, sample, seed)
    if chosen:
        try:
            cfg = load_run_config(store, overrides)
        except FileNotFoundError as e:  # the integrity checks still stand
            result.checks += [Check(r["row"], r["id"], "frames", CANNOT, r.get("frames_sha256"), None, str(e)) for r in chosen]
            return result
        frames, result.runtime = check_renders(store, chosen, cfg, force=force, log=log)
        result.checks += frames
    return result


def format_checks(result: VerifyResult, show_all: bool) -> list[str]:
    """The table `turbo-batch verify` prints: every re-render, and every MP4 check (only problems if many)."""
    shown = [c for c in result.checks if show_all or c.what == "frames" or c.result != OK]
    lines = [f"{'row':>5}  {'id':<24} {'check':<7} {'result':<18} {'expected':<16}  {'actual':<16}  detail"]
    for c in shown:
        lines.append(f"{c.row:>5}  {c.id[:24]:<24} {c.what:<7} {c.result:<18} {(c.expected or '-')[:16]:<16}  "
                     f"{(c.actual or '-')[:16]:<16}  {c.detail}")
    hidden = len(result.checks) - len(shown)
    if hidden:
        lines.append(f"       ({hidden} more MP4 checks, all ok)")
    for c in result.checks:
        if c.result == MISMATCH:
            lines.append(f"row {c.row} ({c.id}) {c.what}: expected {c.expected}, got {c.actual}")
    return lines
