"""T2V and I2V pipelines on the tiny presets: frames, seed-exactness, batch invariance, I2V conditioning."""
import numpy as np
import pytest

from turbo_batch.config import load_config
from turbo_batch.demo import demo_image
from turbo_batch.models import dit
from turbo_batch.params import resolve_params
from turbo_batch.pipeline import Pipeline, RenderJob, frames_sha256, prepare_image

CFG = load_config(["runtime.attention=sla_ref"])


@pytest.fixture(scope="module")
def t2v():
    return Pipeline("tiny-t2v", CFG)


@pytest.fixture(scope="module")
def i2v():
    return Pipeline("tiny-i2v", CFG)


def job(prompt="a red mug", image=None, model="tiny-t2v", **row):
    row.setdefault("seed", 11)
    p = resolve_params({"model": model, **row}, CFG, has_image=image is not None,
                       image_size=None if image is None else (image.shape[1], image.shape[0]))
    return RenderJob(prompt, p, image)


def test_t2v_renders_uint8_frames_of_the_requested_shape(t2v):
    out = t2v.render(job(num_frames=5))
    assert out.frames.dtype == np.uint8 and out.frames.shape == (5, 32, 64, 3)
    assert out.frames.std() > 0
    assert set(out.timings) >= {"text_s", "dit_step_s", "dit_s", "vae_decode_s", "total_s"}
    assert len(out.timings["dit_step_s"]) == 4


def test_the_same_seed_gives_the_same_frame_hash_even_from_a_fresh_pipeline(t2v):
    first = t2v.render(job()).frames_sha256
    assert t2v.render(job()).frames_sha256 == first
    assert Pipeline("tiny-t2v", CFG).render(job()).frames_sha256 == first
    assert t2v.render(job(seed=12)).frames_sha256 != first


def test_ode_and_sde_differ_except_at_one_step(t2v):
    assert t2v.render(job(ode=True)).frames_sha256 != t2v.render(job(ode=False)).frames_sha256
    assert t2v.render(job(ode=True, steps=1)).frames_sha256 == t2v.render(job(ode=False, steps=1)).frames_sha256


def test_a_batch_of_three_equals_three_singles_bit_for_bit(t2v):
    jobs = [job(prompt=p, seed=s) for p, s in (("a mug", 1), ("a bag", 2), ("a mug", 3))]
    batched = t2v.render_batch(jobs)
    singles = [t2v.render(j) for j in jobs]
    assert [o.frames_sha256 for o in batched] == [o.frames_sha256 for o in singles]
    assert len({o.frames_sha256 for o in singles}) == 3


def test_with_collapsed_text_padding_a_batch_renders_as_one_batch_per_prompt_bucket(monkeypatch):
    """A batch's text padding collapses to its longest prompt's bucket (`dit.text_rows`), so `render_batch` renders
    one sub-batch per bucket, in the rows' order: a row then meets only rows of its own bucket, whose batch its
    bits do not depend on where the kernels are batch-invariant (the GPU's; on CPU, BLAS picks paths by shape).
    The DiT's fused path is forced on CPU, torch references standing in for the kernels; 4-row buckets."""
    monkeypatch.setattr(dit, "COLLAPSE_MAX_ROWS", 256)
    monkeypatch.setattr(dit, "TEXT_ROWS_BUCKET", 4)
    pipe = Pipeline("tiny-t2v", CFG)
    for model in pipe.models.experts.values():
        model.use_fused = lambda x, dtype: True
    medium = "a red ceramic mug on a table"  # 8 tokens: bucket 8 of the tiny model's 16 rows; "a mug": 3, bucket 4
    jobs = [job(prompt="a mug", seed=1), job(prompt=medium, seed=2), job(prompt="a bag", seed=3)]
    buckets = [dit.text_rows(len(pipe.encode_prompt(j.prompt)), pipe._text_len) for j in jobs]
    assert buckets == [4, 8, 4]
    batched = pipe.render_batch(jobs)
    assert [o.timings["batch"] for o in batched] == [2, 1, 2]
    short = pipe.render_batch([jobs[0], jobs[2]])
    assert [o.frames_sha256 for o in batched] == [short[0].frames_sha256, pipe.render(jobs[1]).frames_sha256,
                                                  short[1].frames_sha256]


def test_render_many_batches_only_rows_with_equal_parameters():
    pipe = Pipeline("tiny-t2v", load_config(["runtime.attention=sla_ref", "runtime.batch_size=4"]))
    jobs = [job(seed=1), job(seed=2, steps=2), job(seed=3)]
    outs = pipe.render_many(jobs)
    assert [o.timings["batch"] for o in outs] == [2, 1, 2]
    assert outs[0].frames_sha256 == pipe.render(jobs[0]).frames_sha256


def test_a_repeated_prompt_is_encoded_once(t2v):
    calls = []
    original = t2v.models.text_encoder.encode
    t2v.models.text_encoder.encode = lambda prompts: calls.append(list(prompts)) or original(prompts)
    try:
        t2v._prompt_cache.clear()
        t2v.render(job("same words", seed=1))
        t2v.render(job("same words", seed=2))
    finally:
        t2v.models.text_encoder.encode = original
    assert calls == [["same words"]]


def test_i2v_renders_from_a_generated_image(i2v):
    image = demo_image(96, 64)
    out = i2v.render(job(image=image, model="tiny-i2v"))
    assert out.frames.shape == (9, 32, 64, 3)
    assert out.frames_sha256 == i2v.render(job(image=image, model="tiny-i2v")).frames_sha256
    other = demo_image(96, 64)[:, ::-1].copy()
    assert i2v.render(job(image=other, model="tiny-i2v")).frames_sha256 != out.frames_sha256


def test_i2v_adaptive_resolution_follows_the_image_aspect(i2v):
    tall = demo_image(40, 80)
    out = i2v.render(job(image=tall, model="tiny-i2v", adaptive_resolution=True))
    f, h, w, _ = out.frames.shape
    assert h > w and h % 16 == 0 and w % 16 == 0
    fixed = i2v.render(job(image=tall, model="tiny-i2v", adaptive_resolution=False))
    assert fixed.frames.shape[1:3] == (32, 64)


def test_i2v_switches_from_the_high_to_the_low_noise_expert(i2v):
    used = []
    for name, model in i2v.models.experts.items():
        model.register_forward_pre_hook(lambda m, a, n=name: used.append(n))
    i2v.render(job(image=demo_image(), model="tiny-i2v", boundary=0.9))
    assert used[0] == "high" and used[-1] == "low" and used == sorted(used, key=lambda n: n != "high")


def test_prepare_image_covers_and_crops_to_the_target():
    img = np.zeros((50, 100, 3), np.uint8)
    img[:, 40:60] = 255
    x = prepare_image(img, 32, 32)
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert x[0, 16, 16] > 0.9 and x[0, 16, 0] < -0.9


def test_frames_hash_is_of_the_raw_uint8_frames():
    frames = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
    import hashlib

    assert frames_sha256(frames) == hashlib.sha256(frames.tobytes()).hexdigest()
