"""Specification of CUDA-graph replay of the DiT forward: the eager forward's bits, one graph per signature."""
from __future__ import annotations

import pytest
import torch

from turbo_batch.config import load_config, resolve_runtime
from turbo_batch.models.cuda_graph import GraphedForward
from turbo_batch.models.dit import DiTConfig
from turbo_batch.models.dit_checkpoints import random_dit
from turbo_batch.models.quantize import DEFAULT_KEEP_BF16, quantize_linears_

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_graphs_default_to_on_for_cuda_and_off_for_cpu():
    cfg = load_config(["runtime.device=cpu"])
    assert resolve_runtime(cfg)["cuda_graph"] is False
    with pytest.raises(Exception, match="cuda_graph"):
        resolve_runtime(load_config(["runtime.device=cpu", "runtime.cuda_graph=sometimes"]))


def small_fp8_sla_dit():
    """Two blocks at the real head dim (128), so the fused path runs the production SLA and FP8 kernels."""
    model = random_dit(DiTConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=2), 0, device="cuda",
                       dtype=torch.bfloat16, on_device=True).eval().requires_grad_(False)
    quantize_linears_(model, keep=DEFAULT_KEEP_BF16)
    model.set_attention("sla", 0.2)
    return model


def latents(seed, frames=5):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(1, 16, frames, 32, 48, generator=g, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(1, 512, 4096, generator=g, device="cuda", dtype=torch.bfloat16)
    return x, torch.tensor([900.0], device="cuda"), ctx


@pytest.mark.gpu
@gpu
def test_gpu_a_graph_replay_returns_the_eager_forwards_bits_for_every_new_input():
    model, graphs = small_fp8_sla_dit(), GraphedForward()
    with torch.no_grad():
        for seed in (1, 2, 3):
            x, t, ctx = latents(seed)
            assert torch.equal(graphs(model, x, t, ctx, tag="sla"), model(x, t, ctx)), seed
    assert len(graphs) == 1  # the same signature replays the one graph


@pytest.mark.gpu
@gpu
def test_gpu_a_new_shape_or_tag_captures_its_own_graph_and_earlier_outputs_stay_intact():
    model, graphs = small_fp8_sla_dit(), GraphedForward()
    with torch.no_grad():
        short, long = latents(1, frames=5), latents(2, frames=9)
        first = graphs(model, *short, tag="a")
        kept = first.clone()
        assert torch.equal(graphs(model, *long, tag="a"), model(*long))
        assert torch.equal(graphs(model, *short, tag="b"), model(*short))
    assert len(graphs) == 3
    assert torch.equal(first, kept)


@pytest.mark.gpu
@gpu
def test_gpu_a_render_through_cuda_graphs_has_the_frame_hash_of_an_eager_render():
    from turbo_batch.params import resolve_params
    from turbo_batch.pipeline import Pipeline, RenderJob

    hashes = {}
    for graph in (False, True):
        cfg = load_config([f"runtime.cuda_graph={str(graph).lower()}"])
        pipe = Pipeline("tiny-t2v", cfg)
        assert (pipe._graphs is not None) == graph
        job = RenderJob("a red mug", resolve_params({"model": "tiny-t2v", "seed": 3}, cfg, has_image=False))
        hashes[graph] = [pipe.render(job).frames_sha256 for _ in range(2)]  # capture, then replay
    assert hashes[False][0] == hashes[False][1] == hashes[True][0] == hashes[True][1]
