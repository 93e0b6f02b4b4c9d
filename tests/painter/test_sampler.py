"""The sampler against an independent implementation of the reference's flow DPM-Solver++ (2M)."""

from __future__ import annotations

import math

import pytest
import torch

from transforms.painter.dim import sampler


def reference_times(steps: int, shift: float) -> torch.Tensor:
    """NVlabs Sana's time_uniform_flow schedule in float32: steps + 1 times from ~1 down to 0."""
    t = torch.linspace(1.0, 1.0 / 1000, steps + 1)
    s = 1.0 - t
    return (shift * s / (1 + (shift - 1) * s)).flip(dims=[0])


def reference_sample(velocity, x: torch.Tensor, steps: int, shift: float) -> torch.Tensor:
    """Multistep DPM-Solver++ on alpha = 1 - t, sigma = t; data prediction x0 = x - t * v;
    first step and final step first order; the model sees int(t * 1000)."""
    times = reference_times(steps, shift)

    def x0(x, t):
        return x - t * velocity(x, (t * 1000).long().float().expand(x.shape[0]))

    def lam(t):
        return math.log(1 - t) - math.log(t) if t > 0 else math.inf

    prev_t, prev_m = [float(times[0])], [x0(x, times[0])]
    for step in range(1, steps + 1):
        s, t = prev_t[-1], float(times[step])
        sigma_ratio = t / s
        h = lam(t) - lam(s)
        phi = math.expm1(-h)  # -1 when t == 0
        alpha_t = 1 - t
        order = 1 if step == 1 or step == steps else 2
        if order == 1:
            x = sigma_ratio * x - alpha_t * phi * prev_m[-1]
        else:
            r0 = (lam(s) - lam(prev_t[-2])) / h
            d1 = (prev_m[-1] - prev_m[-2]) / r0
            x = sigma_ratio * x - alpha_t * phi * prev_m[-1] - 0.5 * alpha_t * phi * d1
        if step < steps:
            prev_t.append(t)
            prev_m.append(x0(x, times[step]))
    return x


def toy_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.7 * x - torch.tanh(x) + (t / 1000.0).view(-1, 1, 1, 1) * 0.3


@pytest.mark.parametrize("steps", [2, 5, 30])
def test_denoise_matches_reference_formulas(steps):
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    ours = sampler.denoise(
        toy_velocity, noise, steps=steps, flow_shift=3.0, num_train_timesteps=1000, solver_order=2
    )
    ref = reference_sample(toy_velocity, noise.clone(), steps, 3.0)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()


def test_model_timesteps_are_the_references_truncated_integers():
    times = sampler.model_timesteps(30, 3.0, 1000)
    expected = (reference_times(30, 3.0)[:30] * 1000).long().float()
    assert torch.equal(times, expected)
    assert times[0] == 999 and torch.all(times[1:] < times[:-1])
    assert torch.equal(times, times.floor())


def test_noise_is_per_row_and_batch_independent():
    batch = sampler.initial_noise([5, 7, 5], (4, 8, 8), torch.device("cpu"), "cpu")
    alone = sampler.initial_noise([7], (4, 8, 8), torch.device("cpu"), "cpu")
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(batch[0], batch[2])
    assert not torch.equal(batch[0], batch[1])
    assert batch.dtype == torch.float32
