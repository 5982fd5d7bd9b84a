"""The NIW meta-learner (pplvi.models.niw_meta): fast versions of its checks.

* Hierarchical linear regression: the one-time local iterate equals the exact Gaussian posterior (the quadratic
  approximation is exact), whatever the inner steps; a few steps of ELBO training raise the objective.
* NIW closed forms (E log|Sigma|, expected Gaussian KL, NIW-NIW KL) against Monte Carlo, full and diagonal.
* The cheap curvatures: the vmap-per-example empirical Fisher equals the Jacobian-based one; ProtoNet's per-image
  Fisher is the sum of squares of per-image gradient contributions that add up to the full gradient.
* ECE on known inputs; errors for bad input and missing data. (Omniglot at full size: ``make reproduce-niw-meta``.)
* The committed ``benchmarks/results/niw_meta.json``: contract keys for 1-shot and 5-shot, and the claims it makes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import pplvi
from pplvi.models import niw_meta as N
from pplvi.models.niw_meta import reproduce as R


def full_niw(dof=7.0):
    a = np.array([[1.0, 0.3, 0.0], [0.3, 0.8, -0.2], [0.0, -0.2, 0.6]])
    return N.NIW.create(np.array([0.5, -1.0, 0.2]), 2.0, 3.0 * a, dof)


def diag_niw():
    return N.NIW.create(np.array([0.5, -1.0, 0.2, 0.0]), 1.5, np.array([2.0, 0.5, 1.0, 3.0]), 6.0)


# ---------------------------------------------------------------------------------------------------------------
# the local iterate is exact for linear-Gaussian regression
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, 3])
def test_local_posterior_is_the_exact_posterior_for_linear_regression(steps):
    x, y, _ = N.sample_linreg_episodes(0, 5, 6, np.zeros(3), np.eye(3), 0.3)
    ll = N.linreg_log_likelihood(0.3)
    with jax.enable_x64(True):
        q = full_niw()
        for i in range(5):
            m, v = N.local_posterior(q, ll, (jnp.asarray(x[i]), jnp.asarray(y[i])), steps=steps, lr=0.05)
            me, ve = N.exact_linreg_posterior(q, jnp.asarray(x[i]), jnp.asarray(y[i]), 0.3)
            assert float(jnp.max(jnp.abs(m - me))) < 1e-10
            assert float(jnp.max(jnp.abs(v - ve))) < 1e-10
        # and it is not the prior: the data moved it
        assert float(jnp.max(jnp.abs(m - q.mean))) > 1e-2


def test_local_posterior_passes_no_gradient_through_the_inner_steps():
    x, y, _ = N.sample_linreg_episodes(1, 1, 6, np.zeros(3), np.eye(3), 0.3)
    ll = N.linreg_log_likelihood(0.3)
    data = (jnp.asarray(x[0]), jnp.asarray(y[0]))
    with jax.enable_x64(True):
        q = full_niw()
        # with the exact Hessian the result (hence its gradient) does not depend on the steps taken
        g0 = jax.grad(lambda q: jnp.sum(N.local_posterior(q, ll, data, steps=0)[0]))(q)
        g3 = jax.grad(lambda q: jnp.sum(N.local_posterior(q, ll, data, steps=3, lr=0.05)[0]))(q)
        for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g3)):
            np.testing.assert_allclose(a, b, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# closed forms against Monte Carlo
# ---------------------------------------------------------------------------------------------------------------
def gaussian_kl(m1, v1, m2, v2):
    d = m1.shape[-1]
    v2i = jnp.linalg.inv(v2)
    r = m2 - m1
    return 0.5 * (jnp.trace(v2i @ v1) + r @ v2i @ r - d + jnp.linalg.slogdet(v2)[1] - jnp.linalg.slogdet(v1)[1])


def within(mc, exact, k=4.5):
    mean, se = float(np.mean(mc)), float(np.std(mc) / np.sqrt(len(mc)))
    assert abs(mean - float(exact)) < k * se + 1e-9, (mean, se, float(exact))


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_niw_closed_forms_match_monte_carlo(kind):
    with jax.enable_x64(True):
        q = full_niw() if kind == "full" else diag_niw()
        d = q.dim
        mu, sigma = N.niw_sample(jax.random.key(0), q, 8000)
        m_i = q.mean + 0.3
        if kind == "full":
            v_i = 0.2 * jnp.eye(d) + 0.05
            logdet = jnp.linalg.slogdet(sigma)[1]
            kls = jax.vmap(lambda a, b: gaussian_kl(m_i, v_i, a, b))(mu, sigma)
        else:
            v_i = jnp.linspace(0.1, 0.4, d)
            logdet = jnp.sum(jnp.log(sigma), -1)
            kls = jax.vmap(lambda a, b: gaussian_kl(m_i, jnp.diag(v_i), a, jnp.diag(b)))(mu, sigma)
        within(logdet, N.expected_log_det(q))
        within(kls, N.expected_gaussian_kl(q, m_i, v_i))
        p = (N.NIW.create(q.mean * 0.5, 0.7, q.scale * 1.5, float(q.dof) + 1.0))
        ratio = jax.vmap(lambda a, b: N.niw_log_prob(q, a, b) - N.niw_log_prob(p, a, b))(mu, sigma)
        within(ratio, N.niw_kl(q, p))


def test_diagonal_niw_log_prob_matches_numpyro():
    import numpyro.distributions as dist

    with jax.enable_x64(True):
        q = diag_niw()
        mu, s2 = jnp.array([0.1, -0.4, 0.3, 0.2]), jnp.array([0.5, 0.2, 0.9, 1.3])
        ref = jnp.sum(dist.InverseGamma(q.dof / 2, q.scale / 2).log_prob(s2)
                      + dist.Normal(q.mean, jnp.sqrt(s2 / q.kappa)).log_prob(mu))
        np.testing.assert_allclose(N.niw_log_prob(q, mu, s2), ref, rtol=1e-10)


@pytest.mark.parametrize("kind", ["full", "diagonal"])
def test_niw_kl_is_zero_only_for_equal_arguments(kind):
    with jax.enable_x64(True):
        q = full_niw() if kind == "full" else diag_niw()
        assert abs(float(N.niw_kl(q, q))) < 1e-10
        changes = [dict(mean=q.mean + 0.1), dict(kappa=3.0), dict(scale=q.scale * 1.2), dict(dof=float(q.dof) + 0.5)]
        for change in changes:
            args = dict(mean=q.mean, kappa=float(q.kappa), scale=q.scale, dof=float(q.dof)) | change
            p = N.NIW.create(args["mean"], args["kappa"], args["scale"], args["dof"])
            assert float(N.niw_kl(q, p)) > 1e-6, change


# ---------------------------------------------------------------------------------------------------------------
# the objective trains
# ---------------------------------------------------------------------------------------------------------------
def test_a_few_training_steps_raise_the_elbo():
    x, y, _ = N.sample_linreg_episodes(2, 64, 8, np.array([1.0, -0.5, 0.3]), 0.3 * np.eye(3), 0.3)
    prior = N.NIW.create(np.zeros(3), 0.01, np.eye(3) * 0.5, 5.0)
    q = N.NIW.create(np.zeros(3), 1.0, np.eye(3) * 2.0, 6.0)
    objective = N.niw_elbo(N.linreg_log_likelihood(0.3), prior, 64)
    data = {"x": np.asarray(x, np.float32), "y": np.asarray(y, np.float32)}
    result = pplvi.fit(objective, q, data=data, batch_size=16, optimizer=optax.adam(5e-2), steps=120, key=0,
                       progress=False)
    h = result.history["objective"]
    assert np.all(np.isfinite(h)) and h[-20:].mean() > h[:20].mean() + 1.0
    # the global mean moves toward the true mu
    assert float(jnp.linalg.norm(result.params.mean - jnp.array([1.0, -0.5, 0.3]))) < 0.8 * np.linalg.norm([1, -.5, .3])


def test_fewshot_niw_objective_and_predictive_on_a_tiny_net():
    rng = np.random.default_rng(0)
    images, labels = rng.random((40, 28, 28)).astype(np.float32), np.repeat(np.arange(8), 5)
    sampler = N.EpisodeSampler(images, labels, way=3, shot=1, query=2)
    sx, sy, qx, qy = sampler.sample(rng, 2)
    q, prior, unravel = N.init_niw(jax.random.key(0), way=3, channels=2, blocks=1)
    objective = N.niw_fewshot_elbo(unravel, prior, 100, steps=1)
    value, grad = objective.value_and_grad(jax.random.key(1), q, sx, sy, qx, qy)
    assert np.isfinite(float(value)) and all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grad))
    assert float(jnp.abs(grad.mean).sum()) > 0
    # the ProtoNet-likelihood variant: theta = the embedding weights
    q, prior, unravel = N.init_niw(jax.random.key(0), way=None, channels=2, blocks=1)
    value, grad = N.niw_protonet_elbo(unravel, prior, 100, way=3).value_and_grad(jax.random.key(1), q, sx, sy, qx, qy)
    assert np.isfinite(float(value)) and float(jnp.abs(grad.scale_param).sum()) > 0
    probs = N.niw_predict(jax.random.key(2), q, unravel, sx[0], sy[0], qx[0], samples=3, steps=1, head="protonet",
                          way=3)
    assert probs.shape == (6, 3)
    np.testing.assert_allclose(np.asarray(probs).sum(1), 1.0, atol=1e-5)
    # rule="mean": the softmax at m_i, which is what the average of draws tends to as V_i -> 0
    m = jax.jit(lambda q: N.local_posterior(q, N.protonet_log_likelihood(unravel, 3), (sx[0], sy[0], sx[0], sy[0]),
                                            steps=1, lr=0.4, curvature=N.protonet_fisher(unravel, 3))[0])(q)
    plug = jax.jit(lambda k, q: N.niw_predict(k, q, unravel, sx[0], sy[0], qx[0], steps=1, head="protonet", way=3,
                                              rule="mean"))(jax.random.key(2), q)
    # (float32 logits of size ~1e2-1e3 -> rounding differences of ~1e-5 between the two compiled programs)
    np.testing.assert_allclose(plug, jax.nn.softmax(N.protonet_logits(unravel(m), sx[0], sy[0], qx[0], 3)),
                               atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# the cheap curvatures
# ---------------------------------------------------------------------------------------------------------------
def test_vmapped_empirical_fisher_equals_the_jacobian_one():
    x, y, _ = N.sample_linreg_episodes(3, 1, 7, np.zeros(3), np.eye(3), 0.3)
    ll = N.linreg_log_likelihood(0.3)
    with jax.enable_x64(True):
        data, theta = (jnp.asarray(x[0]), jnp.asarray(y[0])), jnp.array([0.3, -0.2, 0.5])
        by_jacobian = jnp.sum(jax.jacrev(lambda th: ll(th, data))(theta) ** 2, axis=0)
        np.testing.assert_allclose(N.empirical_fisher_diagonal(ll, theta, data), by_jacobian, rtol=1e-12)
        # and local_posterior uses it: V_i = 1 / (A_i + P) with A_i this diagonal
        q = N.NIW.create(jnp.zeros(3), 1.0, jnp.ones(3), 4.0)
        _, v = N.local_posterior(q, ll, data, curvature="fisher")
        np.testing.assert_allclose(v, 1.0 / (N.empirical_fisher_diagonal(ll, q.mean, data) + q.mean_precision()),
                                   rtol=1e-12)


def near_identical_support(seed, key, way, shot, size, spread):
    """A support set of near-identical images (``spread`` around one random image; ProtoNet's softmax is not
    saturated, so its gradients are far from zero), labels ``shot`` per class, and a flat tiny ProtoNet embedding
    with its unravel (call inside ``jax.enable_x64`` for float64)."""
    rng = np.random.default_rng(seed)
    sx = jnp.asarray(rng.random((1, size, size)) + spread * rng.normal(size=(way * shot, size, size)))
    sy = jnp.repeat(jnp.arange(way), shot)
    flat, unravel = ravel_pytree(N.init_convnet(jax.random.key(key), way=None, channels=2, blocks=1))
    return sx, sy, flat, unravel


def test_protonet_fisher_squares_per_image_contributions_that_sum_to_the_gradient():
    way, shot = 3, 2
    with jax.enable_x64(True):
        sx, sy, flat, unravel = near_identical_support(4, 3, way, shot, 28, 0.02)
        ll = N.protonet_log_likelihood(unravel, way)

        def total_with_one_image_live(theta, m):  # only image m's embedding depends on theta
            feats = jax.lax.stop_gradient(N.convnet_features(unravel(flat), sx))
            live = N.convnet_features(unravel(theta), jax.lax.dynamic_index_in_dim(sx, m, keepdims=True))[0]
            feats = feats.at[m].set(live)
            onehot = jax.nn.one_hot(sy, way)
            protos = onehot.T @ feats / onehot.sum(0)[:, None]
            return jnp.sum(jax.nn.log_softmax(-jnp.sum((feats[:, None] - protos[None]) ** 2, -1)) * onehot)

        per_image = jax.jit(jax.vmap(jax.grad(total_with_one_image_live), (None, 0)))(flat, jnp.arange(way * shot))
        full = jax.jit(jax.grad(lambda th: jnp.sum(ll(th, (sx, sy, sx, sy)))))(flat)
        np.testing.assert_allclose(per_image.sum(0), full, rtol=1e-9, atol=1e-12)
        fisher = jax.jit(N.protonet_fisher(unravel, way))(flat, (sx, sy, sx, sy))
        np.testing.assert_allclose(fisher, jnp.sum(per_image**2, 0), rtol=1e-9, atol=1e-15)
        assert float(fisher.min()) >= 0 and float(fisher.max()) > 1e-3


def dense_gauss_newton_diagonal(logits_fn, theta):
    """diag sum_n J_n^T (diag p_n - p_n p_n^T) J_n from the dense Jacobian of the logits (n, C) (the reference)."""
    def dense(theta):
        p = jax.nn.softmax(logits_fn(theta))
        jac = jax.jacfwd(logits_fn)(theta)  # (n, C, d)
        h = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
        return jnp.einsum("ncd,nce,ned->d", jac, h, jac)

    return jax.jit(dense)(theta)


def test_expected_fisher_diagonal_is_the_gauss_newton_diagonal():
    """Exact: sum_c p_c (grad log p_c)^2 equals diag J^T (diag p - p p^T) J, float64, to rounding (rtol 1e-9)."""
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(7, 3)))
        logits = lambda th, xs: jnp.tanh(xs @ th[:6].reshape(3, 2)) @ th[6:].reshape(2, 4)  # a tiny 3-2-4 net
        theta = jnp.asarray(rng.normal(size=14))
        a = jax.jit(lambda th: N.expected_fisher_diagonal(lambda t, b: jax.nn.log_softmax(logits(t, b[0])), th,
                                                          (x, jnp.zeros(7, int))))(theta)
        np.testing.assert_allclose(a, dense_gauss_newton_diagonal(lambda th: logits(th, x), theta), rtol=1e-9)
        # the same for the conv net's linear head
        sx = jnp.asarray(rng.random((4, 8, 8)))  # the conv net takes any image size; small ones keep this fast
        flat, unravel = ravel_pytree(N.init_convnet(jax.random.key(5), way=3, channels=2, blocks=1, size=8))
        a = jax.jit(N.categorical_expected_fisher(unravel))(flat, (sx, jnp.arange(4) % 3))
        ref = dense_gauss_newton_diagonal(lambda th: N.convnet_apply(unravel(th), sx), flat)
        np.testing.assert_allclose(a, ref, rtol=1e-9, atol=1e-14)
        # unlike the empirical Fisher it does not vanish where the labels are fitted: with the observed labels the
        # model's most probable classes, the empirical one is smaller in every coordinate
        fitted = jnp.argmax(N.convnet_apply(unravel(flat), sx), axis=1)
        emp = jax.jit(lambda th: N.empirical_fisher_diagonal(N.categorical_log_likelihood(unravel), th,
                                                             (sx, fitted)))(flat)
        assert float(jnp.sum(emp)) < float(jnp.sum(a))


def test_protonet_expected_fisher_is_unbiased_for_the_gauss_newton_diagonal():
    """Monte Carlo over model-drawn labels: the mean of 4000 draws of s^2 against the dense diag J^T H J of the
    support-as-query logits, every coordinate within 5 standard errors (SE from 20 batch means of 200 draws)."""
    way, shot = 3, 2
    with jax.enable_x64(True):
        sx, sy, flat, unravel = near_identical_support(6, 6, way, shot, 8, 0.05)
        ref = dense_gauss_newton_diagonal(
            lambda th: N.protonet_logits(unravel(th), sx, sy, sx, way), flat)
        curvature = N.protonet_expected_fisher(unravel, way, samples=200)
        batch = jax.jit(lambda th, u: curvature(th, (sx, sy, sx, sy), u))
        means = np.stack([np.asarray(batch(flat, jax.random.uniform(jax.random.key(i), curvature.noise_shape(6))))
                          for i in range(20)])
        mean, se = means.mean(0), means.std(0, ddof=1) / np.sqrt(20)
        assert np.all(np.abs(mean - np.asarray(ref)) < 5 * se + 1e-12), np.max(np.abs(mean - ref) / se)
        assert float(ref.max()) > 1e-3  # not a trivially zero case
        # it enters local_posterior as V_i = 1 / (A_i + P) with A_i its value at these uniforms
        q = N.NIW.create(flat, 1.0, jnp.full_like(flat, 0.01), 2.0)
        u = jax.random.uniform(jax.random.key(99), curvature.noise_shape(6))
        v = jax.jit(lambda q, u: N.local_posterior(q, N.protonet_log_likelihood(unravel, way), (sx, sy, sx, sy),
                                                   curvature=curvature, curvature_noise=u)[1])(q, u)
        np.testing.assert_allclose(v, 1.0 / (batch(flat, u) + q.mean_precision()), rtol=1e-9)
    # in the objective its label uniforms are a random choice ("curvature_noise"); in niw_predict they come from the key
    q, prior, _ = N.init_niw(jax.random.key(6), way=None, channels=2, blocks=1, size=8)
    sxe, sye = np.asarray(sx, np.float32)[None], np.asarray(sy)[None]
    elbo = N.niw_protonet_elbo(unravel, prior, 100, way=way, curvature="expected_fisher", fisher_samples=2)
    value, grad = elbo.value_and_grad(jax.random.key(1), q, sxe, sye, sxe, sye)
    assert np.isfinite(float(value)) and float(jnp.abs(grad.scale_param).sum()) > 0
    probs = jax.jit(lambda k, q: N.niw_predict(k, q, unravel, sxe[0], sye[0], sxe[0], samples=3, steps=1,
                                               head="protonet", way=way, curvature="expected_fisher",
                                               fisher_samples=2))(jax.random.key(2), q)
    np.testing.assert_allclose(np.asarray(probs).sum(1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# calibration, errors, data
# ---------------------------------------------------------------------------------------------------------------
def test_expected_calibration_error_on_known_inputs():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    # bin 0.9: accuracy 1/2 vs confidence 0.9; bin 0.6: accuracy 1 vs 0.6 -> 0.5 * 0.4 + 0.5 * 0.4
    assert N.expected_calibration_error(probs, np.array([0, 1, 0, 0]), bins=10) == pytest.approx(0.4)
    perfect = np.array([[1.0, 0.0]] * 3)
    assert N.expected_calibration_error(perfect, np.zeros(3, int)) == 0.0
    assert N.expected_calibration_error(perfect, np.ones(3, int)) == pytest.approx(1.0)


def test_bad_input_raises_a_pplvi_error_naming_it():
    with pytest.raises(pplvi.PPLVIError, match="scale must have shape"):
        N.NIW.create(np.zeros(3), 1.0, np.eye(2), 5.0)
    with pytest.raises(pplvi.PPLVIError, match="degrees of freedom"):
        N.NIW.create(np.zeros(3), 1.0, np.eye(3), 1.5)
    with pytest.raises(pplvi.PPLVIError, match="curvature"):
        N.local_posterior(diag_niw(), N.linreg_log_likelihood(1.0), (jnp.ones((2, 4)), jnp.ones(2)))
    with pytest.raises(pplvi.PPLVIError, match="probs"):
        N.expected_calibration_error(np.ones((3, 2)) / 2, np.zeros(4))
    with pytest.raises(pplvi.PPLVIError, match="num_episodes"):
        N.niw_elbo(N.linreg_log_likelihood(1.0), full_niw(), 0)
    with pytest.raises(pplvi.PPLVIError, match="head"):
        q, _, unravel = N.init_niw(jax.random.key(0), way=3, channels=2, blocks=1)
        N.niw_predict(jax.random.key(0), q, unravel, jnp.zeros((3, 28, 28)), jnp.arange(3), jnp.zeros((3, 28, 28)),
                      head="softmax")
    with pytest.raises(pplvi.PPLVIError, match="EpisodeSampler"):
        N.EpisodeSampler(np.zeros((4, 28, 28)), np.arange(4), way=5)
    with pytest.raises(pplvi.PPLVIError, match="curvature callable must return"):
        N.local_posterior(diag_niw(), N.linreg_log_likelihood(1.0), (jnp.ones((2, 4)), jnp.ones(2)),
                          curvature=lambda theta, data: jnp.ones(3))
    with pytest.raises(pplvi.PPLVIError, match="curvature_noise"):
        _, unravel = ravel_pytree(N.init_convnet(jax.random.key(0), way=None, channels=2, blocks=1))
        q0 = N.init_niw(jax.random.key(0), way=None, channels=2, blocks=1)[0]
        N.local_posterior(q0, N.protonet_log_likelihood(unravel, 3), (jnp.zeros((3, 28, 28)), jnp.arange(3)) * 2,
                          curvature=N.protonet_expected_fisher(unravel, 3))
    with pytest.raises(pplvi.PPLVIError, match="rule"):
        q, _, unravel = N.init_niw(jax.random.key(0), way=3, channels=2, blocks=1)
        N.niw_predict(jax.random.key(0), q, unravel, jnp.zeros((3, 28, 28)), jnp.arange(3), jnp.zeros((3, 28, 28)),
                      rule="median")
    with pytest.raises(pplvi.PPLVIError, match="samples must be a positive integer"):
        N.protonet_expected_fisher(None, 3, samples=0)
    with pytest.raises(pplvi.PPLVIError, match="samples"):
        q, _, unravel = N.init_niw(jax.random.key(0), way=3, channels=2, blocks=1)
        N.niw_predict(jax.random.key(0), q, unravel, jnp.zeros((3, 28, 28)), jnp.arange(3), jnp.zeros((3, 28, 28)),
                      samples=0)


def test_saved_parameters_score_as_the_run_that_saved_them(tmp_path):
    """reproduce --save-params DIR, then evaluate --params DIR --test-rotations: the same rotated test episodes,
    the same predictions, the same scores for every method and NIW prediction rule (tiny net, two training steps;
    MAML's files go the same way); the rotated protocol's episodes are not the plain ones."""
    net = {"channels": 2, "blocks": 2}
    res = R.omniglot_check(1, steps=2, episodes_per_step=2, test_episodes=3, samples=2, test_rotations=True,
                           methods=("niw", "protonet"), save_dir=tmp_path, say=lambda *_: None, **net)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5w1s_config.json", "5w1s_niw.npz", "5w1s_protonet.npz"]
    again = R.evaluate(tmp_path, 1, test_episodes=3, samples=2, rotations=True, say=lambda *_: None)
    for key, value in again.items():
        if not key.endswith("_seconds"):
            assert value == pytest.approx(res["rotated_test"][key], rel=1e-5, abs=1e-7), key
    assert {"niw_acc", "niw_linearized_ece", "niw_plugin_nll", "protonet_ece", "niw_minus_protonet_ece"} <= set(again)
    plain = R.omniglot_test_episodes(1, 3)
    rotated = R.omniglot_test_episodes(1, 3, rotations=True)
    assert not np.array_equal(plain[0], rotated[0])
    with pytest.raises(pplvi.DataError, match="5w5s_config.json"):
        R.evaluate(tmp_path, 5)


def test_missing_data_raises_data_error_naming_the_path(tmp_path, monkeypatch):
    from pplvi.models.niw_meta.reproduce import omniglot_splits

    monkeypatch.setenv("PPLVI_DATA", str(tmp_path))
    with pytest.raises(pplvi.DataError, match="omniglot/omniglot_background_small1.npz") as e:
        omniglot_splits()
    assert str(tmp_path) in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# the committed results
# ---------------------------------------------------------------------------------------------------------------
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "niw_meta.json"
CONTRACT = ("niw_acc", "niw_ece", "protonet_acc", "protonet_ece", "maml_acc", "maml_ece")


def test_committed_results_hold_the_contract_keys_and_their_claims():
    res = json.loads(RESULTS.read_text())
    assert res["linreg_max_abs_err"] < 1e-10  # the local iterate is the exact posterior (float64)
    for setting in ("omniglot_5w1s", "omniglot_5w5s"):
        r = res[setting]
        for k in CONTRACT:
            assert isinstance(r[k], float) and 0.0 <= r[k] <= 1.0, (setting, k, r[k])
            assert r[k + "_se"] > 0, (setting, k)
        # better than chance (0.2) for the two metric learners, by many standard errors
        for m in ("niw", "protonet"):
            assert r[f"{m}_acc"] - 0.2 > 5 * r[f"{m}_acc_se"], (setting, m)
        # every run scored both methods, so the mean difference is the difference of the means
        assert r["niw_minus_protonet_ece"] == pytest.approx(r["niw_ece"] - r["protonet_ece"], abs=1e-12)
        assert r["niw_minus_protonet_acc"] == pytest.approx(r["niw_acc"] - r["protonet_acc"], abs=1e-9)


def _configuration(res, setting, channels, k):
    (conf,) = [c for c in res["configurations"] if (c["setting"], c["channels"], c["training_predictive_samples"])
               == (setting, channels, k)]
    return conf


def test_committed_results_state_what_docs_claim_about_niw_versus_protonet():
    """The findings of docs/models/niw_meta.md, from the standard errors between independent training runs (each
    scored on its own 400 test episodes); the replicate runs are those the merge command kept."""
    res = json.loads(RESULTS.read_text())
    z = lambda r, metric: r[f"niw_minus_protonet_{metric}"] / r[f"niw_minus_protonet_{metric}_se"]
    by_run = lambda r, metric: np.array(r[f"niw_minus_protonet_{metric}_by_run"])
    # the main configuration (the results contract): the standard 64-channel Conv-4, K = 32, three runs per setting
    one, five = res["omniglot_5w1s"], res["omniglot_5w5s"]
    assert (one["channels"], one["training_predictive_samples"], one["runs"]) == (64, 32, 3)
    assert (five["channels"], five["training_predictive_samples"], five["runs"]) == (64, 32, 3)
    for r in (one, five):
        # more accurate with a better NLL in every run, significantly between runs
        assert (by_run(r, "acc") > 0).all() and (by_run(r, "nll") < 0).all()
        assert z(r, "acc") > 3 and z(r, "nll") < -2.5
        # ECE: the lower mean in both settings and in 2 of 3 runs each, by less than one between-run standard error
        assert r["niw_ece"] < r["protonet_ece"] and r["niw_ece_below_protonet"] == 2
        assert -1 < z(r, "ece") < 0
    # both calibrated at 5 shots (ECE below 0.01), both overconfident at 1 shot by 1-3 points
    assert max(five["niw_ece"], five["protonet_ece"]) < 0.01
    for m in ("niw", "protonet"):
        assert 0.01 < one[f"{m}_mean_confidence"] - one[f"{m}_acc"] < 0.03
    # the 16-channel net (K = 32): at 5 shots the NIW ECE is higher in all 6 runs (underconfident), on the rotated
    # protocol in all 4 runs that scored it; at 1 shot lower in 3 of 6 runs, by 0.023 each, and level in the others
    small_one, small_five = _configuration(res, "omniglot_5w1s", 16, 32), _configuration(res, "omniglot_5w5s", 16, 32)
    assert small_five["runs"] == 6 and (by_run(small_five, "ece") > 0).all() and z(small_five, "ece") > 3
    assert small_five["niw_acc"] - small_five["niw_mean_confidence"] > 0.02
    assert small_five["rotated_test"]["runs"] == 4 and (by_run(small_five["rotated_test"], "ece") > 0).all()
    gaps = by_run(small_one, "ece")
    assert small_one["runs"] == 6 and (gaps < -0.02).sum() == 3 and (np.abs(gaps[gaps > -0.02]) < 0.005).all()
    # the other rules from the same q_i (16 channels): the mean m_i is calibrated at 5 shots, overconfident at 1
    assert small_five["niw_plugin_ece"] < 0.01 and small_one["niw_plugin_mean_confidence"] - small_one[
        "niw_plugin_acc"] > 0.03
    # the paper's ELBO (K = 1, 16 channels): the higher ECE in 5 of 6 runs; K = 32 cuts the 5-shot gap to at most
    # half of K = 1's
    k1 = [_configuration(res, s, 16, 1) for s in ("omniglot_5w1s", "omniglot_5w5s")]
    assert sum((by_run(r, "ece") > 0).sum() for r in k1) == 5 and sum(r["runs"] for r in k1) == 6
    assert small_five["niw_minus_protonet_ece"] < 0.5 * k1[1]["niw_minus_protonet_ece"]
    # not worse in accuracy in any run of any configuration
    assert len(res["replicates"]) == 25 and all(r["niw_acc"] >= r["protonet_acc"] for r in res["replicates"])
    # the NIW's log-scale parameters moved well inside Adam's bound (steps x 0.1) from their start (lambda = 1,
    # nu = 2; lambda = exp(log_kappa), nu = softplus(dof_param) for a diagonal NIW)
    budget = res["omniglot_budget"]
    assert budget["niw_precision_lr"] == 0.1 and budget["channels"] == 64
    softplus_inverse = lambda x: x + np.log(-np.expm1(-x))
    for r in (one, five):
        assert np.log(r["niw_kappa"]) < 0.5 * budget["steps"] * 0.1
        assert softplus_inverse(r["niw_dof"]) - softplus_inverse(2.0) < 0.5 * budget["steps"] * 0.1
    # MAML (same budget) is the least accurate in both settings
    for r in (one, five):
        assert r["maml_acc"] + 5 * r["maml_acc_se"] < min(r["niw_acc"], r["protonet_acc"])
    # the Monte Carlo error of the predictive's top-class probability is below 2 points
    assert five["niw_predictive_mc_se_top_prob"] < 0.02


def test_partial_runs_hold_the_scores_their_logs_printed():
    """Two 64-channel 5-shot runs were stopped while scoring MAML: their JSONs hold the NIW and ProtoNet scores
    their (committed) logs printed, and their saved settings are those of the main configuration."""
    folder = RESULTS.parent / "niw_meta_runs"
    for seed in (1, 2):
        run = json.loads((folder / f"c64_k32_s5_seed{seed}.json").read_text())
        assert "partial" in run and R.run_identity(run) == (64, 32, seed)
        config = json.loads((RESULTS.parent / "niw_meta_params" / f"c64_k32_s5_seed{seed}" / "5w5s_config.json")
                            .read_text())
        assert (config["channels"], config["predictive_samples"], config["seed"]) == (64, 32, seed)
        printed = {}
        for line in (folder / f"c64_k32_s5_seed{seed}.log").read_text().splitlines():
            words = line.split()
            if len(words) == 15 and words[1] == "acc":
                printed[words[0]] = [float(words[i]) for i in (2, 4, 6, 8, 10, 12, 14)]
        scores = run["omniglot_5w5s"]
        assert set(printed) == {"niw", "protonet"}
        for m, (acc, acc_se, ece, ece_se, nll, nll_se, conf) in printed.items():
            assert [scores[f"{m}_{k}"] for k in ("acc", "acc_se", "ece", "ece_se", "nll", "nll_se",
                                                 "mean_confidence")] == [acc, acc_se, ece, ece_se, nll, nll_se, conf]


def test_committed_protocol_run_states_what_docs_claim():
    """docs/models/niw_meta.md, "The test protocol moves the calibration comparison": ProtoNet (GPU budget, CPU run)
    on the plain and the rotated test classes. Rotated episodes are easier in both settings; 1-shot overconfidence
    doubles; 5-shot ECE halves; the saved parameters load and score."""
    folder = RESULTS.parent / "niw_meta_protocols"
    res = json.loads((folder / "protonet_cpu.json").read_text())
    assert res["omniglot_budget"]["steps"] == 1000 and res["omniglot_budget"]["methods"] == ["protonet"]
    z = lambda a, b, m: (a[f"protonet_{m}"] - b[f"protonet_{m}"]) / np.hypot(a[f"protonet_{m}_se"],
                                                                             b[f"protonet_{m}_se"])
    over = lambda r: r["protonet_mean_confidence"] - r["protonet_acc"]
    one, five = res["omniglot_5w1s"], res["omniglot_5w5s"]
    for plain in (one, five):
        assert z(plain["rotated_test"], plain, "acc") > 4
    assert 0 < over(one) < 0.015 and over(one["rotated_test"]) > 1.8 * over(one) and z(one["rotated_test"], one,
                                                                                        "ece") > 2
    assert over(five) < -0.02 and z(five["rotated_test"], five, "ece") < -5
    for r in (one, five):
        assert 0.010 <= abs(r["rotated_test"]["protonet_ece"] - r["protonet_ece"]) <= 0.016
    again = R.evaluate(folder / "protonet_cpu_params", 5, test_episodes=8, rotations=True, say=lambda *_: None)
    assert set(k.split("_")[0] for k in again) == {"protonet"} and again["protonet_acc"] > 0.7


def test_committed_cpu_budget_protocol_run_states_what_docs_claim():
    """docs/models/niw_meta.md, "Both protocols at the CPU budget": K = 32 NIW and ProtoNet at 5 shots, plain and
    rotated test classes. The NIW posterior predictive is more accurate and underconfident, with the higher ECE on
    both protocols, the gap larger (as a point estimate) on the rotated one; its mean m_i is more accurate than
    ProtoNet with a lower ECE on both."""
    res = json.loads((RESULTS.parent / "niw_meta_protocols" / "niw_k32_cpu_budget.json").read_text())
    assert res["omniglot_budget"]["niw_training_predictive_samples"] == 32 and res["omniglot_budget"]["steps"] == 150
    plain = res["omniglot_5w5s"]
    rotated = plain["rotated_test"]
    z = lambda r, m: r[f"niw_minus_protonet_{m}"] / r[f"niw_minus_protonet_{m}_se"]
    for r in (plain, rotated):
        assert z(r, "acc") > 5 and z(r, "ece") > 3 and r["niw_acc"] - r["niw_mean_confidence"] > 0.05
        assert r["protonet_acc"] > r["protonet_mean_confidence"]  # ProtoNet underconfident too
        assert r["niw_plugin_acc"] - r["protonet_acc"] > 3 * np.hypot(r["niw_plugin_acc_se"], r["protonet_acc_se"])
        assert r["protonet_ece"] - r["niw_plugin_ece"] > 3 * np.hypot(r["niw_plugin_ece_se"], r["protonet_ece_se"])
    assert rotated["niw_minus_protonet_ece"] > plain["niw_minus_protonet_ece"]


def test_merge_keeps_the_main_configuration_and_lists_the_rest(tmp_path):
    """merge: linear regression from the run with the most steps, the mean over the runs of the main configuration
    (channels, K) per setting, every configuration's means and every run as a replicate; the committed file is what
    merge makes of the committed runs."""
    res = json.loads(RESULTS.read_text())
    runs = [RESULTS.parent / "niw_meta_runs" / Path(p).name for p in res["command"].split()[8:]]
    assert len(runs) == 25
    merged = R.merge(runs, tmp_path / "m.json", predictive_samples=32, channels=64, say=lambda *_: None)
    for key in ("linreg_max_abs_err", "omniglot_5w1s", "omniglot_5w5s", "configurations", "replicates", "rows"):
        assert merged[key] == res[key], key
    with pytest.raises(pplvi.PPLVIError, match="predictive_samples=7"):
        R.merge(runs, tmp_path / "m.json", predictive_samples=7, channels=64, say=lambda *_: None)


def test_predictive_training_term_tends_to_the_log_posterior_predictive():
    """``predictive_samples=K``: each query is scored by log (1/K) sum_k p(y | theta_k). Its expectation rises with
    K (Jensen) and tends to log E_{q_i} p(y | theta), which niw_predict estimates independently (its average of
    softmaxes over many draws); the rest of the objective (the KL terms) is unchanged."""
    rng = np.random.default_rng(0)
    images, labels = rng.random((40, 28, 28)).astype(np.float32), np.repeat(np.arange(8), 5)
    sx, sy, qx, qy = N.EpisodeSampler(images, labels, way=3, shot=2, query=2).sample(rng, 2)
    q, prior, unravel = N.init_niw(jax.random.key(0), way=None, channels=4, blocks=4)
    # q_i without inner steps or curvature (the term is under test, not the local iterate), and broader, so that
    # draws disagree and the K-draw average differs from single draws (4 blocks: 4 features, logits of order 1)
    q = eqx.tree_at(lambda n: n.scale_param, q, q.scale_param + 2.0)
    keys = jax.random.split(jax.random.key(1), 50)

    def values(k):
        objective = N.niw_protonet_elbo(unravel, prior, 100, way=3, steps=0, curvature=0.0, predictive_samples=k,
                                        draw_batch=None)
        return np.asarray(jax.jit(jax.vmap(lambda key: objective.estimate(key, q, sx, sy, qx, qy)))(keys))

    v1, v32 = values(1), values(32)
    se = lambda a, b: float(np.std(a - b, ddof=1) / np.sqrt(len(a)))
    assert v32.mean() - v1.mean() > 5 * se(v32, v1)
    # the limit: sum over queries of log of niw_predict's probability of the label, minus the same KL terms
    ll = N.protonet_log_likelihood(unravel, 3)
    @jax.jit
    def episode_term(key, a, b, c, d):
        probs = N.niw_predict(key, q, unravel, a, b, c, samples=1500, steps=0, curvature=0.0, head="protonet", way=3)
        m, v = N.local_posterior(q, ll, (a, b, a, b), steps=0, curvature=0.0)
        return jnp.sum(jnp.log(probs[jnp.arange(len(d)), d])) - N.expected_gaussian_kl(q, m, v)

    limit = 0.0
    for i in range(2):
        limit += float(episode_term(jax.random.key(i), sx[i], sy[i], qx[i], qy[i])) / 2
    limit -= float(N.niw_kl(q, prior)) / 100
    gap1, gap32 = limit - v1.mean(), limit - v32.mean()
    # measured: 0.74 nats for one draw; 0.098 at K = 8, 0.028 at K = 64 (the Monte Carlo bias is O(1/K)). At K = 32
    # the term is within 0.1 nats of the limit (v32's Monte Carlo error is ~0.01, the limit's from 1500 draws ~0.015)
    assert abs(gap32) < 0.1 and gap1 > 5 * abs(gap32), (gap1, gap32)


def test_draws_looped_or_vmapped_give_the_same_numbers():
    """map_draws: all draws at once (one vmap, the accelerator default) and one at a time (the CPU default) compute
    the same K-draw training term and gradient, draw for draw; chunks of 3 give the same predictives (float32
    rounding apart: the sums run in another order)."""
    rng = np.random.default_rng(0)
    images, labels = rng.random((40, 28, 28)).astype(np.float32), np.repeat(np.arange(8), 5)
    sx, sy, qx, qy = N.EpisodeSampler(images, labels, way=3, shot=2, query=2).sample(rng, 2)
    q, prior, unravel = N.init_niw(jax.random.key(0), way=None, channels=2, blocks=2)

    def same(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))

    terms = {}
    for batch in (None, 1):
        objective = N.niw_protonet_elbo(unravel, prior, 100, way=3, steps=0, curvature=0.0, predictive_samples=8,
                                        draw_batch=batch)
        value, grad = objective.value_and_grad(jax.random.key(1), q, sx, sy, qx, qy)
        terms[batch] = (value, ravel_pytree(grad)[0])
    same(terms[1][0], terms[None][0])
    same(terms[1][1], terms[None][1])

    @functools.partial(jax.jit, static_argnames=("rule", "batch"))
    def predictive(rule, batch):
        return N.niw_predict(jax.random.key(2), q, unravel, sx[0], sy[0], qx[0], samples=8, steps=0, curvature=0.0,
                             head="protonet", way=3, rule=rule, draw_batch=batch)

    for rule in ("average", "linearized"):
        for batch in (1, 3):
            same(predictive(rule, batch), predictive(rule, None))
    with pytest.raises(pplvi.PPLVIError, match="draw_batch"):
        N.map_draws(jnp.sin, jnp.ones((4, 2)), 0)


def test_linearized_predictive_equals_the_average_for_a_linear_network():
    """posterior_predictive: for logits linear in the weights the linearized network is the network, so
    "linearized" and "average" agree draw for draw (same key); for a nonlinear one they differ; "mean" is the
    softmax at m."""
    a = jax.random.normal(jax.random.key(0), (6, 3, 5))  # 6 queries, 3 classes, 5 weights
    m, v = jax.random.normal(jax.random.key(1), (5,)), jnp.full((5,), 0.3)
    linear = lambda th: a @ th
    key = jax.random.key(2)
    avg = N.posterior_predictive(key, linear, m, v, 64, "average")
    lin = N.posterior_predictive(key, linear, m, v, 64, "linearized")
    np.testing.assert_allclose(lin, avg, atol=1e-6)
    np.testing.assert_allclose(N.posterior_predictive(key, linear, m, v, 64, "mean"), jax.nn.softmax(a @ m),
                               atol=1e-6)
    with pytest.raises(pplvi.PPLVIError, match="rule must be one of"):
        N.posterior_predictive(key, linear, m, v, 64, "median")
    with pytest.raises(pplvi.PPLVIError, match="samples must be a positive integer"):
        N.posterior_predictive(key, linear, m, v, 0)
    cubic = lambda th: a @ th**3
    assert float(jnp.abs(N.posterior_predictive(key, cubic, m, v, 64, "linearized")
                         - N.posterior_predictive(key, cubic, m, v, 64, "average")).max()) > 1e-2


def test_committed_parameters_are_those_of_their_runs():
    """Every kept parameter set (benchmarks/results/niw_meta_params/<run>) loads into its network and is the one its
    run scored: the NIW's median prior precision, degrees of freedom and lambda equal the run's recorded values."""
    params = RESULTS.parent / "niw_meta_params"
    folders = sorted(params.iterdir())
    assert len(folders) == 14
    for folder in folders:
        (config_path,) = folder.glob("5w*s_config.json")
        config = json.loads(config_path.read_text())
        like, _, _ = R.omniglot_models(channels=config["channels"], blocks=config["blocks"], seed=config["seed"])
        shot = config["shot"]
        q = pplvi.train.load_tree(folder / f"5w{shot}s_niw.npz", like["niw"])
        run = json.loads((RESULTS.parent / "niw_meta_runs" / f"{folder.name}.json").read_text())
        assert R.run_identity(run) == (config["channels"], config["predictive_samples"], config["seed"])
        scored = run[f"omniglot_5w{shot}s"]
        if "niw_prior_precision_median" in scored:  # the runs stopped early printed scores only
            assert float(jnp.median(q.mean_precision())) == pytest.approx(scored["niw_prior_precision_median"],
                                                                          rel=1e-6)
            assert float(q.dof) == pytest.approx(scored["niw_dof"], rel=1e-6)
            assert float(q.kappa) == pytest.approx(scored["niw_kappa"], rel=1e-6)


def test_run_mean_averages_runs_with_standard_errors_between_them():
    """run_mean: the mean over runs, the standard error s/sqrt(n) between runs (n >= 2) or the run's own (n = 1),
    per-run NIW - ProtoNet differences, the count of runs with the lower NIW ECE, and the rotated protocol over
    the runs that scored it; a configuration without ProtoNet has no differences."""
    run = lambda niw_ece, proto_ece, **extra: {"niw_acc": 0.9, "niw_acc_se": 0.01, "niw_ece": niw_ece,
                                               "niw_ece_se": 0.002, "niw_mean_confidence": 0.9,
                                               "protonet_acc": 0.8, "protonet_acc_se": 0.01, "protonet_ece": proto_ece,
                                               "protonet_ece_se": 0.003, "protonet_mean_confidence": 0.8,
                                               "niw_nll": 0.3, "niw_nll_se": 0.01, "protonet_nll": 0.4,
                                               "protonet_nll_se": 0.01, **{f"niw_minus_protonet_{m}_se": 0.004
                                                                           for m in ("acc", "ece", "nll")}, **extra}
    runs = [run(0.01, 0.02, maml_acc=0.5, maml_acc_se=0.04), run(0.03, 0.02),
            run(0.02, 0.05, rotated_test=run(0.1, 0.2))]
    out = R.run_mean(runs)
    assert out["runs"] == 3 and out["niw_ece"] == pytest.approx(0.02)
    assert out["niw_ece_se"] == pytest.approx(np.std([0.01, 0.03, 0.02], ddof=1) / np.sqrt(3))
    assert out["niw_minus_protonet_ece_by_run"] == pytest.approx([-0.01, 0.01, -0.03])
    assert out["niw_minus_protonet_ece_se"] == pytest.approx(np.std([-0.01, 0.01, -0.03], ddof=1) / np.sqrt(3))
    assert out["niw_ece_below_protonet"] == 2
    assert (out["maml_runs"], out["maml_acc"], out["maml_acc_se"]) == (1, 0.5, 0.04)  # one run: its own error
    rotated = out["rotated_test"]  # one run: its own (paired) standard errors
    assert rotated["runs"] == 1 and rotated["niw_ece"] == pytest.approx(0.1)
    assert (rotated["niw_ece_se"], rotated["niw_minus_protonet_ece_se"]) == (0.002, 0.004)
    alone = R.run_mean([{k: v for k, v in r.items() if k.startswith("niw")} for r in runs])
    assert "niw_minus_protonet_ece" not in alone and "niw_ece_below_protonet" not in alone
