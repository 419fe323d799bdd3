"""Shared test machinery: Triton kernels under the CPU interpreter, and rendering a manifest on a local Ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_interpreted(script: str, *, timeout: int = 600, extra_env: dict | None = None) -> dict:
    """Run `script` in a fresh Python with TRITON_INTERPRET=1 (it must be set before triton is imported) and
    return the JSON it prints on a line starting with RESULT."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])  # scripts may import from their test module
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path, **(extra_env or {})}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[0][len("RESULT"):])


def wan_480p_inputs(prompt_tokens: int = 512):
    """(latents, timestep, text context) on CUDA for a Wan DiT at 480p, 81 frames (32760 tokens), seed 0."""
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, 16, 21, 60, 104, generator=g, device="cuda").bfloat16()
    t = torch.tensor([900.0], device="cuda")
    return x, t, torch.randn(1, prompt_tokens, 4096, generator=g, device="cuda").bfloat16()


def render_on_local_ray(manifest: str, out: str, overrides=("runtime.attention=dense",)):
    """Render `manifest` into `out` with the real driver on a private local Ray (one logical GPU), then shut down."""
    import ray

    from turbo_batch.config import load_config
    from turbo_batch.driver import render

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        return render(manifest, out, load_config(list(overrides)), live=False)
    finally:
        ray.shutdown()
