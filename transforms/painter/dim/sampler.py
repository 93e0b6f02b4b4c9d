"""Flow-matching DPM-Solver++ (2M) with the conventions of NVlabs Sana's ``flow_dpm-solver``.

What the reference does (showlab/DIM ``models/diffusion/model/dpm_solver.py`` and the Sana model forward):

- times: ``t_i`` = shift * s / (1 + (shift - 1) * s) for s = 1 - linspace(1, 1/1000, steps + 1), reversed,
  so t runs from ~0.9997 down to 0 (float32). diffusers' DPMSolverMultistepScheduler with
  ``use_flow_sigmas`` and ``final_sigmas_type="zero"`` builds the same sigmas and the same update
  (data prediction x0 = x - sigma * v, midpoint 2nd order, first step and last step 1st order).
- the DiT is fed ``t * 1000`` truncated to an integer (the Sana forward does ``timestep.long()``), not the
  float diffusers' SanaPipeline passes, so we compute the reference's integer timesteps ourselves.
- guidance: one forward on [uncond, cond]; uncond + g * (cond - uncond). The reference mixes the derived
  noise predictions, an affine function of the velocity with the same x, so mixing velocities is the same.
  With g == 1 it runs the conditional branch only.
- the solver state stays float32 whatever the model dtype (the reference's noise is float32 and the
  model output is promoted when mixed with it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DPMSolverMultistepScheduler


def make_scheduler(
    num_train_timesteps: int, flow_shift: float, solver_order: int
) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=num_train_timesteps,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=flow_shift,
        algorithm_type="dpmsolver++",
        solver_order=solver_order,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
    )


def model_timesteps(steps: int, flow_shift: float, num_train_timesteps: int) -> torch.Tensor:
    """The integer-valued timesteps the reference's DiT sees at each of ``steps`` evaluations (float32)."""
    t = torch.linspace(1.0, 1.0 / num_train_timesteps, steps + 1, dtype=torch.float32)
    s = 1.0 - t
    s = (flow_shift * s / (1 + (flow_shift - 1) * s)).flip(dims=[0])
    return (s[:steps] * num_train_timesteps).long().to(torch.float32)


def initial_noise(
    seeds: Sequence[int], shape: tuple[int, int, int], device: torch.device, noise_device: str
) -> torch.Tensor:
    """One float32 normal draw per row from that row's own generator.

    ``cpu`` draws on a CPU generator (the same image on any device and in any batch); ``accelerator`` draws
    on the model's device, as the reference does (its CUDA generator, batch size 1), to bit-match it.
    """
    rows = []
    for seed in seeds:
        gen_device = device if noise_device == "accelerator" else torch.device("cpu")
        generator = torch.Generator(device=gen_device).manual_seed(int(seed))
        rows.append(torch.randn((1, *shape), generator=generator, device=gen_device, dtype=torch.float32))
    return torch.cat(rows).to(device)


Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def denoise(
    velocity: Velocity,
    noise: torch.Tensor,
    *,
    steps: int,
    flow_shift: float,
    num_train_timesteps: int,
    solver_order: int,
) -> torch.Tensor:
    """Integrate from noise (t ~ 1) to data (t = 0). ``velocity(x, timestep[B]) -> v`` in any float dtype."""
    scheduler = make_scheduler(num_train_timesteps, flow_shift, solver_order)
    scheduler.set_timesteps(steps, device=noise.device)
    times = model_timesteps(steps, flow_shift, num_train_timesteps).to(noise.device)
    x = noise.to(torch.float32)
    for index, scheduler_t in enumerate(scheduler.timesteps):
        t = times[index].expand(x.shape[0])
        v = velocity(x, t).to(torch.float32)
        x = scheduler.step(v, scheduler_t, x, return_dict=False)[0]
    return x


def guided(v_uncond: torch.Tensor, v_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    return v_uncond + guidance_scale * (v_cond - v_uncond)
