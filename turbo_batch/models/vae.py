"""The Wan2.1 causal 3D VAE: video [B,3,F,H,W] in [-1,1] <-> normalised latent [B,16,1+(F-1)//4,H/8,W/8].

Parameter names are exactly those of the official `Wan2.1_VAE.pth` (Wan-Video/Wan2.1 `wan/modules/vae.py`), so
the file loads strictly with no key mapping; `to_diffusers_state_dict` maps them onto diffusers'
`AutoencoderKLWan` for parity tests and benchmarks.

Like the official model, time is processed causally in chunks (encode: the first frame, then 4 frames at a
time; decode: one latent frame at a time), every temporal conv continuing from the trailing input frames it
cached on the previous chunk. Unlike the official model, that cache lives in the call (`CausalCache`), never on
the module, so concurrent or interrupted calls cannot leak state into each other; and every batch element is
run on its own, so a clip's pixels never depend on what it was batched with.

Speed (GPU): activations stay in channels-last layout (NDHWC) so cuDNN runs its native kernels without layout
transposes, the RMS norm + SiLU is one Triton pass (kernels/vae_elementwise.py) that writes straight into the
time-padded buffer the next conv reads (no cat, no pad copy; spatial padding is done inside the conv), a residual
block's conv biases ride in its norm and residual passes instead of broadcast adds of their own, the upsamplers
convolve the low-resolution frames (sub-pixel, below), cuDNN picks its conv kernels by its more thorough heuristic
(mode B, below), and nothing is upcast to fp32 except the norm's reduction.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from kernels.vae_elementwise import bias_residual_add_, rms_norm_silu, uses_kernels

from .checkpoints import load_strict, materialize_, random_init_, read_state_dict

# cuDNN's "mode B" heuristic for picking conv kernels (PyTorch reads this once, at the first cuDNN conv of the
# process). Its default ("instant") heuristic runs the full-resolution 96-channel convs on an sm80 256x32 tile
# (35% of a 480p decode on an H100); mode B picks sm90 128x128 kernels: decode 1146 -> 985 ms (bench/bench_vae.py,
# session 20). Still a heuristic, not a timing, so the kernel and the bits are a function of the shape and device:
# frames repeat across processes. A user's own setting wins.
os.environ.setdefault("TORCH_CUDNN_USE_HEURISTIC_MODE_B", "1")

# On the kernel path, a residual block's convs run without their biases and its norm and residual passes add them,
# rounding where PyTorch's separate bias add rounds (the same bits: tests/test_vae.py). False: plain convs with bias.
FOLD_CONV_BIAS = True

# Upsamplers run their nearest-2x + 3x3 conv as one 2x2 conv over the low-resolution frames (`subpixel_weight`):
# the same sums over the same pixels, 16/36 of the FLOPs and no 4x upsampled copy; what changes is one bf16 rounding
# of the summed weights. False: upsample, then conv, as the official code does (a benchmark switch: its frames are not
# those of `turbo_batch.NUMERICS_VERSION` 2 or later).
SUBPIXEL_UPSAMPLE = True

# Causal convs keep their time-padded input buffer from chunk to chunk and move its last frames to its head: one copy
# of two frames a conv and chunk instead of two (a copy into a fresh buffer, a clone out of it), for the buffers'
# memory held between chunks: 2 + t frames a conv instead of 2, counted on the real-size decoder 4.9 against 1.8 GiB
# at 480p and 11.3 against 4.1 GiB at 720p (the same bits either way: tests/test_vae.py). Measured in a 480p decode on
# an H100 (session 25, `bench/bench_vae.py --iters 2 --no-diffusers`): 803 against 820 ms, peak 6.00 against 3.71 GiB
# above the weights; at 720p 1682 against 1721 ms, 13.8 against 8.6 GiB. False: a fresh buffer every chunk, two
# frames cached (the switch for a tight memory budget).
REUSE_PADDED_BUFFERS = True

# Per-channel latent statistics of the Wan2.1 VAE (z_dim 16): z = (mu - mean) / std.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

@dataclass(frozen=True)
class VAEConfig:
    base_dim: int = 96
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    z_dim: int = 16
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "VAEConfig":
        """Build from a preset's `vae` section; unknown keys are ignored, lists become tuples."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig" else v)
              for k, v in d.items() if k in known}
        return cls(**kw)

    @property
    def latent_mean(self) -> tuple[float, ...]:
        return LATENT_MEAN if self.z_dim == 16 else (0.0,) * self.z_dim

    @property
    def latent_std(self) -> tuple[float, ...]:
        return LATENT_STD if self.z_dim == 16 else (1.0,) * self.z_dim


# --------------------------------------------------------------------------------------- causal cache
class CausalCache:
    """What one encode/decode call carries from chunk to chunk, local to that call.

    `frames[conv]` holds what a temporal conv needs of the previous chunk: its whole time-padded input buffer
    (`CausalConv3d`, whose trailing frames are the next chunk's padding) or the last input frame (the encoder's
    stride-2 time conv); zero frames stand in for the causal padding before the clip starts. `chunk` is the index of
    the chunk being processed, and `memory_format` the activation layout used throughout the call.
    """

    def __init__(self, memory_format: torch.memory_format = torch.contiguous_format):
        self.frames: dict[nn.Module, torch.Tensor] = {}
        self.chunk = 0
        self.memory_format = memory_format


def _empty_like_layout(shape, ref: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
    fmt = cache.memory_format if cache is not None else torch.contiguous_format
    return torch.empty(shape, dtype=ref.dtype, device=ref.device, memory_format=fmt)


# --------------------------------------------------------------------------------------- layers
class CausalConv3d(nn.Conv3d):
    """Conv3d padded in time on the past side only, continuing from the frames cached on the previous chunk.

    Spatial zero padding is done by the conv itself; the temporal padding (zeros, or cached frames) is built
    into one buffer that the preceding norm can write into directly.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.time_pad = 2 * self.padding[0]
        self.padding = (0, self.padding[1], self.padding[2])

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None, norm: "RMS_norm | None" = None,
                norm_bias: torch.Tensor | None = None, bias: bool = True) -> torch.Tensor:
        """norm(x + norm_bias) (if norm) -> this conv, with or without its own bias (`bias=False` leaves it to the
        caller's next elementwise pass: `ResidualBlock`)."""
        if self.time_pad == 0:
            if norm is not None:
                x = norm(x, silu=True, bias=norm_bias)
            return self._conv_forward(x, self.weight, self.bias if bias else None)
        return self.convolve(self.fill(x, cache, norm, norm_bias), bias)

    def fill(self, x: torch.Tensor, cache: CausalCache | None, norm: "RMS_norm | None" = None,
             norm_bias: torch.Tensor | None = None) -> torch.Tensor:
        """This chunk's time-padded input buffer: the previous chunk's last frames, then x (or norm(x + norm_bias)
        with SiLU, written by the norm pass straight into the buffer)."""
        buf = self.padded_buffer(x.shape, x, cache)
        if norm is None:
            buf[:, :, self.time_pad:].copy_(x)
        else:
            norm(x, silu=True, out=buf[:, :, self.time_pad:], bias=norm_bias)
        if cache is not None:  # what the next chunk needs: the buffer itself, or a copy of its last frames
            cache.frames[self] = buf if REUSE_PADDED_BUFFERS else buf[:, :, -self.time_pad:].clone()
        return buf

    def convolve(self, buf: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """This conv over a filled time-padded buffer (`padded_buffer`)."""
        return self._conv_forward(buf, self.weight, self.bias if bias else None)

    def padded_buffer(self, shape: torch.Size, like: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        """The [b, c, time_pad + t, h, w] input buffer of an input of `shape` (like's dtype and device) with its first
        time_pad frames filled: zeros before the clip starts, else the previous chunk's last input frames. `fill`
        fills the rest and caches it.

        Why: the previous chunk's buffer is reused in place when this chunk has its shape, its trailing frames moved
        to its head (one copy of two frames; a fresh buffer costs a copy into it and a clone out of the last one).
        The cache then holds each conv's whole buffer between chunks instead of two frames (`REUSE_PADDED_BUFFERS`).
        """
        b, c, t, h, w = shape
        pad = self.time_pad
        prev = cache.frames.get(self) if cache is not None else None
        shape = (b, c, pad + t, h, w)
        if REUSE_PADDED_BUFFERS and prev is not None and prev.shape == shape and prev.dtype == like.dtype \
                and t >= pad:
            prev[:, :, :pad].copy_(prev[:, :, t:])  # frames t..t+pad -> 0..pad: disjoint, since t >= pad
            return prev
        buf = _empty_like_layout(shape, like, cache)
        if prev is None:
            buf[:, :, :pad].zero_()
        else:
            buf[:, :, :pad].copy_(prev[:, :, -pad:])
        return buf


class RMS_norm(nn.Module):
    """x / ||x||_channels * sqrt(C) * gamma (the official RMS_norm; the VAE never uses its optional bias parameter).

    The norm is reduced and applied in fp32 without materialising an fp32 copy of x; the result (optionally
    followed by SiLU) is written in x's dtype into `out`, a slice of the next conv's padded buffer, by one
    Triton kernel on channels-last CUDA tensors (kernels/vae_elementwise.py; torch ops elsewhere).
    """

    def __init__(self, dim: int, channel_first: bool = True, images: bool = True, bias: bool = False):
        super().__init__()
        if not channel_first or bias:
            raise ValueError("the Wan VAE only uses channel-first RMS_norm without bias")
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor, silu: bool = False, out: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """The norm of x + bias (`bias`: a preceding conv's own bias, when that conv left it out)."""
        return rms_norm_silu(x, self.gamma, silu, out, bias)  # one fused pass on channels-last CUDA tensors


class Upsample(nn.Upsample):
    """Nearest-exact 2x upsampling. It only copies values, so it runs in the input dtype (no fp32 round trip)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode)


def _per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame: [b,c,t,h,w] -> [(b t),c,h,w] -> back (views in channels-last)."""
    b, c, t, h, w = x.shape
    y = module(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.unflatten(0, (b, t)).transpose(1, 2)


def subpixel_weight(w: torch.Tensor) -> torch.Tensor:
    """The 3x3 kernel of a conv (padding 1) that follows a nearest 2x upsample, as a 2x2 kernel over the
    low-resolution frames with 4x the output channels, [Cout, Cin, 3, 3] -> [4 Cout, Cin, 2, 2], summed in at least
    float32.

    Output pixel (2i+a, 2j+b) reads source rows (i-1+a, i+a) and columns (j-1+b, j+b); each tap is the sum of the
    3x3 taps that land on that source pixel. Output-channel group 2a+b is phase (a, b): see `Resample._upsample_conv`.
    """
    def fold(t: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        # phase 0 reads (i-1, i) with taps (w0, w1 + w2); phase 1 reads (i, i+1) with (w0 + w1, w2)
        w0, w1, w2 = t.unbind(dim)
        return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)

    w = w.to(torch.promote_types(w.dtype, torch.float32))
    return torch.cat([cols for rows in fold(w, 2) for cols in fold(rows, 3)])


def _layout_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() \
        else torch.contiguous_format


def derived_from(module: nn.Module, slot: str, weight: torch.Tensor, build):
    """build(weight), cached on `module` under `slot` and rebuilt whenever the weight changes (its storage, in-place
    version, dtype, device or layout): a derived form of a parameter, never saved with the model."""
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, _layout_of(weight))
    cached = module.__dict__.get(slot)
    if cached is None or cached[0] != key:
        cached = module.__dict__[slot] = (key, build(weight))
    return cached[1]


class Resample(nn.Module):
    """Spatial 2x up/down sampling, plus temporal 2x for the 3d modes (causal, chunk-aware)."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        spatial = self._upsample_conv if self.mode.startswith("upsample") and SUBPIXEL_UPSAMPLE else self.resample
        x = _per_frame(spatial, x)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _upsample_conv(self, x: torch.Tensor) -> torch.Tensor:
        """conv3x3(upsample2x(x)) of frames [N, C, H, W] from one 2x2 conv of x (padding 1: [N, 4 Cout, H+1, W+1],
        position (p, q) reading rows p-1, p and columns q-1, q), each phase then copied to its pixels of the output."""
        weight, bias = self._subpixel_params()
        n, _, h, w = x.shape
        y = F.conv2d(x, weight, bias, padding=1)
        cout = weight.shape[0] // 4
        out = torch.empty((n, cout, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=_layout_of(x))
        for a in (0, 1):
            for b in (0, 1):
                g = 2 * a + b
                out[:, :, a::2, b::2].copy_(y[:, g * cout:(g + 1) * cout, a:a + h, b:b + w])
        return out

    def _subpixel_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`subpixel_weight` of the conv in its dtype and layout (and its bias for the four phases), rebuilt whenever
        the conv's weight changes."""
        conv = self.resample[1]

        def build(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            weight = subpixel_weight(w).to(w.dtype).contiguous(memory_format=_layout_of(w))
            return weight, conv.bias.repeat(4) if conv.bias is not None else None

        return derived_from(self, "_subpixel", conv.weight, build)

    def _double_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Each frame becomes two: the time conv's two channel halves. The first chunk passes through
        undoubled (that is how 4(T-1)+1 frames come out) and the time conv starts at the second chunk."""
        if cache.chunk == 0:
            return x
        y = self.time_conv(x, cache)  # [b, 2c, t, h, w]
        b, c2, t, h, w = y.shape
        out = _empty_like_layout((b, c2 // 2, 2 * t, h, w), y, cache)
        out.unflatten(2, (t, 2)).copy_(y.unflatten(1, (2, c2 // 2)).permute(0, 2, 3, 1, 4, 5))
        return out

    def _halve_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Stride-2 causal time conv over [last frame of the previous chunk, this chunk]; the first chunk
        (one frame) passes through."""
        last = x[:, :, -1:].clone()
        if cache.chunk == 0:
            cache.frames[self] = last
            return x
        b, c, t, h, w = x.shape
        buf = _empty_like_layout((b, c, 1 + t, h, w), x, cache)
        buf[:, :, :1].copy_(cache.frames[self])
        buf[:, :, 1:].copy_(x)
        cache.frames[self] = last
        return self.time_conv(buf)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        # Index layout (0 norm, 2 conv, 3 norm, 6 conv) is the official checkpoint's.
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual  # SiLU fused into the norms; dropout is 0
        h = self.shortcut(x)
        if FOLD_CONV_BIAS and uses_kernels(x):  # the biases ride in the next passes: norm2 adds conv1's, the sum conv2's
            buf1 = conv1.fill(x, cache, norm1)
            buf2 = conv2.fill(conv1.convolve(buf1, bias=False), cache, norm2, norm_bias=conv1.bias)
            return bias_residual_add_(conv2.convolve(buf2, bias=False), conv2.bias, h)
        x = conv1(x, cache, norm=norm1)
        x = conv2(x, cache, norm=norm2)
        return x.add_(h)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no attention across time)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2)  # [(b t), h*w, 3c]
        # Contiguous rows: with the channel dim strided, SDPA falls back to its float32 math kernel (2.6x slower).
        q, k, v = (part.contiguous() for part in qkv.unsqueeze(1).chunk(3, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v)  # [(b t), 1, h*w, c]
        o = self.proj(o.squeeze(1).transpose(1, 2).unflatten(2, (h, w)))
        return o.unflatten(0, (b, t)).transpose(1, 2).add_(x)


def _head(out_dim: int, channels: int) -> nn.Sequential:
    return nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(), CausalConv3d(out_dim, channels, 3, padding=1))


class Encoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temperal_downsample, dropout=0.0):
        super().__init__()
        dims = [dim * u for u in [1, *dim_mult]]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if temperal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = nn.Sequential(ResidualBlock(out_dim, out_dim, dropout), AttentionBlock(out_dim),
                                    ResidualBlock(out_dim, out_dim, dropout))
        self.head = _head(out_dim, z_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        norm, _, conv = self.head
        return conv(x, cache, norm=norm)


class Decoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, temperal_upsample, dropout=0.0):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1], *dim_mult[::-1]]]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0], dropout))
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # every upsampler halves the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(out_dim, 3)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, cache)
        norm, _, conv = self.head
        return conv(x, cache, norm=norm)


# --------------------------------------------------------------------------------------- the VAE
class WanVAE(nn.Module):
    """encode: video [B,3,F,H,W] in [-1,1] -> normalised latent (float32); decode: the inverse (float32, clamped).

    Computes in the dtype of its parameters. `channels_last` picks the activation layout: NDHWC (True),
    NCDHW (False) or NDHWC on CUDA only (None, the default: cuDNN's native layout, NCDHW costs transposes).
    """

    def __init__(self, cfg: VAEConfig | None = None):
        super().__init__()
        cfg = cfg or VAEConfig()
        self.cfg = cfg
        self.z_dim = cfg.z_dim
        self.channels_last: bool | None = None
        self.encoder = Encoder3d(cfg.base_dim, cfg.z_dim * 2, cfg.dim_mult, cfg.num_res_blocks,
                                 cfg.temporal_downsample, cfg.dropout)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg.base_dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks,
                                 tuple(cfg.temporal_downsample)[::-1], cfg.dropout)

    # ---------------------------------------------------------------- helpers
    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(bool(t) for t in self.cfg.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.cfg.dim_mult) - 1)

    def _param(self) -> torch.Tensor:
        return self.conv2.weight

    def _new_cache(self) -> CausalCache:
        channels_last = self.channels_last
        if channels_last is None:
            channels_last = self._param().device.type == "cuda"
        self._layout_weights(channels_last)
        return CausalCache(torch.channels_last_3d if channels_last else torch.contiguous_format)

    @torch.no_grad()
    def _layout_weights(self, channels_last: bool) -> None:
        """Store conv weights in the activation layout once, so cuDNN does not re-layout them on every call
        (and so a channels-last weight does not pull NCDHW activations into channels-last kernels)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                fmt = torch.contiguous_format
                if channels_last:
                    fmt = torch.channels_last_3d if m.weight.ndim == 5 else torch.channels_last
                if not m.weight.is_contiguous(memory_format=fmt):
                    m.weight.data = m.weight.data.contiguous(memory_format=fmt)

    def _stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.cfg.latent_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.cfg.latent_std, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        return mean, std

    # ---------------------------------------------------------------- encode
    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B,3,F,H,W] in [-1,1] -> z [B,z_dim,1+(F-1)//4,H/8,W/8], normalised, float32.

        Frames past the last full chunk of 4 are ignored (as in the official code); use F = 4k+1.
        """
        b, c, f, h, w = video.shape
        s = self.spatial_stride
        if c != 3 or h % s or w % s or f < 1:
            raise ValueError(f"encode expects [B,3,F,H,W] with H,W multiples of {s}; got {tuple(video.shape)}")
        p = self._param()
        t_out = 1 + (f - 1) // self.temporal_stride
        out = torch.empty((b, self.z_dim, t_out, h // s, w // s), dtype=torch.float32, device=p.device)
        mean, std = self._stats(p.device)
        for i in range(b):  # one clip at a time: results never depend on the batch
            mu = self._encode_one(video[i:i + 1].to(device=p.device, dtype=p.dtype))
            out[i:i + 1] = (mu.float() - mean) * (1.0 / std)
        return out

    def _encode_one(self, x: torch.Tensor) -> torch.Tensor:
        cache = self._new_cache()
        step = self.temporal_stride
        n_chunks = 1 + (x.shape[2] - 1) // step
        mus = []
        for i in range(n_chunks):
            cache.chunk = i
            chunk = x[:, :, :1] if i == 0 else x[:, :, 1 + step * (i - 1):1 + step * i]
            mus.append(self.conv1(self.encoder(chunk, cache))[:, :self.z_dim])
        return torch.cat(mus, dim=2)

    # ---------------------------------------------------------------- decode
    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B,z_dim,T,h,w] normalised -> video [B,3,4(T-1)+1,8h,8w] float32 in [-1,1]."""
        b, c, t, h, w = z.shape
        if c != self.z_dim:
            raise ValueError(f"decode expects [B,{self.z_dim},T,h,w]; got {tuple(z.shape)}")
        p = self._param()
        s, step = self.spatial_stride, self.temporal_stride
        out = torch.empty((b, 3, step * (t - 1) + 1, h * s, w * s), dtype=torch.float32, device=p.device)
        mean, std = self._stats(p.device)
        for i in range(b):  # one clip at a time: results never depend on the batch
            mu = (z[i:i + 1].to(device=p.device, dtype=torch.float32) * std + mean).to(p.dtype)
            self._decode_one(mu, out[i:i + 1])
        return out.clamp_(-1.0, 1.0)

    def _decode_one(self, mu: torch.Tensor, out: torch.Tensor) -> None:
        cache = self._new_cache()
        x = self.conv2(mu)
        f = 0
        for i in range(x.shape[2]):
            cache.chunk = i
            frames = self.decoder(x[:, :, i:i + 1], cache)
            n = frames.shape[2]
            out[:, :, f:f + n].copy_(frames)
            f += n


# --------------------------------------------------------------------------------------- building/loading
def build_vae(cfg: VAEConfig | Mapping | None = None, device: torch.device | str = "meta") -> WanVAE:
    """The model on `device` (default meta: no memory until loaded or materialised)."""
    if not isinstance(cfg, VAEConfig):
        cfg = VAEConfig.from_dict(cfg)
    with torch.device(device):
        model = WanVAE(cfg)
    return model.eval().requires_grad_(False)


def random_vae(cfg: VAEConfig | Mapping | None, seed: int, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, on_device: bool = False) -> WanVAE:
    """Deterministic random weights from `seed` (see `random_init_`), for tiny presets and benchmarks."""
    model = materialize_(build_vae(cfg, "meta"), device)
    random_init_(model, seed, on_device=on_device)
    return model.to(dtype).eval().requires_grad_(False)


def load_vae(path: str | Path, cfg: VAEConfig | Mapping | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> WanVAE:
    """The official `Wan2.1_VAE.pth` (or any file in its key layout), strictly: a bad key raises CheckpointError."""
    model = build_vae(cfg, "meta")
    load_strict(model, read_state_dict(path), str(path), device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def save_wan_vae(model: WanVAE, path: str | Path) -> None:
    """Write the weights as a flat dict in the official `Wan2.1_VAE.pth` layout (torch.save)."""
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, str(path))


# --------------------------------------------------------------------------------------- diffusers keys
_RESIDUAL_NAMES = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.",
                   "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}


def _rename_residual(rest: str) -> str:
    for old, new in _RESIDUAL_NAMES.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def to_diffusers_state_dict(sd: Mapping[str, torch.Tensor], num_res_blocks: int | None = None) -> dict[str, torch.Tensor]:
    """Official Wan VAE keys -> diffusers `AutoencoderKLWan` keys (same tensors), for any dims/res-block count.

    Mirrors diffusers' `convert_wan_vae_to_diffusers` (which hard-codes num_res_blocks=2). The decoder's flat
    `upsamples.{i}` list groups into `up_blocks.{level}`: num_res_blocks+1 resnets then one upsampler.
    """
    if num_res_blocks is None:  # infer from the decoder's first level: resnets before the first resample
        ups = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.upsamples\.(\d+)\.resample\.", k))}
        if not ups:
            raise ValueError("cannot infer num_res_blocks: no decoder.upsamples.*.resample keys")
        num_res_blocks = min(ups) - 1
    group = num_res_blocks + 2
    fixed = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv.",
             "encoder.conv1.": "encoder.conv_in.", "decoder.conv1.": "decoder.conv_in.",
             "encoder.head.0.": "encoder.norm_out.", "encoder.head.2.": "encoder.conv_out.",
             "decoder.head.0.": "decoder.norm_out.", "decoder.head.2.": "decoder.conv_out."}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = None
        for old, repl in fixed.items():
            if key.startswith(old):
                new = repl + key[len(old):]
                break
        if new is None:
            if m := re.match(r"(encoder|decoder)\.middle\.(\d+)\.(.*)", key):
                part, idx, rest = m.group(1), int(m.group(2)), m.group(3)
                if idx == 1:
                    new = f"{part}.mid_block.attentions.0.{rest}"
                else:
                    new = f"{part}.mid_block.resnets.{idx // 2}.{_rename_residual(rest)}"
            elif m := re.match(r"encoder\.downsamples\.(\d+)\.(.*)", key):
                new = f"encoder.down_blocks.{m.group(1)}.{_rename_residual(m.group(2))}"
            elif m := re.match(r"decoder\.upsamples\.(\d+)\.(.*)", key):
                level, j = divmod(int(m.group(1)), group)
                rest = m.group(2)
                if j <= num_res_blocks:
                    new = f"decoder.up_blocks.{level}.resnets.{j}.{_rename_residual(rest)}"
                else:
                    new = f"decoder.up_blocks.{level}.upsamplers.0.{rest}"
        if new is None:
            raise KeyError(f"to_diffusers_state_dict: unknown Wan VAE key {key!r}")
        out[new] = value
    return out
