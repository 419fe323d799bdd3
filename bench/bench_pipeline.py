"""End-to-end T2V benchmark: per-stage times of one video, and the original 50-step CFG recipe's per-step cost.

Real-size presets with deterministic random weights (speed does not depend on weight values). Renders the same
row twice and checks the frame hashes agree. Baseline in the same run: the undistilled Wan recipe (flow matching,
CFG: two bf16 dense-attention DiT forwards per step), timed over a few steps and reported per step and as the
projection to 50 steps.

    python bench/bench_pipeline.py --model wan2.1-t2v-1.3b --attention sla --quant fp8
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from turbo_batch.config import cuda_process_env, load_config  # noqa: E402

os.environ.update(cuda_process_env(load_config()))  # the allocator setting the renderer's actors run with

import torch  # noqa: E402

from turbo_batch.models.dit_checkpoints import random_dit  # noqa: E402
from turbo_batch.models.dit import DiTConfig  # noqa: E402
from turbo_batch.models.loader import ModelBundle  # noqa: E402
from turbo_batch.params import resolve_params  # noqa: E402
from turbo_batch.pipeline import Pipeline, RenderJob  # noqa: E402

PROMPT = "A red ceramic coffee mug rotating slowly on a white studio table, soft light, product shot"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="wan2.1-t2v-1.3b")
    ap.add_argument("--attention", default="sla", choices=["dense", "sla", "sla_ref"])
    ap.add_argument("--quant", default="fp8", choices=["none", "fp8"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--resolution", default="480p")
    ap.add_argument("--base-steps", type=int, default=3, help="steps of the original recipe to time (projected to 50)")
    ap.add_argument("--cuda-graph", default="auto", choices=["auto", "true", "false"], help="runtime.cuda_graph")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-base", action="store_true", help="skip the original-recipe baseline")
    args = ap.parse_args()

    cfg = load_config([f"runtime.attention={args.attention}", f"runtime.quant={args.quant}", "runtime.random_weights=0",
                       f"runtime.cuda_graph={args.cuda_graph}"])
    t0 = time.perf_counter()
    pipe = Pipeline(args.model, cfg)
    load_s = time.perf_counter() - t0
    row = {"model": args.model, "seed": 42, "steps": args.steps, "num_frames": args.frames, "resolution": args.resolution}
    image = None
    if pipe.preset.task == "i2v":
        from turbo_batch.demo import demo_image

        image = demo_image(1280, 720)
    job = RenderJob(PROMPT, resolve_params(row, cfg, has_image=image is not None, image_size=(1280, 720)), image)

    cuda = torch.cuda.is_available()
    pipe.render(job)  # warm-up: kernel compilation, cuDNN plans, allocator
    runs = []
    for _ in range(2):
        pipe._prompt_cache.clear()  # time the text encoder too
        if cuda:
            if not runs:  # drop the warm-up's cached blocks: "reserved" is then what one render itself holds
                torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        out = pipe.render(job)
        runs.append((out.timings, out.frames_sha256, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0))
    (t1, h1, mem1), (t2, h2, _) = runs

    if args.no_base:
        t2 = runs[1][0]
        print(f"\n=== {args.model} {args.resolution} {args.frames}f, {args.steps} steps, attention={args.attention}, quant={args.quant} ===")
        print(f"text {t2['text_s']:.3f}s  image encode {t2.get('image_encode_s', 0):.3f}s  DiT steps "
              f"{[round(x, 3) for x in t2['dit_step_s']]}  VAE decode {t2['vae_decode_s']:.3f}s  total {t2['total_s']:.3f}s")
        print(f"peak allocated {mem1:.1f} GiB, reserved {torch.cuda.max_memory_reserved() / 2**30 if cuda else 0:.1f} GiB; "
              f"weights resident: {torch.cuda.memory_allocated() / 2**30 if cuda else 0:.1f} GiB; experts resident: "
              f"{pipe._resident}; hashes equal: {h1 == h2} (frames_sha256 {h1[:16]})")
        return
    # the original recipe: flow matching + CFG, bf16 dense attention, no quantization, same text encoder and VAE
    base_cfg = load_config(["runtime.attention=dense", "runtime.quant=none", "runtime.random_weights=0"])
    base_dit = random_dit(DiTConfig.from_dict(dict(pipe.preset.dit)), 1, device=pipe.device, dtype=pipe.dtype, on_device=cuda)
    base_dit.eval().requires_grad_(False)
    bundle = ModelBundle(text_encoder=pipe.models.text_encoder, experts={"main": base_dit}, vae=pipe.models.vae, weights_id="bench")
    base = Pipeline("wan2.1-t2v-1.3b-base", base_cfg, bundle=bundle)
    base_job = RenderJob(PROMPT, resolve_params({**row, "model": "wan2.1-t2v-1.3b-base", "steps": args.base_steps}, base_cfg))
    base.render(base_job)
    base_out = base.render(base_job)
    base_step = statistics.median(base_out.timings["dit_step_s"])

    steps = t2["dit_step_s"]
    res = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "model": args.model, "attention": args.attention, "quant": args.quant,
        "frames": args.frames, "resolution": args.resolution, "steps": args.steps, "load_s": load_s,
        "text_encoder_s": t2["text_s"], "dit_steps_s": steps, "dit_total_s": t2["dit_s"], "vae_decode_s": t2["vae_decode_s"],
        "end_to_end_s": t2["total_s"], "hash_run1": h1, "hash_run2": h2, "hashes_equal": h1 == h2,
        "peak_gib": mem1, "base_recipe_step_s": base_step, "base_recipe_50_steps_s": 50 * base_step,
        "base_recipe_dit_speedup": 50 * base_step / t2["dit_s"],
    }
    print()
    print(f"=== {args.model} {args.resolution} {args.frames}f, {args.steps} rCM steps, attention={args.attention}, "
          f"quant={args.quant}, {res['device']} ===")
    print(f"{'stage':<34}{'seconds':>10}")
    print(f"{'umT5 encode (512 tokens)':<34}{t2['text_s']:>10.3f}")
    for i, s in enumerate(steps):
        print(f"{'DiT step ' + str(i + 1):<34}{s:>10.3f}")
    print(f"{'VAE decode':<34}{t2['vae_decode_s']:>10.3f}")
    print(f"{'end to end (one video)':<34}{t2['total_s']:>10.3f}")
    print(f"{'original recipe: one step (CFG, 2 fwd)':<34}{base_step:>10.3f}")
    print(f"{'original recipe: 50 steps (projected)':<34}{50 * base_step:>10.3f}")
    print(f"DiT sampling speedup vs original 50-step CFG: {res['base_recipe_dit_speedup']:.1f}x")
    print(f"frame hash run 1 {h1[:16]}  run 2 {h2[:16]}  equal: {h1 == h2}   peak {mem1:.1f} GiB   load {load_s:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
