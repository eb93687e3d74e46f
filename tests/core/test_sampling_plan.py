"""The sampler's plan features on an analytic stub backbone: ODE steps, per-row ODE continuation, and a
random stream that does not depend on either."""

import torch

from opgrpo_bench.sampling import sample_ode, sample_sde


class Linear:
    """v(x, sigma) = x - 0.5 * sigma (any smooth map will do); conditioning ignored."""

    def velocity(self, x, sigma, cond, guidance=1.0, detach_uncond=False):
        return x - 0.5 * sigma.view(-1, *([1] * (x.ndim - 1)))


SIGMAS = torch.linspace(1.0, 0.0, 6)


def test_all_ode_steps_equal_the_ode_sampler_and_draw_the_same_noise():
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    traj = sample_sde(Linear(), {}, noise, SIGMAS, 0.7, generator=gen_a, sde_steps=torch.zeros(5, dtype=torch.bool))
    assert torch.equal(traj.latents[:, -1], sample_ode(Linear(), {}, noise, SIGMAS))
    sample_sde(Linear(), {}, noise, SIGMAS, 0.7, generator=gen_b)
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def test_a_window_of_sde_steps_is_stochastic_only_inside_the_window():
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    window = torch.tensor([False, True, True, False, False])
    a = sample_sde(Linear(), {}, noise, SIGMAS, 0.7, generator=torch.Generator().manual_seed(1), sde_steps=window)
    b = sample_sde(Linear(), {}, noise, SIGMAS, 0.7, generator=torch.Generator().manual_seed(2), sde_steps=window)
    assert torch.equal(a.latents[:, 1], b.latents[:, 1])  # step 0 is ODE: no noise
    assert not torch.equal(a.latents[:, 2], b.latents[:, 2])  # step 1 is SDE


def test_per_row_ode_continuation_after_a_forced_prefix():
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    stored = sample_sde(Linear(), {}, noise, SIGMAS, 0.7, generator=torch.Generator().manual_seed(3))
    forced_len = torch.tensor([2, 2])
    out = sample_sde(Linear(), {}, noise, SIGMAS, 0.7, generator=torch.Generator().manual_seed(4),
                     forced=stored.latents[:, :3], forced_len=forced_len, ode_after_forced=torch.tensor([True, False]))
    assert torch.equal(out.latents[:, :3], stored.latents[:, :3])  # the prefix is followed exactly
    ode_rest = sample_ode(Linear(), {}, stored.latents[:1, 2], SIGMAS[2:])
    assert torch.equal(out.latents[0, -1], ode_rest[0])  # row 0 continues by the ODE
    assert not torch.equal(out.latents[1, -1], stored.latents[1, -1])  # row 1 by a new SDE draw
