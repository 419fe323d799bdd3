"""The Ray driver: validate, skip what is done, hand rows to GPU-pinned actors, survive actor deaths, summarise.

Ray Core only: a pool of `RenderWorker` actors and a `ray.wait` loop handing out rows dynamically (1 +
encode_workers in flight per actor, so MP4 encodes overlap the GPU work of the next row, and a slow GPU never
holds the batch). Rows are grouped by model so actors do not reload. The driver knows nothing of tensors.
"""
from __future__ import annotations

import collections
import json
import os
import time
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
from omegaconf import DictConfig, OmegaConf

from .config import cuda_process_env
from .manifest import ManifestRow, passthrough_columns, read_image_bytes, read_manifest, validate
from .params import render_key
from .progress import ProgressReporter
from .store import Store
from .worker import RenderWorker, describe_runtime, runtime_id

EXIT_OK, EXIT_ROW_FAILURES, EXIT_INVALID = 0, 1, 2


@dataclass
class RunResult:
    summary: dict
    exit_code: int
    records: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- ray setup
def connect_ray(address: str | None = None, **local_kwargs):
    """Attach to the cluster in RAY_ADDRESS (set by `ray job submit`) or `address`; else start a fresh local one."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=True, **local_kwargs)
    return ray


def actor_resources(cfg: DictConfig) -> tuple[int, float, int]:
    """(actor count, GPUs per actor, CPUs per actor) for the connected cluster."""
    import ray

    cluster = ray.cluster_resources()
    gpus = int(cluster.get("GPU", 0))
    per = float(cfg.render.gpus_per_actor) if gpus else 0.0
    n = cfg.render.actors
    if n == "auto":
        n = max(1, int(gpus // per)) if per else 1
    return int(n), per, int(cfg.render.cpus_per_actor)


# ----------------------------------------------------------------------------------------------- the run
def render(manifest_uri: str, out_uri: str, cfg: DictConfig, *, address: str | None = None, live: bool | None = None) -> RunResult:
    """Render every row of the manifest into `out_uri`; see the module docstring. Returns summary and exit code."""
    import ray

    t_start = time.time()
    if "://" not in manifest_uri:
        manifest_uri = os.path.abspath(manifest_uri)  # recorded in summary.json: `verify` finds images from it
    table = read_manifest(manifest_uri)
    rows = validate(table, cfg, manifest_uri)
    connect_ray(address)
    n_actors, gpus_per_actor, cpus_per_actor = actor_resources(cfg)
    cfg_yaml = OmegaConf.to_yaml(cfg)
    runtime = ray.get(ray.remote(describe_runtime).options(num_gpus=gpus_per_actor, num_cpus=0).remote(cfg_yaml))
    rt_id = runtime_id(runtime)
    store = Store(out_uri, writer_tag=uuid.uuid4().hex[:8])  # this run's tag: the driver and its actors share it
    store.write_bytes("config.yaml", cfg_yaml.encode())  # what `verify` needs to re-render rows exactly

    from .models.loader import weights_id

    from .params import preset_for

    wid_cache: dict[str, str] = {}
    for r in rows:
        if r.ok:
            model = r.params.model
            if model not in wid_cache:
                wid_cache[model] = weights_id(preset_for(model), cfg)
            r.key = render_key(r.params, r.prompt, r.image_sha256, wid_cache[model], rt_id)

    records = store.all_records()
    done = store.done_keys(records)
    # rows with equal keys render once; the first row of a key carries the work
    todo: dict[str, ManifestRow] = {}
    for r in rows:
        if r.ok and r.key not in done and r.key not in todo:
            todo[r.key] = r
    skipped = sum(1 for r in rows if r.ok and r.key in done)
    invalid = [r for r in rows if not r.ok]

    progress = ProgressReporter(total=len(rows), live=live)
    progress.start(done=skipped, failed=len(invalid))
    rendered: list[dict] = []
    try:
        if todo:
            rendered = _dispatch(list(todo.values()), cfg, cfg_yaml, out_uri, runtime, n_actors, gpus_per_actor,
                                 cpus_per_actor, manifest_uri, progress, store, table, rows, records)
        swept = store.remove_orphaned_temps()  # every actor has stopped: a temp of this run's tag is a killed write's
        if swept:
            progress.log(f"removed {swept} temp file(s) left by writes that a killed actor never finished")
    finally:
        progress.stop()
        records = store.all_records()  # once per run: also picks up rows whose results never reached the driver
        index = build_index(table, rows, records, cfg)
        store.write_index(index, int(cfg.render.shard_rows))
    wall = time.time() - t_start
    summary = summarize(rows, records, rendered, skipped, wall, n_actors, gpus_per_actor, runtime, manifest_uri, out_uri)
    store.write_json("summary.json", summary)
    code = EXIT_OK if summary["failed"] == 0 else EXIT_ROW_FAILURES
    return RunResult(summary=summary, exit_code=code, records=records)


def _task(row: ManifestRow, base_dir: str, attempt: int) -> dict:
    image_bytes = None
    if row.image_ref is not None:
        image_bytes = row._image_bytes if row._image_bytes is not None else read_image_bytes(row.image_ref, base_dir)
    return {"key": row.key, "prompt": row.prompt, "params": row.params.as_dict(), "image_bytes": image_bytes,
            "attempt": attempt, "row": row.index, "id": row.id}


def actor_runtime_env(cfg: DictConfig) -> dict | None:
    """The actors' Ray runtime_env: their process environment (`config.cuda_process_env`), set before torch loads."""
    env = cuda_process_env(cfg)
    return {"env_vars": env} if env else None


def _dispatch(todo: list[ManifestRow], cfg, cfg_yaml, out_uri, runtime, n_actors, gpus_per_actor, cpus_per_actor,
              manifest_uri, progress: ProgressReporter, store: Store, table, rows, records: dict) -> list[dict]:
    """Render `todo` on the actor pool; `records` (key -> record) is updated with every result as it arrives."""
    import ray

    base_dir = os.path.dirname(os.path.abspath(manifest_uri)) if "://" not in manifest_uri else manifest_uri.rsplit("/", 1)[0]
    depth = 1 + max(1, int(cfg.render.encode_workers))  # one row on the GPU, the others encoding
    Actor = ray.remote(RenderWorker).options(num_gpus=gpus_per_actor, num_cpus=cpus_per_actor, max_concurrency=depth,
                                             max_restarts=0, runtime_env=actor_runtime_env(cfg))
    queues: dict[str, collections.deque] = collections.defaultdict(collections.deque)
    for r in todo:  # rows grouped by model, in manifest order within a model
        queues[r.params.model].append((r, 1))
    max_attempts = 1 + int(cfg.render.max_retries)
    actors: dict[int, object] = {}
    actor_model: dict[int, str | None] = {}
    inflight: dict[object, tuple[int, ManifestRow, int, object]] = {}  # ref -> (slot, row, attempt, actor)
    generation = collections.Counter()

    def spawn(slot: int):
        generation[slot] += 1
        actors[slot] = Actor.remote(cfg_yaml, out_uri, runtime, f"actor-{slot}.{generation[slot]}", store.writer_tag)
        actor_model[slot] = None

    def next_row(slot: int):
        model = actor_model[slot]
        if model is None or not queues.get(model):
            # switch to the model with the most rows left per actor already working on it
            busy = collections.Counter(m for m in actor_model.values() if m)
            candidates = [m for m, q in queues.items() if q]
            if not candidates:
                return None
            model = max(candidates, key=lambda m: (len(queues[m]) / (1 + busy[m]), -list(queues).index(m)))
            actor_model[slot] = model
        return queues[model].popleft()

    def fill(slot: int):
        while sum(1 for s, *_ in inflight.values() if s == slot) < depth:
            item = next_row(slot)
            if item is None:
                return
            row, attempt = item
            ref = actors[slot].render_row.remote(_task(row, base_dir, attempt))
            inflight[ref] = (slot, row, attempt, actors[slot])

    for slot in range(n_actors):
        spawn(slot)
        fill(slot)
    rendered = []
    last_index = time.time()
    while inflight:
        progress.update(inflight=len(inflight))
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=5.0)
        if not ready:
            continue
        ref = ready[0]
        slot, row, attempt, actor = inflight.pop(ref)
        progress.update(inflight=len(inflight))
        try:
            record = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            # the actor process died (killed, OOM-killed, node lost): replace it once, retry its rows
            if actors.get(slot) is actor:  # the first of its lost rows replaces it; later ones find the new actor
                ray.kill(actor, no_restart=True)
                spawn(slot)
            if attempt < max_attempts:
                queues[row.params.model].appendleft((row, attempt + 1))
                progress.log(f"row {row.index} ({row.id}): actor died ({type(e).__name__}); retry {attempt + 1}/{max_attempts}")
            else:
                record = _failed_record(row, f"actor: died {attempt} times while rendering this row ({type(e).__name__}); "
                                             "check the actor logs for OOM kills or crashes", attempt)
                store.write_record(record)
                rendered.append(record)
                records[record["key"]] = record
                progress.update(failed_inc=1)
            fill(slot)
            continue
        except ray.exceptions.RayTaskError as e:  # an unexpected bug in the worker: record it, keep going
            record = _failed_record(row, f"render: {e}", attempt)
            store.write_record(record)
        rendered.append(record)
        records[record["key"]] = record
        if record["status"] == "ok":
            progress.update(done_inc=1)
        else:
            progress.update(failed_inc=1)
            progress.log(f"row {row.index} ({row.id}) failed: {record['error']}")
        fill(slot)
        if time.time() - last_index > 30:  # keep the index fresh for long runs, from records already in memory
            store.write_index(build_index(table, rows, records, cfg), int(cfg.render.shard_rows))
            last_index = time.time()
    _close_actors(list(actors.values()))
    return rendered


def _close_actors(actors: list, timeout_s: float = 60.0) -> None:
    """Let each actor stop its encoder processes (`RenderWorker.close`), then kill it; a dead or stuck actor is
    killed all the same once the timeout passes."""
    import ray

    closing = [a.close.remote() for a in actors]
    ray.wait(closing, num_returns=len(closing), timeout=timeout_s)
    for actor in actors:
        ray.kill(actor, no_restart=True)


def _failed_record(row: ManifestRow, error: str, attempt: int) -> dict:
    return {"key": row.key, "status": "failed", "error": error, "attempt": attempt, "model": row.params.model,
            "seed": row.params.seed, "width": row.params.width, "height": row.params.height,
            "frames": row.params.num_frames, "finished_at": time.time()}


# ----------------------------------------------------------------------------------------------- index and summary
INDEX_FIELDS = [
    ("row", pa.int64()), ("id", pa.string()), ("key", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("prompt", pa.string()), ("image", pa.string()), ("image_sha256", pa.string()), ("model", pa.string()),
    ("seed", pa.int64()), ("width", pa.int64()), ("height", pa.int64()), ("frames", pa.int64()), ("fps", pa.int64()),
    ("frames_sha256", pa.string()), ("mp4_path", pa.string()), ("mp4_sha256", pa.string()), ("params", pa.string()),
    ("timings", pa.string()), ("total_s", pa.float64()), ("actor", pa.string()), ("node", pa.string()),
    ("gpu", pa.string()), ("gpu_name", pa.string()), ("runtime", pa.string()), ("attempt", pa.int64()),
    ("finished_at", pa.float64()),
]


def build_index(table: pa.Table, rows: list[ManifestRow], records: dict, cfg: DictConfig) -> pa.Table:
    """One record per manifest row: outcome, hashes, parameters, timings, who rendered it, passthrough columns."""
    cols: dict[str, list] = {name: [] for name, _ in INDEX_FIELDS}
    for r in rows:
        rec = records.get(r.key) if r.key else None
        if not r.ok:
            status, error = "failed", r.error
        elif rec is None:
            status, error = "pending", None
        else:
            status, error = rec.get("status"), rec.get("error")
        rec = rec or {}
        p = r.params.as_dict() if r.params else {}
        timings = rec.get("timings") or {}
        values = {
            "row": r.index, "id": r.id, "key": r.key, "status": status, "error": error,
            "prompt": None if r.prompt is None else str(r.prompt), "image": r.image_ref, "image_sha256": r.image_sha256,
            "model": p.get("model"), "seed": p.get("seed"), "width": p.get("width"), "height": p.get("height"),
            "frames": p.get("num_frames"), "fps": int(cfg.render.fps) if r.ok else None,
            "frames_sha256": rec.get("frames_sha256"), "mp4_path": rec.get("mp4_path"), "mp4_sha256": rec.get("mp4_sha256"),
            "params": json.dumps(p, sort_keys=True) if p else None, "timings": json.dumps(timings, sort_keys=True) if timings else None,
            "total_s": timings.get("total_s"), "actor": rec.get("actor"), "node": rec.get("node"), "gpu": rec.get("gpu"),
            "gpu_name": rec.get("gpu_name"), "runtime": rec.get("runtime"), "attempt": rec.get("attempt"),
            "finished_at": rec.get("finished_at"),
        }
        for name, _ in INDEX_FIELDS:
            cols[name].append(values[name])
    out = pa.table({name: pa.array(cols[name], type=t) for name, t in INDEX_FIELDS})
    for name in passthrough_columns(table):
        out = out.append_column(name if name not in out.column_names else f"passthrough_{name}", table.column(name).combine_chunks())
    return out


def summarize(rows, records, rendered, skipped, wall, n_actors, gpus_per_actor, runtime, manifest_uri, out_uri) -> dict:
    ok = sum(1 for r in rows if r.ok and records.get(r.key, {}).get("status") == "ok")
    failed_rows = []
    for r in rows:
        rec = records.get(r.key, {}) if r.key else {}
        if not r.ok or rec.get("status") != "ok":
            failed_rows.append({"row": r.index, "id": r.id, "error": r.error or rec.get("error") or "not rendered"})
    new_ok = [rec for rec in rendered if rec.get("status") == "ok"]
    gpu_seconds = sum((rec.get("timings") or {}).get("gpu_s", 0.0) for rec in new_ok) * max(gpus_per_actor, 1.0 if gpus_per_actor else 0.0)
    slowest = sorted(new_ok, key=lambda rec: -(rec.get("timings") or {}).get("total_s", 0.0))[:5]
    return {
        "manifest": manifest_uri, "out": out_uri, "rows": len(rows), "ok": ok, "failed": len(failed_rows),
        "invalid": sum(1 for r in rows if not r.ok), "rendered_this_run": len(new_ok), "skipped_already_done": skipped,
        "wall_s": round(wall, 3), "videos_per_minute": round(len(new_ok) / (wall / 60.0), 3) if new_ok and wall > 0 else 0.0,
        "gpu_seconds": round(gpu_seconds, 3), "gpu_hours": round(gpu_seconds / 3600.0, 5), "actors": n_actors,
        "gpus_per_actor": gpus_per_actor, "runtime": {k: v for k, v in runtime.items()},
        "failures": failed_rows[:100],
        "slowest": [{"key": rec["key"], "total_s": round(rec["timings"]["total_s"], 3), "actor": rec.get("actor")} for rec in slowest],
    }
