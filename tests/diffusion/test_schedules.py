"""pplvi.diffusion.schedules: closed-form inverses, monotonicity, the linear schedule against DDPM's discrete one."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import pplvi.diffusion as D
from pplvi import PPLVIError

SCHEDULES = [D.LinearSchedule(), D.CosineSchedule(), D.EDMSchedule()]


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__)
def test_t_of_sigma_inverts_sigma_and_alpha_bar_decreases(sched):
    t = jnp.linspace(max(sched.t_min, 0.01), 0.99, 50)
    ab = sched.alpha_bar(t)
    assert bool(jnp.all(jnp.diff(ab) < 0)) and bool(jnp.all((ab > 0) & (ab <= 1)))
    np.testing.assert_allclose(sched.t_of_sigma(sched.sigma(t)), t, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(sched.log_snr(t), -2 * jnp.log(sched.sigma(t)), rtol=1e-4, atol=1e-4)


def test_linear_schedule_is_ddpm_discrete_schedule_in_the_limit():
    betas = np.linspace(1e-4, 0.02, 1000)
    discrete = np.cumprod(1 - betas)
    cont = np.asarray(D.LinearSchedule().alpha_bar(np.arange(1, 1001) / 1000))
    # the continuous integral runs half a step ahead of the discrete sum: 10% at step 1, < 1% from step 100 on
    np.testing.assert_allclose(np.log(cont[99:]), np.log(discrete[99:]), rtol=0.01)


def test_bad_schedule_arguments_are_pplvi_errors():
    with pytest.raises(PPLVIError, match="beta_min"):
        D.LinearSchedule(beta_min=1.0, beta_max=0.5)
    with pytest.raises(PPLVIError, match="unknown noise schedule"):
        D.schedule("sqrt")
