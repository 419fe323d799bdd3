"""What one GPU actor does: keep a pipeline warm, render rows, encode MP4s off the GPU path, write results.

A plain class so it can be tested without Ray; `driver.py` wraps it with `ray.remote(num_gpus=...)`. The actor
runs several calls concurrently: a lock serialises GPU rendering while the other calls' MP4s encode in a pool of
encoder processes (libx264 pinned to one thread each, for reproducible bytes) and upload, so the encoder never
sits on the GPU's critical path. (An 81-frame 832x480 clip can take seconds to encode single-threaded, longer
than its ~1-3 s of GPU time.) A row's MP4 is durable before its record is written:
the record is the "done" marker.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import platform
import socket
import threading
import time
import traceback

import numpy as np
from omegaconf import OmegaConf

from . import NUMERICS_VERSION
from .manifest import decode_image
from .params import RenderParams
from .store import Store
from .video import encode_mp4_bytes, sha256_bytes


def runtime_id(runtime: dict) -> str:
    """The numerics that change bits: device kind, dtype, attention backend, quantization (and, for fp8, the
    layers kept in bf16), and the code's `NUMERICS_VERSION`."""
    quant = runtime["quant"]
    if quant == "fp8":
        quant += "[keep:" + ",".join(sorted(runtime.get("fp8_keep_bf16", ()))) + "]"
    return f"{runtime['device'].split(':')[0]}|{runtime['dtype']}|{runtime['attention']}|{quant}|numerics-{NUMERICS_VERSION}"


def describe_runtime(cfg_yaml: str) -> dict:
    """Resolve `auto` runtime settings on the hardware an actor gets (run as a Ray task with actor resources)."""
    import torch

    from .config import resolve_runtime

    runtime = resolve_runtime(OmegaConf.create(cfg_yaml))
    runtime["gpu_name"] = torch.cuda.get_device_name() if runtime["device"].startswith("cuda") else platform.processor() or "cpu"
    runtime["torch"] = torch.__version__
    return runtime


class RenderWorker:
    def __init__(self, cfg_yaml: str, out_uri: str, runtime: dict, name: str = "worker", writer_tag: str = "w"):
        import torch

        self.cfg = OmegaConf.create(cfg_yaml)
        self.runtime = dict(runtime)
        self.store = Store(out_uri, writer_tag=writer_tag)  # the run's tag: the driver sweeps its killed writes' temps
        self.name = name
        self.pipeline = None
        self.gpu_lock = threading.Lock()
        self._encoders: concurrent.futures.ProcessPoolExecutor | None = None
        if self.runtime["device"] == "cpu":
            torch.set_num_threads(max(1, int(self.cfg.render.cpus_per_actor)))
        self.identity = self._identity()

    def _identity(self) -> dict:
        node, gpus = socket.gethostname(), []
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()[:12]
                gpus = [str(g) for g in ray.get_gpu_ids()]
        except Exception:
            pass
        return {"actor": self.name, "node": node, "host": socket.gethostname(), "gpu": ",".join(gpus) or "-",
                "gpu_name": self.runtime.get("gpu_name", "cpu"), "pid": os.getpid()}

    def ping(self) -> dict:
        return self.identity

    def _get_pipeline(self, model: str):
        from .pipeline import Pipeline

        if self.pipeline is None or self.pipeline.preset.name != model:
            self.pipeline = None  # free the old model before loading the next
            self.pipeline = Pipeline(model, self.cfg, runtime=self.runtime)
        return self.pipeline

    def render_row(self, task: dict) -> dict:
        """Render one row and write its MP4 and record; never raises for a bad row (returns a failed record)."""
        from .pipeline import RenderJob, frames_sha256

        params = RenderParams(**task["params"])
        record = {
            "key": task["key"], "status": "failed", "error": None, "attempt": task.get("attempt", 1),
            "model": params.model, "seed": params.seed, "width": params.width, "height": params.height,
            "frames": params.num_frames, "fps": int(self.cfg.render.fps), "mp4_path": None, "mp4_sha256": None,
            "frames_sha256": None, "runtime": runtime_id(self.runtime), "torch": self.runtime.get("torch"),
            **self.identity,
        }
        t0 = time.perf_counter()
        try:
            image = decode_image(task["image_bytes"]) if task.get("image_bytes") is not None else None
            with self.gpu_lock:
                t_lock = time.perf_counter()
                pipe = self._get_pipeline(params.model)
                out = pipe.render(RenderJob(prompt=task["prompt"], params=params, image=image))
                gpu_s = time.perf_counter() - t_lock
            t_enc = time.perf_counter()
            rel = Store.video_relpath(task["key"])
            data = self._encode(out.frames)
            self.store.write_bytes(rel, data)
            record.update(status="ok", frames_sha256=frames_sha256(out.frames), mp4_path=rel, mp4_sha256=sha256_bytes(data),
                          timings={**out.timings, "gpu_s": gpu_s, "encode_write_s": time.perf_counter() - t_enc,
                                   "row_s": time.perf_counter() - t0})
        except Exception as e:  # a bad row is recorded, never fatal to the actor
            record["error"] = _explain(e)
            record["traceback"] = traceback.format_exc(limit=8)
            record["timings"] = {"row_s": time.perf_counter() - t0}
            _free_cuda_memory()
        record["finished_at"] = time.time()
        self.store.write_record(record)
        return record

    def _encode(self, frames: np.ndarray) -> bytes:
        args = (frames, int(self.cfg.render.fps), int(self.cfg.render.crf), int(self.cfg.render.encoder_threads))
        workers = int(self.cfg.render.encode_workers)
        if workers <= 0:
            return encode_mp4_bytes(*args)
        if self._encoders is None:  # forkserver, not fork: the parent holds CUDA state
            self._encoders = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
        return self._encoders.submit(encode_mp4_bytes, *args).result()

    def close(self) -> None:
        """Stop the encoder processes (they finish what they hold) before the actor goes: killed with them still
        starting, they print multiprocessing tracebacks into the job's log (the rows are unaffected)."""
        if self._encoders is not None:
            self._encoders.shutdown(wait=True, cancel_futures=True)
            self._encoders = None


def _explain(e: Exception) -> str:
    name = type(e).__name__
    if "OutOfMemory" in name:
        return (f"render: GPU out of memory ({e}); lower num_frames/resolution, set runtime.quant=fp8 or "
                "runtime.offload_text_encoder=true, or give actors more GPUs (render.gpus_per_actor)")
    if name == "ParamError":
        return e.row_error()
    return f"render: {name}: {e}"


def _free_cuda_memory():
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
