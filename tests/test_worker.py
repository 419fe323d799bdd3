"""The render actor's own lifecycle, without Ray: its MP4 encoder processes start on first use and stop on close."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

pytest.importorskip("av")

from turbo_batch.config import load_config, resolve_runtime  # noqa: E402
from turbo_batch.video import encode_mp4_bytes  # noqa: E402
from turbo_batch.worker import RenderWorker  # noqa: E402


def test_close_stops_the_encoder_processes_and_a_closed_worker_can_encode_again(tmp_path):
    cfg = load_config(["render.encode_workers=2", "runtime.device=cpu"])
    worker = RenderWorker(OmegaConf.to_yaml(cfg), str(tmp_path), resolve_runtime(cfg))
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 48, 3), dtype=np.uint8)
    mp4 = worker._encode(frames)
    assert mp4 == encode_mp4_bytes(frames, int(cfg.render.fps), int(cfg.render.crf), int(cfg.render.encoder_threads))
    processes = list(worker._encoders._processes.values())
    assert processes and all(p.is_alive() for p in processes)
    worker.close()
    assert worker._encoders is None and not any(p.is_alive() for p in processes)
    worker.close()  # closing twice is harmless
    assert worker._encoders is None and worker._encode(frames) == mp4
    worker.close()
