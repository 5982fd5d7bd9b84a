r"""Few-shot classification: the NIW meta-learner on a small conv net, and the ProtoNet and MAML baselines.

* Network (:func:`init_convnet`, :func:`convnet_apply`): ``blocks`` x (3x3 conv, parameter-free instance
  normalization, ReLU, 2x2 max-pool) on 28x28 images, then a linear ``way``-class head (NIW, MAML) or the pooled
  features (ProtoNet). The NIW model's :math:`\theta` is the flat vector of all its weights (``jax.flatten_util``).
* NIW (:func:`niw_fewshot_elbo` with the linear head, :func:`niw_protonet_elbo` with ProtoNet's likelihood,
  :func:`niw_predict`): the ELBO of :mod:`~pplvi.models.niw_meta.objective` with a
  diagonal NIW, a few inner steps and a diagonal empirical-Fisher curvature (per example for the linear head's
  categorical likelihood, per image for ProtoNet's, :func:`protonet_fisher`), or the expected (true) Fisher
  (``curvature="expected_fisher"``: :func:`categorical_expected_fisher`, :func:`protonet_expected_fisher`);
  prediction by the posterior predictive :math:`\frac1S\sum_s \mathrm{softmax}\,f(x; \theta_s)`,
  :math:`\theta_s \sim q_i` fitted to the support set (``rule="mean"``: the softmax at :math:`m_i`).
* ProtoNet (Snell et al. 2017, :func:`protonet_objective`, :func:`protonet_predict`): logits are minus squared
  distances to class means of the embedded support set.
* MAML (Finn et al. 2017, :func:`maml_objective`, :func:`maml_predict`): ``steps`` inner SGD steps on the support
  cross-entropy from the shared initialization, second order (backpropagation through the inner loop).
* :func:`expected_calibration_error` (Guo et al. 2017) and :class:`EpisodeSampler` (N-way K-shot episodes).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree

import pplvi
from pplvi.models.niw_meta.local import expected_fisher_diagonal, local_posterior
from pplvi.models.niw_meta.niw import NIW, expected_gaussian_kl, niw_kl
from pplvi.models.niw_meta.objective import niw_elbo, sample_theta
from pplvi.objectives.terms import stop_gradient


# ---------------------------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------------------------
def init_convnet(key, *, way: int | None = 5, channels: int = 32, blocks: int = 4, size: int = 28) -> dict:
    """He-initialized weights ``{"convs": [(w, b), ...], "head": (w, b) or None}`` (``way=None``: no head)."""
    keys = jax.random.split(key, blocks + 1)
    convs, c_in, s = [], 1, size
    for i in range(blocks):
        w = jax.random.normal(keys[i], (channels, c_in, 3, 3)) * math.sqrt(2.0 / (9 * c_in))
        convs.append((w, jnp.zeros((channels,))))
        c_in, s = channels, s // 2
    feat = channels * s * s
    head = None if way is None else (jax.random.normal(keys[-1], (feat, way)) / math.sqrt(feat), jnp.zeros((way,)))
    return {"convs": convs, "head": head}


def convnet_features(params: dict, x):
    """``x`` (n, 28, 28) -> features (n, F)."""
    h = x[:, None]
    for w, b in params["convs"]:
        h = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME") + b[None, :, None, None]
        mu = jnp.mean(h, axis=(2, 3), keepdims=True)
        h = (h - mu) / jnp.sqrt(jnp.var(h, axis=(2, 3), keepdims=True) + 1e-5)
        h = jax.nn.relu(h)
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    return h.reshape(h.shape[0], -1)


def convnet_apply(params: dict, x):
    """Logits (n, way)."""
    w, b = params["head"]
    return convnet_features(params, x) @ w + b


def categorical_log_likelihood(unravel):
    """Per-example :math:`\\log p(y_n \\mid x_n, \\theta)` for the flat weights ``theta`` and data ``(x, y)``."""
    def log_likelihood(theta, data):
        x, y = data
        logp = jax.nn.log_softmax(convnet_apply(unravel(theta), x))
        return jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]

    return log_likelihood


def categorical_expected_fisher(unravel):
    r"""The exact diagonal expected Fisher :math:`\sum_n\sum_c p_{nc}(\nabla\log p_{nc})^2` of the linear head's
    categorical likelihood (:func:`~pplvi.models.niw_meta.expected_fisher_diagonal`), a curvature callable for data
    ``(x, y)`` (the labels are not used: the expectation is over the model's own labels)."""
    log_probs = lambda theta, data: jax.nn.log_softmax(convnet_apply(unravel(theta), data[0]))
    return lambda theta, data: expected_fisher_diagonal(log_probs, theta, data)


# ---------------------------------------------------------------------------------------------------------------
# NIW
# ---------------------------------------------------------------------------------------------------------------
def init_niw(key, *, way: int | None = 5, prior_std: float = 0.03, dof: float = 2.0, **net):
    """``(q, prior, unravel)`` (``way=None``: no head, for :func:`niw_protonet_elbo`): the diagonal NIW posterior
    centred at a fresh network (mean precision
    :math:`\\nu/v = 1/\\text{prior\\_std}^2`), a weak hyperprior (zero mean, :math:`\\lambda' = 10^{-3}`, same
    scale and dof) and the flat-vector -> weights map."""
    flat, unravel = ravel_pytree(init_convnet(key, way=way, **net))
    v = jnp.full_like(flat, dof * prior_std**2)
    q = NIW.create(flat, 1.0, v, dof)
    prior = NIW.create(jnp.zeros_like(flat), 1e-3, v, dof)
    return q, prior, unravel


def niw_fewshot_elbo(unravel, prior: NIW, num_episodes: int, *, steps: int = 2, lr: float = 0.4,
                     curvature="fisher") -> pplvi.Objective:
    """The NIW ELBO for batches of episodes ``(q, sx (E, n_s, 28, 28), sy (E, n_s), qx, qy)``. ``curvature``:
    ``"fisher"`` (default, the empirical one), ``"expected_fisher"`` (:func:`categorical_expected_fisher`) or
    anything :func:`~pplvi.models.niw_meta.local_posterior` takes."""
    curvature = categorical_expected_fisher(unravel) if curvature == "expected_fisher" else curvature
    inner = niw_elbo(categorical_log_likelihood(unravel), prior, num_episodes, steps=steps, lr=lr,
                     curvature=curvature)

    @pplvi.objective
    def niw_fewshot(q, sx, sy, qx, qy):
        return inner(q, (sx, sy), (qx, qy))

    return niw_fewshot


def niw_predict(key, q: NIW, unravel, sx, sy, qx, *, samples: int = 10, steps: int = 2, lr: float = 0.4,
                curvature="fisher", head: str = "linear", way: int = 5, fisher_samples: int = 8,
                rule: str = "average", draw_batch="auto"):
    r"""Posterior-predictive class probabilities (n_q, way) for one episode: :math:`q_i` from the support set, then
    the mean over ``samples`` draws :math:`\theta_s \sim q_i` of the softmax (``head="linear"``: the network's
    head; ``"protonet"``: prototypes of the support set embedded with :math:`\theta_s`). ``curvature``:
    ``"fisher"`` (default: the empirical one, per image for ProtoNet's, :func:`protonet_fisher`),
    ``"expected_fisher"`` (exact for the linear head, :func:`categorical_expected_fisher`, Monte Carlo with
    ``fisher_samples`` label draws for ProtoNet's, :func:`protonet_expected_fisher`), or anything
    :func:`~pplvi.models.niw_meta.local_posterior` takes; use the one the model was trained with.
    ``rule="mean"``: the softmax at the mean :math:`m_i` alone (plug-in; ``samples`` unused) instead of the
    average over draws. ``rule="linearized"``: the average over draws of the softmax of the network linearized at
    :math:`m_i`, :math:`f(x; m_i) + J_f(x; m_i)(\theta_s - m_i)` (one ``jax.jvp`` per draw): the GLM predictive of
    Immer, Korzepa & Bauer (AISTATS 2021), which keeps the posterior's logit uncertainty but not the distortions
    of weight noise passed through the nonlinear network. The paper's ELBO (``predictive_samples=1`` in
    :func:`niw_protonet_elbo`) scores single draws, not their average, so with :math:`q_i` close to the prior the
    average of disagreeing draws is underconfident (see ``docs/models/niw_meta.md``). ``draw_batch``: how many
    draws are evaluated at once (:func:`map_draws`: all on accelerators, one at a time on CPU)."""
    _check_predictive(rule, samples)
    if head == "linear":
        ll, data = categorical_log_likelihood(unravel), (sx, sy)
        logits = lambda params: convnet_apply(params, qx)
        curvature = categorical_expected_fisher(unravel) if curvature == "expected_fisher" else curvature
    elif head == "protonet":
        ll, data = protonet_log_likelihood(unravel, way), (sx, sy, sx, sy)
        logits = lambda params: protonet_logits(params, sx, sy, qx, way)
        curvature = protonet_curvature(unravel, way, curvature, fisher_samples)
    else:
        raise pplvi.PPLVIError(f'head must be "linear" or "protonet", got {head!r}')
    key, noise_key = jax.random.split(key)
    noise = curvature_uniforms(curvature, sx.shape[0], noise_key)
    m, v = local_posterior(q, ll, data, steps=steps, lr=lr, curvature=curvature, curvature_noise=noise)
    return posterior_predictive(key, lambda th: logits(unravel(th)), m, v, samples, rule, draw_batch)


PREDICTIVE_RULES = ("average", "mean", "linearized")


def map_draws(f, draws, batch_size="auto"):
    r"""``f`` over the leading axis of ``draws`` (weight draws :math:`\theta_s`), stacked: ``jax.lax.map`` with
    ``batch_size`` draws evaluated at once. ``None``: all at once (one ``jax.vmap``, the fastest on an
    accelerator); ``"auto"`` (default): all at once on accelerators, one at a time on CPU. XLA's CPU convolutions
    with a batch of weight tensors are slow, and slower still when the weights are batched twice (draws within
    episodes within a batch): on 2 cores, the gradient of the K-draw term of 4 five-shot episodes with 8 draws each
    took 12.6 s vmapped and 1.4 s looped over draws."""
    if batch_size == "auto":
        batch_size = 1 if jax.default_backend() == "cpu" else None
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise pplvi.PPLVIError(f'draw_batch (how many draws at once) must be a positive integer, None or "auto", got '
                               f'{batch_size!r}')
    if batch_size is None or batch_size >= draws.shape[0]:
        return jax.vmap(f)(draws)
    return jax.lax.map(f, draws, batch_size=None if batch_size == 1 else batch_size)


def _check_predictive(rule, samples):
    if rule not in PREDICTIVE_RULES:
        raise pplvi.PPLVIError(f"rule must be one of {PREDICTIVE_RULES}, got {rule!r}")
    if not isinstance(samples, int) or samples < 1:
        raise pplvi.PPLVIError(f"samples must be a positive integer, got {samples!r}")


def posterior_predictive(key, logits, m, v, samples: int, rule: str = "average", draw_batch="auto"):
    r"""Class probabilities under the diagonal Gaussian :math:`\mathcal N(m, \mathrm{diag}\,v)` over the flat
    weights of ``logits(theta)``: the mean over ``samples`` draws of the softmax (``"average"``), of the softmax of
    the network linearized at ``m`` (``"linearized"``), or the softmax at ``m`` (``"mean"``). ``draw_batch``: how
    many draws are evaluated at once (:func:`map_draws`)."""
    _check_predictive(rule, samples)
    if rule == "mean":
        return jax.nn.softmax(logits(m))
    deltas = jnp.sqrt(v) * jax.random.normal(key, (samples,) + m.shape)
    if rule == "linearized":
        f_m, jvp = jax.linearize(logits, m)
        return jnp.mean(map_draws(lambda d: jax.nn.softmax(f_m + jvp(d)), deltas, draw_batch), axis=0)
    return jnp.mean(map_draws(lambda d: jax.nn.softmax(logits(m + d)), deltas, draw_batch), axis=0)


def protonet_log_likelihood(unravel, way: int):
    r"""Per-query :math:`\log p(y \mid x, S, \theta)` of ProtoNet with embedding weights ``theta``, for episode
    data ``(sx, sy, qx, qy)`` (prototypes from the support ``sx, sy``)."""
    def log_likelihood(theta, data):
        sx, sy, qx, qy = data
        logp = jax.nn.log_softmax(protonet_logits(unravel(theta), sx, sy, qx, way))
        return jnp.take_along_axis(logp, qy[:, None], axis=1)[:, 0]

    return log_likelihood


def _protonet_support_log_probs(onehot, feats):
    """Log class probabilities (n, way) of the support set used as its own query set, from its embeddings."""
    protos = onehot.T @ feats / jnp.sum(onehot, axis=0)[:, None]
    return jax.nn.log_softmax(-jnp.sum((feats[:, None, :] - protos[None]) ** 2, axis=-1))


def _per_image_vjps(unravel, theta, sx, cotangents):
    r""":math:`J_m^\top c_m` for every support image :math:`m` (one ``jax.vmap`` of single-image vector-Jacobian
    products through the embedding; :math:`J_m = \partial f(x_m;\theta)/\partial\theta`). ``cotangents`` (n, F)."""
    def one(x, c):
        _, vjp = jax.vjp(lambda th: convnet_features(unravel(th), x[None])[0], theta)
        return vjp(c)[0]

    return jax.vmap(one)(sx, cotangents)


def protonet_fisher(unravel, way: int):
    r"""A diagonal curvature for ProtoNet's likelihood with the support set as its own query set (a callable for
    :func:`~pplvi.models.niw_meta.local_posterior`'s ``curvature``): the per-image *empirical* Fisher.

    :math:`L(\theta) = \sum_n \log p(y_n \mid x_n, S, \theta)` does not factorize over examples: every term
    depends on all support embeddings through the prototypes. It does factorize over *images* through the
    embeddings :math:`f_m = f(x_m; \theta)`: with :math:`G = \partial L / \partial F` (cheap: :math:`F` is small),
    :math:`\nabla_\theta L = \sum_m g_m`, :math:`g_m = J_m^\top G_m`, :math:`J_m = \partial f_m/\partial\theta`.
    The curvature is the empirical Fisher of these per-image contributions, :math:`A_i = \mathrm{diag}\sum_m
    g_m^2`: all :math:`g_m` come from one ``jax.vmap`` of single-image vector-Jacobian products, the cost of one
    batched backward pass through the support set (a Jacobian of the :math:`n` per-example log-likelihoods would
    cost :math:`n` backward passes through the whole support set). ``data`` is ``(sx, sy, ...)``; only the support
    is used.

    It is built from the gradients of the *observed* labels, which vanish where the support set is fitted well:
    there :math:`A_i \approx 0` and :math:`V_i \approx P^{-1}` (see :func:`protonet_expected_fisher`)."""
    def curvature(theta, data):
        sx, sy = data[0], data[1]
        onehot = jax.nn.one_hot(sy, way)
        cot = jax.grad(lambda f: jnp.sum(_protonet_support_log_probs(onehot, f) * onehot))(
            convnet_features(unravel(theta), sx))  # (n, F)
        return jnp.sum(_per_image_vjps(unravel, theta, sx, cot) ** 2, axis=0)

    return curvature


def protonet_expected_fisher(unravel, way: int, samples: int = 8):
    r"""The diagonal of the expected (true) Fisher of ProtoNet's likelihood with the support set as its own query
    set, by Monte Carlo over labels drawn from the model (a random curvature callable for
    :func:`~pplvi.models.niw_meta.local_posterior`: ``curvature(theta, data, uniforms)``, ``uniforms`` of shape
    ``noise_shape(n) = (samples, n)``).

    With :math:`p_n = p(\cdot \mid x_n, S, \theta)` and labels :math:`\hat y_n \sim p_n` drawn independently,
    the score :math:`s = \nabla_\theta \sum_n \log p(\hat y_n \mid x_n, S, \theta)` has mean zero and
    :math:`\mathbb E[s s^\top] = \sum_n J_n^\top(\mathrm{diag}\,p_n - p_np_n^\top)J_n`, the Fisher (= generalized
    Gauss-Newton matrix) of the labels given the support images, :math:`J_n` the Jacobian of row :math:`n`'s logits
    (cross terms vanish because different rows' scores are independent with mean zero). So
    :math:`A_i = \frac1K\sum_{k=1}^K s_k^2` (elementwise, ``samples`` = :math:`K` label draws) is unbiased for its
    diagonal. Unlike the empirical Fisher (:func:`protonet_fisher`) it does not vanish where the support set is fitted
    well. Each :math:`s_k = \sum_m J_m^\top \partial L_k/\partial f_m` comes from the per-image vector-Jacobian
    products of :func:`protonet_fisher`: :math:`K` batched backward passes through the support set. Labels are
    drawn by inverting the class CDF at the given uniforms. An exact alternative (a sum over all labels) costs
    :math:`n \cdot` way backward passes through the whole support set."""
    if not isinstance(samples, int) or samples < 1:
        raise pplvi.PPLVIError(f"protonet_expected_fisher: samples must be a positive integer, got {samples!r}")

    def curvature(theta, data, uniforms):
        sx, sy = data[0], data[1]
        onehot = jax.nn.one_hot(sy, way)
        feats = convnet_features(unravel(theta), sx)
        p = jnp.exp(_protonet_support_log_probs(onehot, feats))
        labels = jnp.minimum(jnp.sum(jnp.cumsum(p, axis=-1)[None] < uniforms[..., None], axis=-1), way - 1)

        def score(lab):
            cot = jax.grad(lambda f: jnp.sum(_protonet_support_log_probs(onehot, f) * jax.nn.one_hot(lab, way)))(feats)
            return jnp.sum(_per_image_vjps(unravel, theta, sx, cot), axis=0)

        return jnp.mean(jax.vmap(score)(labels) ** 2, axis=0)

    curvature.noise_shape = lambda n: (samples, n)
    return curvature


def protonet_curvature(unravel, way: int, curvature, samples: int = 8):
    """``"fisher"`` -> :func:`protonet_fisher`, ``"expected_fisher"`` -> :func:`protonet_expected_fisher`; anything
    else is passed on to :func:`~pplvi.models.niw_meta.local_posterior` as it is."""
    if isinstance(curvature, str) and curvature == "fisher":
        return protonet_fisher(unravel, way)
    if isinstance(curvature, str) and curvature == "expected_fisher":
        return protonet_expected_fisher(unravel, way, samples)
    return curvature


def curvature_uniforms(curvature, n: int, key=None):
    """The uniforms a random curvature needs (``None`` for a deterministic one): drawn with ``key``, or, without a
    key, as the random choice ``"curvature_noise"`` of the enclosing objective."""
    if not hasattr(curvature, "noise_shape"):
        return None
    shape = curvature.noise_shape(n)
    if key is not None:
        return jax.random.uniform(key, shape)
    return pplvi.sample("curvature_noise", dist.Uniform(0.0, 1.0).expand(shape).to_event(len(shape)),
                        estimator=pplvi.reparam)


def niw_protonet_elbo(unravel, prior: NIW, num_episodes: int, *, way: int = 5, steps: int = 1, lr: float = 0.4,
                      curvature="fisher", fisher_samples: int = 8, predictive_samples: int = 1,
                      draw_batch="auto") -> pplvi.Objective:
    r"""The NIW ELBO with ProtoNet's likelihood: :math:`\theta_i` are the embedding weights of episode :math:`i`,
    :math:`p(D_i \mid \theta_i) = \prod_{\text{query}} p(y \mid x, S_i, \theta_i)` (prototypes from the support
    :math:`S_i`). :math:`q_i` comes from the one-time local iterate on the support set used as its own query set;
    the rest is :func:`~pplvi.models.niw_meta.niw_elbo`'s ELBO (same closed forms, ``"theta"`` reparameterized).
    ``curvature="fisher"`` (default): the per-image empirical Fisher of :func:`protonet_fisher` (this likelihood
    does not factorize over examples); ``"expected_fisher"``: the Monte Carlo expected Fisher of
    :func:`protonet_expected_fisher` (``fisher_samples`` label draws, the uniforms a random choice
    ``"curvature_noise"``: any :math:`q_i` gives a bound, so a randomized one gives one in expectation).

    ``predictive_samples`` :math:`K > 1` scores each query by the log of the Monte Carlo posterior predictive,
    :math:`\log \frac1K \sum_k p(y \mid x, S_i, \theta_k)` with :math:`\theta_{1..K} \sim q_i` drawn at
    ``"theta"`` (shape ``(K, d)``), in place of :math:`\log p(y \mid x, S_i, \theta)` for one draw: the
    predictive training of ML-PIP / VERSA (Gordon et al., ICLR 2019), which fits the average over draws that
    :func:`niw_predict` returns rather than single draws. By Jensen's inequality the term is at least the
    single-draw one in expectation, and it tends to :math:`\log \mathbb E_{q_i} p(y \mid x, S_i, \theta)` as
    :math:`K` grows. :math:`K = 1` is the paper's ELBO exactly. With ``"theta"`` reparameterized the gradient is
    unbiased for the :math:`K`-sample objective. ``draw_batch``: how many of the :math:`K` draws are evaluated at
    once (:func:`map_draws`: all on accelerators, one at a time on CPU, where this is several times faster)."""
    if not (isinstance(predictive_samples, int) and predictive_samples >= 1):
        raise pplvi.PPLVIError(f"predictive_samples must be a positive integer, got {predictive_samples!r}")
    ll = protonet_log_likelihood(unravel, way)
    curvature = protonet_curvature(unravel, way, curvature, fisher_samples)
    k = predictive_samples

    def query_log_likelihood(q, m_i, v_i, data):
        if k == 1:
            return jnp.sum(ll(sample_theta(m_i, v_i, q.diagonal), data))
        if not q.diagonal:
            raise pplvi.PPLVIError("predictive_samples > 1 needs a diagonal NIW (deep networks), got a full one")
        thetas = pplvi.sample("theta", dist.Normal(m_i, jnp.sqrt(v_i)).expand((k,) + m_i.shape).to_event(2),
                              estimator=pplvi.reparam)
        logp = map_draws(lambda th: ll(th, data), thetas, draw_batch)  # (K, n_query)
        return jnp.sum(jax.nn.logsumexp(logp, axis=0) - math.log(k))

    @pplvi.objective
    def niw_protonet(q, sx, sy, qx, qy):
        n_ep = sx.shape[0]

        def episode(a, b, c, d):
            noise = curvature_uniforms(curvature, a.shape[0])
            m_i, v_i = local_posterior(q, ll, (a, b, a, b), steps=steps, lr=lr, curvature=curvature,
                                       curvature_noise=noise)
            return pplvi.add_cost((query_log_likelihood(q, m_i, v_i, (a, b, c, d)) - expected_gaussian_kl(q, m_i, v_i))
                                  / n_ep)

        jax.vmap(episode)(sx, sy, qx, qy)
        return -niw_kl(q, prior) / num_episodes

    return niw_protonet


# ---------------------------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------------------------
def protonet_logits(params, sx, sy, qx, way: int):
    fs, fq = convnet_features(params, sx), convnet_features(params, qx)
    onehot = jax.nn.one_hot(sy, way)
    protos = onehot.T @ fs / jnp.sum(onehot, axis=0)[:, None]
    return -jnp.sum((fq[:, None, :] - protos[None]) ** 2, axis=-1)


def protonet_objective(way: int) -> pplvi.Objective:
    """Mean query log-likelihood of ProtoNet over a batch of episodes (maximized)."""
    @pplvi.objective
    def protonet(params, sx, sy, qx, qy):
        def one(a, b, c, d):
            logp = jax.nn.log_softmax(protonet_logits(params, a, b, c, way))
            return jnp.mean(jnp.take_along_axis(logp, d[:, None], axis=1))
        return jnp.mean(jax.vmap(one)(sx, sy, qx, qy))

    return protonet


def protonet_predict(params, sx, sy, qx, way: int):
    return jax.nn.softmax(protonet_logits(params, sx, sy, qx, way))


def maml_adapt(params, sx, sy, steps: int, lr: float, first_order: bool = False):
    def loss(p):
        logp = jax.nn.log_softmax(convnet_apply(p, sx))
        return -jnp.mean(jnp.take_along_axis(logp, sy[:, None], axis=1))

    for _ in range(steps):
        g = jax.grad(loss)(params)
        g = stop_gradient(g) if first_order else g
        params = jax.tree_util.tree_map(lambda p, gi: p - lr * gi, params, g)
    return params


def maml_objective(steps: int = 2, lr: float = 0.4) -> pplvi.Objective:
    """Mean query log-likelihood after ``steps`` inner SGD steps (second-order MAML)."""
    @pplvi.objective
    def maml(params, sx, sy, qx, qy):
        def one(a, b, c, d):
            adapted = maml_adapt(params, a, b, steps, lr)
            logp = jax.nn.log_softmax(convnet_apply(adapted, c))
            return jnp.mean(jnp.take_along_axis(logp, d[:, None], axis=1))
        return jnp.mean(jax.vmap(one)(sx, sy, qx, qy))

    return maml


def maml_predict(params, sx, sy, qx, *, steps: int = 2, lr: float = 0.4):
    return jax.nn.softmax(convnet_apply(maml_adapt(params, sx, sy, steps, lr), qx))


# ---------------------------------------------------------------------------------------------------------------
# calibration and episodes
# ---------------------------------------------------------------------------------------------------------------
def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    r"""ECE (Guo et al. 2017): :math:`\sum_b \frac{|B_b|}{n} |\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|` over
    ``bins`` equal-width bins of the top-class probability. ``probs`` (n, C) rows summing to 1, ``labels`` (n,)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise pplvi.PPLVIError(f"expected_calibration_error needs probs (n, C) and labels (n,), got "
                               f"{probs.shape} and {labels.shape}")
    if not np.allclose(probs.sum(1), 1.0, atol=1e-4) or (probs < 0).any():
        raise pplvi.PPLVIError("expected_calibration_error: each row of probs must be a probability vector")
    if not isinstance(bins, int) or bins < 1:
        raise pplvi.PPLVIError(f"bins must be a positive integer, got {bins!r}")
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(np.float64)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


class EpisodeSampler:
    """N-way K-shot episodes from ``images`` (N, H, W) and ``labels`` (N,) (each class needs at least
    ``shot + query`` images). ``rotations=True`` adds the 90/180/270-degree rotations of every class as new classes
    (Santoro et al. 2016). ``sample(rng, episodes)`` returns ``sx (E, way*shot, H, W), sy, qx (E, way*query, H, W),
    qy`` with labels 0..way-1 in a random class order."""

    def __init__(self, images, labels, *, way: int = 5, shot: int = 1, query: int = 5, rotations: bool = False):
        images, labels = np.asarray(images, np.float32), np.asarray(labels)
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise pplvi.PPLVIError(f"EpisodeSampler needs images (N, H, W) and labels (N,), got {images.shape} "
                                   f"and {labels.shape}")
        groups = [images[labels == c] for c in np.unique(labels)]
        if rotations:
            groups = [np.rot90(g, k, axes=(1, 2)) for k in range(4) for g in groups]
        least = min(len(g) for g in groups)
        if least < shot + query or len(groups) < way:
            raise pplvi.PPLVIError(f"EpisodeSampler: {len(groups)} classes with at least {least} images each cannot "
                                   f"make {way}-way episodes with {shot} shots and {query} queries per class")
        self.classes = np.stack([g[:least] for g in groups])  # (C, per_class, H, W)
        self.way, self.shot, self.query = way, shot, query

    def sample(self, rng: np.random.Generator, episodes: int):
        c, per = self.classes.shape[:2]
        w, k, qn = self.way, self.shot, self.query
        cls = np.stack([rng.choice(c, w, replace=False) for _ in range(episodes)])
        idx = np.stack([np.stack([rng.choice(per, k + qn, replace=False) for _ in range(w)]) for _ in range(episodes)])
        imgs = self.classes[cls[:, :, None], idx]  # (E, w, k+q, H, W)
        h, wd = imgs.shape[-2:]
        sx = imgs[:, :, :k].reshape(episodes, w * k, h, wd)
        qx = imgs[:, :, k:].reshape(episodes, w * qn, h, wd)
        sy = np.tile(np.repeat(np.arange(w), k), (episodes, 1)).astype(np.int32)
        qy = np.tile(np.repeat(np.arange(w), qn), (episodes, 1)).astype(np.int32)
        return sx, sy, qx, qy
