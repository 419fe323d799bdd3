"""T2V and I2V pipelines: prompt (+ image) -> umT5 -> rCM / flow sampling -> VAE decode -> uint8 frames.

No Ray in here: an actor owns one `Pipeline` and calls `render_many`. Every row's noise follows the seed
contract in `sampling.py`, and rows are batched only when that cannot change their bits (see `batch_size`).
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from omegaconf import DictConfig

from .config import load_config, resolve_runtime
from .models.cuda_graph import GraphedForward
from .models.dit import text_rows
from .models.text_encoder import without_padding
from .params import RenderParams, preset_for
from .sampling import NoiseStream, flow_sample, flow_sigmas, iter_expert_names, rcm_rf_times, rcm_sample


@dataclass
class RenderJob:
    prompt: str
    params: RenderParams
    image: np.ndarray | None = None  # uint8 [h, w, 3] for I2V rows


@dataclass
class RenderOutput:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    timings: dict = field(default_factory=dict)

    @property
    def frames_sha256(self) -> str:
        return frames_sha256(self.frames)


def frames_sha256(frames: np.ndarray) -> str:
    """Identity of a render: sha256 of its raw uint8 frames in [F, H, W, 3] C order."""
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).hexdigest()


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3] via ((clamp(x)+1)/2*255 + 0.5) (REFERENCE §9)."""
    x = ((video.float().clamp(-1, 1) + 1.0) / 2.0 * 255.0 + 0.5).floor().clamp(0, 255).to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def prepare_image(image: np.ndarray, width: int, height: int) -> torch.Tensor:
    """uint8 [h, w, 3] -> float [3, H, W] in [-1, 1]: resize to cover (bilinear, antialiased), centre crop.

    Covering then cropping keeps the picture's proportions; with adaptive resolution the target already has the
    image's aspect ratio, so nothing is cropped.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [h, w, 3], got {image.dtype} {image.shape}")
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    h, w = image.shape[:2]
    scale = max(width / w, height / h)
    rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
    x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (rh - height) // 2, (rw - width) // 2
    return x[0, :, top:top + height, left:left + width].clamp(-1, 1)


def batch_signature(job: RenderJob) -> tuple:
    """Rows with equal signatures can share forwards: everything but seed, prompt and image content."""
    p = job.params.as_dict()
    p.pop("seed")
    return tuple(sorted(p.items()))


class Pipeline:
    """One model preset loaded once and kept warm; renders rows of that preset."""

    def __init__(self, model: str, cfg: DictConfig | None = None, runtime: dict | None = None, bundle=None):
        from .models.loader import load_models

        self.cfg = cfg if cfg is not None else load_config()
        self.preset = preset_for(model)
        self.runtime = runtime or resolve_runtime(self.cfg)
        self.device = torch.device(self.runtime["device"])
        self.dtype = getattr(torch, self.runtime["dtype"])
        t0 = time.perf_counter()
        self.models = bundle or load_models(self.preset, self.cfg, self.runtime)
        self.load_seconds = time.perf_counter() - t0
        self.expert_names = tuple(self.preset.experts)
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_len = next(iter(self.models.experts.values())).cfg.text_len
        self._resident = self._decide_residency()
        # graphs bake in the weights' addresses, so they run only while every expert stays on the GPU
        self._graphs = GraphedForward() if self.runtime.get("cuda_graph") and self._resident else None

    # ------------------------------------------------------------------ memory management
    def _decide_residency(self) -> bool:
        """Keep every expert on the GPU when they fit (with headroom), else swap them through CPU memory."""
        setting = self.runtime.get("keep_experts_resident", "auto")
        if len(self.expert_names) == 1 or self.device.type != "cuda":
            return True
        if isinstance(setting, bool):
            resident = setting
        else:
            total = torch.cuda.get_device_properties(self.device).total_memory
            need = sum(sum(t.numel() * t.element_size() for t in m.state_dict().values()) for m in self.models.experts.values())
            resident = need < 0.75 * total
        if not resident:
            for name in self.expert_names[1:]:
                self.models.experts[name].to("cpu")
        return resident

    def _expert(self, name: str) -> torch.nn.Module:
        model = self.models.experts[name]
        if not self._resident and next(model.parameters()).device != self.device:
            for other, m in self.models.experts.items():
                if other != name:
                    m.to("cpu")
            model.to(self.device)
        return model

    # ------------------------------------------------------------------ stages
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """[tokens, dim] embedding without the encoder's zero padding rows (the DiT restores them, or collapses
        them: `collapse_text_padding`), cached so a prompt repeated across rows is encoded once."""
        if prompt in self._prompt_cache:
            self._prompt_cache.move_to_end(prompt)
            return self._prompt_cache[prompt].to(self.device)
        te = self.models.text_encoder
        if self.runtime.get("offload_text_encoder"):
            te.to(self.device)
        with torch.no_grad():
            emb = te.encode([prompt])[0]
        if self.runtime.get("offload_text_encoder"):
            te.to("cpu")
        self._prompt_cache[prompt] = without_padding(emb.detach().to("cpu"))
        limit = int(self.runtime.get("prompt_cache_size", 1024))
        while len(self._prompt_cache) > limit:
            self._prompt_cache.popitem(last=False)
        return self._prompt_cache[prompt].to(self.device)

    def image_condition(self, image: np.ndarray, p: RenderParams) -> torch.Tensor:
        """y = concat(mask [4,T,h,w], VAE latent of [image, zeros...]) = 20 channels (REFERENCE §4)."""
        vae = self.models.vae
        vae_dtype = next(vae.parameters()).dtype
        frame = prepare_image(image, p.width, p.height)
        video = torch.zeros(1, 3, p.num_frames, p.height, p.width, dtype=torch.float32)
        video[0, :, 0] = frame
        with torch.no_grad():
            latent = vae.encode(video.to(self.device, vae_dtype)).float()[0]
        mask = torch.zeros(4, *latent.shape[1:], device=self.device)
        mask[:, 0] = 1.0
        return torch.cat([mask, latent], dim=0)

    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        vae = self.models.vae
        vae_dtype = next(vae.parameters()).dtype
        out = []
        with torch.no_grad():
            for z in latents:  # one row at a time: the VAE dominates memory, and bits stay per-row
                out.append(to_uint8_frames(vae.decode(z[None].to(vae_dtype))[0]))
        return out

    # ------------------------------------------------------------------ rendering
    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def render_batch(self, jobs: list[RenderJob]) -> list[RenderOutput]:
        """Render rows that share a `batch_signature` in one set of forwards."""
        if len({batch_signature(j) for j in jobs}) != 1:
            raise ValueError("render_batch needs rows with identical parameters apart from seed, prompt and image")
        p = jobs[0].params
        if p.model != self.preset.name:
            raise ValueError(f"this pipeline holds {self.preset.name!r}, the row asks for {p.model!r}")
        timings: dict = {}
        self._sync()
        t0 = time.perf_counter()
        prompts = [self.encode_prompt(j.prompt) for j in jobs]
        buckets = [text_rows(len(e), self._text_len) for e in prompts]
        if len(set(buckets)) > 1:  # the DiT collapses a batch's padding to its longest prompt's bucket (dit.text_rows):
            return self._render_grouped(jobs, buckets)  # a row keeps its bits alone only among rows of its bucket
        # prompts of different lengths: zero rows at the end, as the encoder pads
        context = pad_sequence(prompts, batch_first=True).to(self.dtype)
        self._sync()
        timings["text_s"] = time.perf_counter() - t0

        latent_shape = (16, p.latent_frames, p.height // 8, p.width // 8)
        streams = [NoiseStream(j.params.seed, latent_shape) for j in jobs]
        y = None
        if p.task == "i2v":
            t1 = time.perf_counter()
            y = torch.stack([self.image_condition(j.image, p) for j in jobs]).to(self.dtype)
            self._sync()
            timings["image_encode_s"] = time.perf_counter() - t1

        step_times: list[float] = []
        times = rcm_rf_times(p.steps, p.sigma_max) if p.sampler == "rcm" else flow_sigmas(p.steps, p.shift)
        experts = list(iter_expert_names(times, p.boundary, self.expert_names))

        def make_velocity(ctx):
            def velocity(x, t, i):
                model = self._expert(experts[i])
                model.set_attention(self.runtime["attention"], p.sla_topk)
                inp = x if y is None else torch.cat([x, y.to(x.dtype)], dim=1)
                if self._graphs is not None:
                    return self._graphs(model, inp, t, ctx, tag=(self.runtime["attention"], p.sla_topk)).float()
                return model(inp, t, ctx).float()
            return velocity

        last = [time.perf_counter()]

        def on_step(_info):
            self._sync()
            now = time.perf_counter()
            step_times.append(now - last[0])
            last[0] = now

        self._sync()
        last[0] = time.perf_counter()
        if p.sampler == "rcm":
            x0 = rcm_sample(make_velocity(context), streams, steps=p.steps, sigma_max=p.sigma_max, ode=p.ode,
                            device=self.device, net_dtype=self.dtype, on_step=on_step)
        else:
            uncond = self.encode_prompt(str(self.cfg.sampling.get("negative_prompt", "") or ""))
            ctx_u = uncond[None].expand(len(jobs), -1, -1).to(self.dtype)
            x0 = flow_sample(make_velocity(context), make_velocity(ctx_u), streams, steps=p.steps, shift=p.shift,
                             guidance=p.guidance, device=self.device, net_dtype=self.dtype, on_step=on_step)
        timings["dit_step_s"] = step_times
        timings["dit_s"] = sum(step_times)
        t2 = time.perf_counter()
        frames = self.decode(x0)
        self._sync()
        timings["vae_decode_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0
        share = 1.0 / len(jobs)
        return [RenderOutput(f, {k: (v if isinstance(v, list) else v * share) for k, v in timings.items()} | {"batch": len(jobs)})
                for f in frames]

    def _render_grouped(self, jobs: list[RenderJob], keys: list, size: int | None = None) -> list[RenderOutput]:
        """`render_batch` the rows of each key together (at most `size` a batch), results in the rows' order."""
        out: list[RenderOutput | None] = [None] * len(jobs)
        groups: dict = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        for idxs in groups.values():
            step = size or len(idxs)
            for k in range(0, len(idxs), step):
                chunk = idxs[k:k + step]
                for i, o in zip(chunk, self.render_batch([jobs[i] for i in chunk])):
                    out[i] = o
        return out  # type: ignore[return-value]

    def render(self, job: RenderJob) -> RenderOutput:
        return self.render_batch([job])[0]

    def render_many(self, jobs: list[RenderJob]) -> list[RenderOutput]:
        """Render rows in order, batching rows with equal signatures up to `runtime.batch_size`."""
        size = max(1, int(self.runtime.get("batch_size", 1)))
        return self._render_grouped(jobs, [batch_signature(j) for j in jobs], size)
