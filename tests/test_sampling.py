"""The rCM schedule, the samplers' update rules and the seed contract."""
import math

import pytest
import torch

from turbo_batch.sampling import (NoiseStream, bf16_timestep, flow_sample, flow_sigmas, iter_expert_names, rcm_rf_times,
                                  rcm_sample)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_rcm_schedule_follows_the_trigflow_formula(steps):
    angles = [math.atan(80.0), 1.5, 1.4, 1.0][:steps] + [0.0]
    expected = [math.sin(t) / (math.cos(t) + math.sin(t)) for t in angles]
    assert rcm_rf_times(steps, 80.0) == pytest.approx(expected, abs=0)
    assert rcm_rf_times(steps, 80.0)[-1] == 0.0


def test_rcm_rejects_more_than_four_steps():
    with pytest.raises(ValueError, match="1 to 4"):
        rcm_rf_times(5, 80.0)


def test_timestep_is_rounded_to_bf16_like_the_checkpoints_saw():
    s = rcm_rf_times(4, 80.0)[0]
    t = bf16_timestep(s, 2, "cpu")
    assert t.dtype == torch.float32 and t.shape == (2,)
    assert t[0].item() == torch.tensor(s * 1000).to(torch.bfloat16).float().item()
    assert t[0].item() != s * 1000


def test_noise_depends_only_on_seed_and_shape():
    a = NoiseStream(42, (16, 3, 4, 8))
    b = NoiseStream(42, (16, 3, 4, 8))
    assert torch.equal(a.next(), b.next()) and torch.equal(a.next(), b.next())
    assert not torch.equal(NoiseStream(42, (16, 3, 4, 8)).next(), NoiseStream(43, (16, 3, 4, 8)).next())


def test_seed_contract_golden_values_are_stable():
    """The documented rule: torch CPU generator seeded with the row seed, float32 randn of the latent shape."""
    x = NoiseStream(1234, (16, 1, 2, 2)).next()
    g = torch.Generator().manual_seed(1234)
    assert torch.equal(x, torch.randn((16, 1, 2, 2), generator=g, dtype=torch.float32))
    assert round(float(x.sum()), 4) == round(float(torch.randn((16, 1, 2, 2), generator=torch.Generator().manual_seed(1234)).sum()), 4)


def _toy_velocity(x, t, i):
    return (x.double() * 0.3 + t.double().view(-1, 1, 1, 1, 1) / 1000.0).to(torch.float32)


def _sample(ode, steps, seeds=(1, 2, 3)):
    streams = [NoiseStream(s, (16, 2, 2, 2)) for s in seeds]
    return rcm_sample(_toy_velocity, streams, steps=steps, sigma_max=80.0, ode=ode, device="cpu", net_dtype=torch.float32)


def test_ode_and_sde_differ_except_with_one_step():
    assert torch.equal(_sample(True, 1), _sample(False, 1))
    for steps in (2, 3, 4):
        assert not torch.equal(_sample(True, steps), _sample(False, steps))


def test_a_row_samples_the_same_alone_or_in_a_batch_in_any_order():
    batch = _sample(False, 4, seeds=(5, 6, 7))
    alone = _sample(False, 4, seeds=(6,))
    reordered = _sample(False, 4, seeds=(7, 6, 5))
    assert torch.equal(batch[1], alone[0]) and torch.equal(batch[1], reordered[1])


def test_sde_step_matches_the_reference_update_rule():
    s = rcm_rf_times(2, 80.0)
    stream = NoiseStream(9, (16, 1, 1, 1))
    eps0, eps1 = stream.next().double(), stream.next().double()
    x = eps0 * s[0]
    v = _toy_velocity(x.float()[None], bf16_timestep(s[0], 1, "cpu"), 0).double()[0]
    x = (1 - s[1]) * (x - s[0] * v) + s[1] * eps1
    v = _toy_velocity(x.float()[None], bf16_timestep(s[1], 1, "cpu"), 1).double()[0]
    expected = (x - s[1] * v).float()
    got = rcm_sample(_toy_velocity, [NoiseStream(9, (16, 1, 1, 1))], steps=2, sigma_max=80.0, ode=False, device="cpu",
                     net_dtype=torch.float32)[0]
    assert torch.allclose(got, expected, atol=1e-6)


def test_flow_matching_schedule_is_shifted_and_cfg_uses_two_forwards():
    sig = flow_sigmas(4, 5.0)
    assert sig[0] == 1.0 and sig[-1] == 0.0 and sig[1] == pytest.approx(5 * 0.75 / (1 + 4 * 0.75))
    calls = []

    def cond(x, t, i):
        calls.append("c")
        return torch.ones_like(x, dtype=torch.float32)

    def uncond(x, t, i):
        calls.append("u")
        return torch.zeros_like(x, dtype=torch.float32)

    out = flow_sample(cond, uncond, [NoiseStream(0, (16, 1, 1, 1))], steps=4, shift=5.0, guidance=5.0, device="cpu",
                      net_dtype=torch.float32)
    assert calls == ["c", "u"] * 4
    x0 = NoiseStream(0, (16, 1, 1, 1)).next()
    assert torch.allclose(out[0], x0 - 5.0, atol=1e-5)  # v = 0 + 5*(1-0) integrated over sigma 1 -> 0


def test_two_experts_switch_once_at_the_boundary():
    times = rcm_rf_times(4, 200.0)
    names = list(iter_expert_names(times, 0.9, ("high", "low")))
    assert names[0] == "high" and names[-1] == "low"
    first_low = names.index("low")
    assert all(n == "low" for n in names[first_low:])
    assert times[first_low] < 0.9 <= times[first_low - 1]
    assert list(iter_expert_names(times, 0.9, ("main",))) == ["main"] * 4
