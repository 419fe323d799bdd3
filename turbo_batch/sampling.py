"""Samplers: rCM few-step (TurboDiffusion) and the original flow-matching Euler with CFG, plus the seed contract.

THE SEED CONTRACT (stable; documented in the README): a row's noise depends only on its seed and its latent
shape. One CPU `torch.Generator` is seeded with the row's seed, and float32 standard normals of the latent shape
[16, T, H/8, W/8] are drawn from it in order: first the initial noise, then, for SDE sampling, one fresh tensor
for every step but the last. Noise is drawn on the CPU and only then moved to the compute device, so it is the
same on any device, in any batch, in any order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

#: Intermediate TrigFlow angles of the rCM schedule (REFERENCE §5).
RCM_MID_ANGLES = (1.5, 1.4, 1.0)

# velocity(x_bf16_or_f32, timestep[B] float32, step_index) -> v (float32); the pipeline binds model+context.
Velocity = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class NoiseStream:
    """The per-row noise generator of the seed contract."""

    def __init__(self, seed: int, shape: tuple[int, ...]):
        self.shape = tuple(shape)
        self._gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def next(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=self._gen, dtype=torch.float32)


def batched_noise(streams: list[NoiseStream], device) -> torch.Tensor:
    """The next draw of every row's stream, stacked [B, ...] on `device`."""
    return torch.stack([s.next() for s in streams]).to(device)


def rcm_rf_times(steps: int, sigma_max: float) -> list[float]:
    """RF times s_0 > s_1 > ... > s_steps = 0 of the rCM schedule: t = [atan(sigma_max), mids..., 0], s = sin/(cos+sin)."""
    if not 1 <= steps <= 4:
        raise ValueError(f"steps={steps} is invalid: rCM few-step sampling takes 1 to 4 steps")
    angles = [math.atan(sigma_max), *RCM_MID_ANGLES[: steps - 1], 0.0]
    return [math.sin(t) / (math.cos(t) + math.sin(t)) for t in angles]


def bf16_timestep(s: float, batch: int, device) -> torch.Tensor:
    """The network's timestep 1000*s rounded to bf16, as the rCM checkpoints saw it, as float32 [B]."""
    t = torch.tensor(s * 1000.0, dtype=torch.float64).to(torch.bfloat16).to(torch.float32)
    return t.expand(batch).to(device)


@dataclass
class StepInfo:
    index: int
    s_cur: float
    s_next: float


def rcm_sample(velocity: Velocity, streams: list[NoiseStream], *, steps: int, sigma_max: float, ode: bool,
               device, net_dtype: torch.dtype, on_step: Callable[[StepInfo], None] | None = None) -> torch.Tensor:
    """rCM few-step sampling (REFERENCE §5). State kept in float64; network input in `net_dtype`.

    SDE: x <- (1 - s_next)(x - s_cur v) + s_next eps_new.  ODE: x <- x - (s_cur - s_next) v.
    Returns x0 in float32 [B, 16, T, h, w].
    """
    s = rcm_rf_times(steps, sigma_max)
    x = batched_noise(streams, device).to(torch.float64) * s[0]
    batch = x.shape[0]
    for i in range(steps):
        s_cur, s_next = s[i], s[i + 1]
        v = velocity(x.to(net_dtype), bf16_timestep(s_cur, batch, device), i).to(torch.float64)
        if s_next == 0.0:
            x = x - s_cur * v
        elif ode:
            x = x - (s_cur - s_next) * v
        else:
            eps = batched_noise(streams, device).to(torch.float64)
            x = (1.0 - s_next) * (x - s_cur * v) + s_next * eps
        if on_step is not None:
            on_step(StepInfo(i, s_cur, s_next))
    return x.to(torch.float32)


def flow_sigmas(steps: int, shift: float) -> list[float]:
    """Original Wan flow-matching schedule: sigmas linear 1 -> 0, shifted by sigma' = shift*s/(1+(shift-1)*s)."""
    base = [1.0 - i / steps for i in range(steps + 1)]
    return [shift * x / (1.0 + (shift - 1.0) * x) for x in base]


def flow_sample(velocity_cond: Velocity, velocity_uncond: Velocity | None, streams: list[NoiseStream], *, steps: int,
                shift: float, guidance: float, device, net_dtype: torch.dtype,
                on_step: Callable[[StepInfo], None] | None = None) -> torch.Tensor:
    """The original (undistilled) Wan recipe: Euler on the flow ODE with classifier-free guidance.

    Two network forwards per step when guidance != 1 (what rCM distils away).
    """
    sig = flow_sigmas(steps, shift)
    x = batched_noise(streams, device)
    batch = x.shape[0]
    for i in range(steps):
        t = torch.full((batch,), sig[i] * 1000.0, dtype=torch.float32, device=device)
        v = velocity_cond(x.to(net_dtype), t, i).float()
        if velocity_uncond is not None and guidance != 1.0:
            vu = velocity_uncond(x.to(net_dtype), t, i).float()
            v = vu + guidance * (v - vu)
        x = x + (sig[i + 1] - sig[i]) * v
        if on_step is not None:
            on_step(StepInfo(i, sig[i], sig[i + 1]))
    return x


def iter_expert_names(rf_times: list[float], boundary: float, experts: tuple[str, ...]) -> Iterator[str]:
    """Which expert runs each step: high-noise until the first step with s < boundary, then low-noise."""
    if len(experts) == 1:
        for _ in rf_times[:-1]:
            yield experts[0]
        return
    high, low = experts
    switched = False
    for s_cur in rf_times[:-1]:
        switched = switched or s_cur < boundary
        yield low if switched else high
