"""Align-Then-stEer at small scale (pplvi.models.ate): the coverage criterion on constructed samples, the guided
objective reducing to flow matching at zero guidance, the reverse-KL alignment recovering a known affine map into
the pretraining modes, and the steering reward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pplvi
from pplvi.models import ate as A
from pplvi.models.kinetic_paths import GaussianPath, VelocityField, flow_matching


def test_coverage_counts_inside_and_per_mode_shares():
    centres = A.mode_centres(3, 1.0)
    # 40 at mode 0, 30 at mode 1, 10 at mode 2, 20 far away
    samples = jnp.concatenate([jnp.repeat(centres[:1], 40, 0), jnp.repeat(centres[1:2], 30, 0),
                               jnp.repeat(centres[2:], 10, 0), jnp.full((20, 2), 5.0)])
    c = A.coverage(samples, centres, radius=0.1)
    assert c["inside"] == pytest.approx(0.8)
    assert c["min_mode_share"] == pytest.approx(0.3)  # 10 % of samples x 3 modes
    assert not c["covered"]  # 0.3 < 1/3
    assert A.coverage(samples[:80], centres, radius=0.1, min_share=0.3)["covered"]


def test_sample_actions_checks_counts():
    with pytest.raises(pplvi.DataError, match="counts"):
        A.sample_actions(jax.random.key(0), A.mode_centres(3), [1, 2], 0.1)


def test_zero_guidance_is_plain_flow_matching():
    velocity = VelocityField(2, 16, key=jax.random.key(0))
    demos = A.sample_actions(jax.random.key(1), A.mode_centres(3), [2, 2, 2], 0.05)
    path = GaussianPath.cond_ot()
    plain = A.guided_finetune_objective(path, lambda v, x0: jnp.zeros(x0.shape[0]), 0.0)
    key = jax.random.key(2)
    assert float(plain.estimate(key, velocity, demos)) == float(flow_matching(path).estimate(key, velocity, demos))


@pytest.fixture(scope="module")
def pretrained():
    prior = A.latent_prior(4, radius=2.0, std=0.3)
    pre = A.sample_actions(jax.random.key(3), A.mode_centres(4, 1.0), [200] * 4, 0.05)
    vae = pplvi.fit(A.pretraining_elbo(prior, 0.05), A.LatentVAE(32, key=jax.random.key(0)),
                    optimizer=optax.adam(3e-3), steps=500, key=1, data=pre, batch_size=200, progress=False).params
    return prior, pre, vae


def test_reverse_kl_alignment_maps_target_modes_onto_pretraining_modes(pretrained):
    prior, pre, vae = pretrained
    target = A.mode_centres(4, 0.5, rotation=0.3, offset=(1.0, -1.0))
    demos = A.sample_actions(jax.random.key(4), target, [3, 2, 2, 1], 0.02)
    adapter = A.fit_adapter(vae, prior, demos, pre, steps=300, restarts=2)
    mapped = adapter(target)
    error = jnp.min(jnp.linalg.norm(mapped[:, None] - A.mode_centres(4, 1.0)[None], axis=-1), 1)
    assert float(jnp.max(error)) < 0.25
    # the four target modes land on four different pretraining modes
    nearest = jnp.argmin(jnp.linalg.norm(mapped[:, None] - A.mode_centres(4, 1.0)[None], axis=-1), 1)
    assert len(set(np.asarray(nearest).tolist())) == 4
    # the steering reward: exactly 0 for a policy read through the identity adapter against itself, and negative
    # for the same policy read through the fitted adapter (its actions are not the target domain's)
    policy = VelocityField(2, 16, key=jax.random.key(6))
    x0 = jax.random.normal(jax.random.key(5), (128, 2))
    identity = A.AffineAdapter(jnp.eye(2), jnp.zeros(2), jnp.zeros(()))
    assert float(jnp.max(jnp.abs(A.latent_guidance(vae, identity, policy, latent_std=0.3)(policy, x0)))) == 0.0
    assert float(jnp.mean(A.latent_guidance(vae, adapter, policy, latent_std=0.3)(policy, x0))) < -1.0
