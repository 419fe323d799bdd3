"""Row parameters: defaults from config and preset, validation messages, the render key."""
import pytest

from turbo_batch.config import ConfigError, load_config, load_preset
from turbo_batch.params import ParamError, adaptive_size, render_key, resolve_params

CFG = load_config()


def params(**row):
    row.setdefault("seed", 7)
    has_image = row.pop("has_image", False)
    return resolve_params(row, CFG, has_image=has_image, image_size=row.pop("image_size", None))


def test_missing_values_take_the_presets_defaults():
    p = params(model="tiny-t2v")
    assert (p.num_frames, p.resolution, p.width, p.height, p.steps, p.sigma_max) == (9, "tiny", 64, 32, 4, 80.0)
    real = params(model="wan2.1-t2v-1.3b")
    assert (real.num_frames, real.width, real.height) == (81, 832, 480)
    i2v = params(model="wan2.2-i2v-a14b", has_image=True)
    assert (i2v.sigma_max, i2v.width, i2v.height) == (200.0, 1280, 720)


def test_resolution_and_aspect_ratio_pick_the_published_sizes():
    assert (params(model="wan2.1-t2v-1.3b", aspect_ratio="9:16").width, params(model="wan2.1-t2v-1.3b", aspect_ratio="9:16").height) == (480, 832)
    p = params(model="wan2.1-t2v-14b", resolution="720p", aspect_ratio="1:1")
    assert (p.width, p.height) == (960, 960)


@pytest.mark.parametrize("field,value,message", [
    ("num_frames", 80, "4k+1"),
    ("steps", 5, "1 to 4"),
    ("steps", 0, "1 to 4"),
    ("sla_topk", 0.0, "(0, 1]"),
    ("sla_topk", 1.5, "(0, 1]"),
    ("boundary", 1.2, "[0, 1]"),
    ("sigma_max", -1, "> 0"),
    ("resolution", "1080p", "480p, 720p"),
    ("aspect_ratio", "21:9", "16:9"),
    ("ode", "maybe", "boolean"),
    ("seed", -1, "[0, 2^63)"),
    ("seed", 2**63, "[0, 2^63)"),
    ("model", "wan9", "tiny-t2v"),
])
def test_every_bad_parameter_is_rejected_naming_field_value_and_what_is_allowed(field, value, message):
    row = {"model": "tiny-t2v", field: value}
    with pytest.raises(ParamError) as e:
        params(**row)
    assert e.value.field == field and message in str(e.value) and repr(value) in str(e.value)


def test_i2v_needs_an_image_and_t2v_refuses_one():
    with pytest.raises(ParamError, match="needs an `image`"):
        params(model="tiny-i2v")
    with pytest.raises(ParamError, match="text-to-video"):
        params(model="tiny-t2v", has_image=True)


def test_adaptive_resolution_keeps_the_image_aspect_at_the_preset_area():
    assert adaptive_size(1280 * 720, (1000, 1000)) == (960, 960)
    w, h = adaptive_size(1280 * 720, (600, 1200))
    assert w % 16 == 0 and h % 16 == 0 and abs(h / w - 2.0) < 0.05
    p = params(model="tiny-i2v", has_image=True, adaptive_resolution=True, image_size=(30, 60))
    assert p.height > p.width


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known presets: .*tiny-t2v.*wan2.1-t2v-1.3b"):
        load_preset("wan3")


def test_unknown_override_key_is_rejected():
    with pytest.raises(ConfigError, match="unknown key 'sampler'"):
        load_config(["sampler.steps=2"])


def test_render_key_covers_what_determines_frames_and_nothing_else():
    p = params(model="tiny-t2v")
    k = render_key(p, "a mug", None, "w1", "cpu|float32|sla_ref|none")
    assert k == render_key(p, "a mug", None, "w1", "cpu|float32|sla_ref|none")
    assert k != render_key(params(model="tiny-t2v", seed=8), "a mug", None, "w1", "cpu|float32|sla_ref|none")
    assert k != render_key(p, "a cup", None, "w1", "cpu|float32|sla_ref|none")
    assert k != render_key(p, "a mug", "abc", "w1", "cpu|float32|sla_ref|none")
    assert k != render_key(p, "a mug", None, "w2", "cpu|float32|sla_ref|none")
    assert k != render_key(p, "a mug", None, "w1", "cuda|bfloat16|sla|fp8")


def test_a_new_numerics_version_gives_every_row_a_new_render_key(monkeypatch):
    """So a rerun after an upgrade that changed the arithmetic renders again instead of mixing two versions."""
    from turbo_batch import NUMERICS_VERSION, worker

    runtime = {"device": "cuda:0", "dtype": "bfloat16", "attention": "sla", "quant": "none"}
    now = worker.runtime_id(runtime)
    assert now == f"cuda|bfloat16|sla|none|numerics-{NUMERICS_VERSION}"
    monkeypatch.setattr(worker, "NUMERICS_VERSION", NUMERICS_VERSION + 1)
    later = worker.runtime_id(runtime)
    p = params(model="tiny-t2v")
    assert render_key(p, "a mug", None, "w1", later) != render_key(p, "a mug", None, "w1", now)
