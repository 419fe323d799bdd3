"""Per-row render parameters: defaults, validation and the render key.

Both the driver (validating a manifest, no torch needed) and the pipeline (rendering) use this module, so a row
that passes validation is exactly a row the pipeline accepts. `ParamError` names the field, the value and what
is allowed, because the person reading it is fixing a manifest at 2 a.m.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from omegaconf import DictConfig

from .config import ASPECT_RATIOS, ConfigError, list_presets, load_preset

#: Manifest columns that set sampling parameters (everything else but prompt/seed/id/image is passthrough).
PARAM_FIELDS = (
    "model", "num_frames", "resolution", "aspect_ratio", "steps", "sigma_max", "ode", "sla_topk", "boundary",
    "adaptive_resolution", "guidance", "shift",
)
MAX_SEED = 2**63 - 1


class ParamError(ValueError):
    """An invalid parameter value. `field` is the manifest column / config key at fault."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is invalid: {allowed}")

    def row_error(self) -> str:
        """The form used in the index: "<field>: <value> is invalid: <what is allowed>"."""
        return f"{self.field}: {self.value!r} is invalid: {self.allowed}"


@dataclass(frozen=True)
class RenderParams:
    """Everything besides prompt, image and weights that determines a row's frames."""

    model: str
    task: str  # t2v | i2v
    sampler: str  # rcm | flow
    num_frames: int
    width: int
    height: int
    resolution: str
    aspect_ratio: str
    steps: int
    sigma_max: float
    ode: bool
    sla_topk: float
    boundary: float
    adaptive_resolution: bool
    guidance: float
    shift: float
    seed: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def latent_frames(self) -> int:
        return 1 + (self.num_frames - 1) // 4


def _bool(field: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int,)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ParamError(field, value, "must be a boolean (true/false)")


def _int(field: str, value) -> int:
    if isinstance(value, bool) or value is None:
        raise ParamError(field, value, "must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ParamError(field, value, "must be an integer")
        value = int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ParamError(field, value, "must be an integer") from None


def _float(field: str, value) -> float:
    if isinstance(value, bool) or value is None:
        raise ParamError(field, value, "must be a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ParamError(field, value, "must be a number") from None
    if not math.isfinite(out):
        raise ParamError(field, value, "must be a finite number")
    return out


def preset_for(name) -> DictConfig:
    if not isinstance(name, str) or not name:
        raise ParamError("model", name, f"must be one of {', '.join(list_presets())}")
    try:
        return load_preset(name)
    except ConfigError:
        raise ParamError("model", name, f"must be one of {', '.join(list_presets())}") from None


def resolve_params(row: dict, cfg: DictConfig, *, has_image: bool = False, image_size: tuple[int, int] | None = None) -> RenderParams:
    """Fill a row's missing parameters from the config/preset and validate every value.

    `row` maps field names to values (None = use the default). `image_size` (w, h) is needed only for
    adaptive-resolution I2V rows, whose output size follows the input image's aspect ratio.
    """
    def pick(field, default):
        value = row.get(field)
        return default if value is None else value

    preset = preset_for(pick("model", cfg.model))
    model = preset.name
    task = preset.task
    sampler = preset.get("sampler", "rcm")
    if task == "i2v" and not has_image:
        raise ParamError("image", None, f"model {model!r} is image-to-video: the row needs an `image`")
    if task == "t2v" and has_image:
        raise ParamError("image", "<given>", f"model {model!r} is text-to-video: remove the image or pick an i2v model")
    s = cfg.sampling
    pd = preset.get("defaults", {})

    num_frames = _int("num_frames", pick("num_frames", s.num_frames if s.num_frames is not None else pd.get("num_frames", 81)))
    if num_frames < 1 or (num_frames - 1) % 4 != 0 or num_frames > 1001:
        raise ParamError("num_frames", num_frames, "must be 4k+1 (1, 5, 9, ..., 81, ...) and at most 1001")
    resolution = pick("resolution", s.resolution if s.resolution is not None else pd.get("resolution", "480p"))
    if resolution not in cfg.resolutions:
        raise ParamError("resolution", resolution, f"must be one of {', '.join(cfg.resolutions.keys())}")
    aspect_ratio = str(pick("aspect_ratio", s.aspect_ratio))
    if aspect_ratio not in ASPECT_RATIOS:
        raise ParamError("aspect_ratio", aspect_ratio, f"must be one of {', '.join(ASPECT_RATIOS)}")
    width, height = (int(v) for v in cfg.resolutions[resolution][aspect_ratio])

    steps = _int("steps", pick("steps", s.steps if s.steps is not None else pd.get("steps", 4 if sampler == "rcm" else 50)))
    if sampler == "rcm" and not 1 <= steps <= 4:
        raise ParamError("steps", steps, "rCM few-step sampling takes 1 to 4 steps")
    if sampler == "flow" and not 1 <= steps <= 1000:
        raise ParamError("steps", steps, "flow-matching sampling takes 1 to 1000 steps")
    sigma_max = _float("sigma_max", pick("sigma_max", s.sigma_max if s.sigma_max is not None else preset.get("sigma_max", 80.0)))
    if sigma_max <= 0:
        raise ParamError("sigma_max", sigma_max, "must be > 0 (80 for T2V, 200 for I2V by default)")
    ode = _bool("ode", pick("ode", s.ode))
    sla_topk = _float("sla_topk", pick("sla_topk", s.sla_topk))
    if not 0 < sla_topk <= 1:
        raise ParamError("sla_topk", sla_topk, "must be in (0, 1] (fraction of key blocks kept, e.g. 0.1)")
    boundary = _float("boundary", pick("boundary", s.boundary))
    if not 0 <= boundary <= 1:
        raise ParamError("boundary", boundary, "must be in [0, 1] (RF time of the expert switch)")
    adaptive = _bool("adaptive_resolution", pick("adaptive_resolution", s.adaptive_resolution))
    if adaptive and task == "i2v":
        if image_size is not None:
            width, height = adaptive_size(width * height, image_size)
    guidance = _float("guidance", pick("guidance", s.guidance))
    shift = _float("shift", pick("shift", s.shift))
    if shift <= 0:
        raise ParamError("shift", shift, "must be > 0")

    seed = row.get("seed")
    if seed is None:
        raise ParamError("seed", seed, "is required (an integer in [0, 2^63))")
    seed = _int("seed", seed)
    if not 0 <= seed <= MAX_SEED:
        raise ParamError("seed", seed, "must be in [0, 2^63)")
    return RenderParams(
        model=model, task=task, sampler=sampler, num_frames=num_frames, width=width, height=height,
        resolution=str(resolution), aspect_ratio=aspect_ratio, steps=steps, sigma_max=sigma_max, ode=ode,
        sla_topk=sla_topk, boundary=boundary, adaptive_resolution=adaptive, guidance=guidance, shift=shift, seed=seed,
    )


def adaptive_size(area: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) with about `area` pixels and the image's aspect ratio, multiples of 16 (REFERENCE §4)."""
    img_w, img_h = image_size
    r = img_h / img_w
    h = max(16, round(math.sqrt(area * r) / 16) * 16)
    w = max(16, round(math.sqrt(area / r) / 16) * 16)
    return int(w), int(h)


def render_key(params: RenderParams, prompt: str, image_sha256: str | None, weights_id: str, runtime_id: str) -> str:
    """A hash of everything that determines the frames, and nothing else.

    `weights_id` identifies the checkpoints (or the random-weight seed); `runtime_id` the numerics that change
    bits (dtype, attention backend, quantization). Row ids and passthrough columns are deliberately excluded.
    """
    payload = {
        "v": 1,
        "params": params.as_dict(),
        "prompt": prompt,
        "image": image_sha256,
        "weights": weights_id,
        "runtime": runtime_id,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]
