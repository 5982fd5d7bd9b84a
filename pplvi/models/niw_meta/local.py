r"""The one-time local iterate: a closed-form Gaussian episode posterior :math:`q_i = \mathcal{N}(m_i, V_i)`.

Given :math:`q(\phi) = \mathrm{NIW}(m, \lambda, V, \nu)`, the episode's part of the ELBO,
:math:`\mathbb{E}_{q_i}\log p(D_i\mid\theta) - \mathbb{E}_{q(\phi)}\mathrm{KL}(q_i\|\mathcal{N}(\mu,\Sigma))`, equals
:math:`\mathbb{E}_{q_i}\log p(D_i\mid\theta) - \mathrm{KL}(q_i \| \mathcal{N}(m, P^{-1}))` + const with
:math:`P = \mathbb{E}[\Sigma^{-1}] = \nu V^{-1}` (:mod:`~pplvi.models.niw_meta.niw`). Kim & Hospedales (ICLR 2024,
Sec. 3.2) replace :math:`l_i(\theta) = -\log p(D_i \mid \theta)` by its quadratic approximation around a point
:math:`\bar\theta_i` reached by a few gradient steps from :math:`m`:

.. math:: l_i(\theta) \approx l_i(\bar\theta_i) + g_i^\top(\theta - \bar\theta_i)
          + \tfrac12 (\theta - \bar\theta_i)^\top A_i (\theta - \bar\theta_i),

after which the optimal Gaussian is Gaussian-conjugate:

.. math:: V_i = (A_i + P)^{-1}, \qquad m_i = V_i\,(A_i\bar\theta_i - g_i + P\,m).

:math:`\bar\theta_i, g_i, A_i` are held constant (``stop_gradient``): the ELBO's gradient reaches the NIW
parameters through :math:`P` and :math:`m` in this formula only, never through the inner steps (no
backpropagation through the inner loop, unlike MAML). When :math:`l_i` is quadratic (linear-Gaussian regression)
the approximation is exact and :math:`q_i` is the exact conditional posterior, whatever :math:`\bar\theta_i` is.

``curvature`` (the paper leaves :math:`A_i` to the implementation; for deep networks only a diagonal is
affordable):

* ``"hessian"``: the exact :math:`A_i = \nabla^2 l_i(\bar\theta_i)` (full covariances, small :math:`d`);
* ``"fisher"``: the diagonal empirical Fisher :math:`A_i = \mathrm{diag}\sum_n (\nabla l_{in})^2` of the
  per-example negative log-likelihoods :math:`l_{in}` (for networks). It needs a likelihood that factorizes over
  the rows of ``data`` (:math:`l_{in}` depends on row :math:`n` only) and computes all :math:`n` per-example
  gradients in one ``jax.vmap(jax.grad)`` pass: the cost of one batched backward pass, not :math:`n` of them;
* a callable ``curvature(theta_bar, data) -> (d,)``: a diagonal :math:`A_i \ge 0` of the caller's choosing, for
  likelihoods that do not factorize (ProtoNet's, :func:`~pplvi.models.niw_meta.fewshot.protonet_fisher`), or for the
  expected Fisher of a categorical likelihood (:func:`expected_fisher_diagonal`,
  :func:`~pplvi.models.niw_meta.fewshot.protonet_expected_fisher`). A callable with a ``noise_shape`` attribute is
  random: it is called as ``curvature(theta_bar, data, noise)`` with ``noise`` uniforms of shape
  ``curvature.noise_shape(n)`` (``curvature_noise``);
* a number :math:`a` (:math:`A_i = a I`, diagonal).

**Empirical versus expected Fisher.** The empirical Fisher squares the gradients of the *observed* labels. At a
point that fits the data well those gradients vanish (for a categorical likelihood the score of the observed class
is :math:`J^\top(e_y - p)`, of size :math:`1 - p_y`), so :math:`A_i \approx 0` and :math:`V_i \approx P^{-1}`:
the local posterior stays as wide as the prior however much data the episode has. The expected (true) Fisher
:math:`\sum_y p(y\mid x,\theta)\,(\nabla\log p(y\mid x,\theta))^2` equals the diagonal of the generalized
Gauss-Newton matrix :math:`J^\top(\mathrm{diag}\,p - pp^\top)J` of the logits; it is of size :math:`p_y(1-p_y)`
instead of :math:`(1-p_y)^2` and does not vanish at a good fit (Martens, "New insights and perspectives on the
natural gradient method", JMLR 2020; Kunstner et al., "Limitations of the empirical Fisher approximation", NeurIPS
2019).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import pplvi
from pplvi.models.niw_meta.niw import NIW
from pplvi.objectives.terms import stop_gradient


def local_posterior(q: NIW, log_likelihood, data, *, steps: int = 0, lr: float = 0.1, curvature="hessian",
                    curvature_noise=None):
    r"""The closed-form :math:`(m_i, V_i)` for one episode.

    ``log_likelihood(theta, data)`` returns the per-example log-likelihoods (n,) of the episode's data (summed to
    :math:`-l_i`). ``steps`` gradient-ascent steps of size ``lr`` on :math:`\log p(D_i\mid\theta) -
    \tfrac12(\theta - m)^\top P(\theta - m)` (the MAP problem, divided by the number of
    examples) give :math:`\bar\theta_i`. ``curvature_noise``: the uniforms a random curvature callable (one with a
    ``noise_shape`` attribute) needs. Returns ``(m_i, V_i)`` with ``V_i`` (d, d) for a full ``q`` and (d,) for a
    diagonal one."""
    if curvature == "hessian" and q.diagonal:
        raise pplvi.PPLVIError('curvature="hessian" needs a full-covariance NIW; use "fisher" or a number for a '
                               "diagonal one")
    if not (curvature in ("hessian", "fisher") or callable(curvature) or isinstance(curvature, (int, float))):
        raise pplvi.PPLVIError(f'curvature must be "hessian", "fisher", a callable or a number, got {curvature!r}')
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise pplvi.PPLVIError(f"steps must be a non-negative integer, got {steps!r}")
    m = q.mean
    p = q.mean_precision()
    m_c, p_c = stop_gradient((m, p))
    total = lambda th: jnp.sum(log_likelihood(th, data))

    n = jax.tree_util.tree_leaves(data)[0].shape[0]

    def ascent(_, th):  # gradient ascent on the per-example-averaged MAP objective (MAML-like step sizes)
        g = jax.grad(total)(th)
        return th + lr * (g - (p_c * (th - m_c) if q.diagonal else p_c @ (th - m_c))) / n

    theta_bar = jax.lax.fori_loop(0, steps, ascent, m_c) if steps else m_c
    theta_bar = stop_gradient(theta_bar)
    g = stop_gradient(-jax.grad(total)(theta_bar))  # gradient of l_i = -log p(D_i | theta)
    if curvature == "hessian":
        a = stop_gradient(-jax.hessian(total)(theta_bar))
        v = jnp.linalg.inv(a + p)
        v = 0.5 * (v + v.T)
        return v @ (a @ theta_bar - g + p @ m), v
    if callable(curvature):
        if hasattr(curvature, "noise_shape"):
            if curvature_noise is None:
                raise pplvi.PPLVIError("this curvature is random (it has a noise_shape): pass curvature_noise, "
                                       "uniforms of shape curvature.noise_shape(n)")
            a = stop_gradient(curvature(theta_bar, data, stop_gradient(curvature_noise)))
        else:
            a = stop_gradient(curvature(theta_bar, data))
        if a.shape != m.shape:
            raise pplvi.PPLVIError(f"a curvature callable must return the diagonal of A_i, shape {m.shape}, got "
                                   f"{a.shape}")
    elif curvature == "fisher":
        a = stop_gradient(empirical_fisher_diagonal(log_likelihood, theta_bar, data))
    else:
        a = jnp.full_like(m, float(curvature))
    if not q.diagonal:
        a = jnp.diag(a)
        v = jnp.linalg.inv(a + p)
        return v @ (a @ theta_bar - g + p @ m), v
    v = 1.0 / (a + p)
    return v * (a * theta_bar - g + p * m), v


def empirical_fisher_diagonal(log_likelihood, theta, data):
    r""":math:`\sum_n (\nabla_\theta \log p(x_n \mid \theta))^2` (elementwise), the diagonal empirical Fisher of a
    likelihood that factorizes over the rows of ``data``: each row goes through ``log_likelihood`` as a batch of
    one, and ``jax.vmap`` over rows gives all per-example gradients in one batched backward pass."""
    def one(row):
        batch = jax.tree_util.tree_map(lambda leaf: leaf[None], row)
        return jax.grad(lambda th: log_likelihood(th, batch)[0])(theta)

    return jnp.sum(jax.vmap(one)(data) ** 2, axis=0)


def expected_fisher_diagonal(log_probs, theta, data):
    r"""The diagonal of the expected (true) Fisher of a categorical likelihood that factorizes over the rows of
    ``data``: :math:`\sum_n \sum_c p_{nc}\,(\nabla_\theta \log p_{nc})^2`, :math:`p_{nc} = p(c\mid x_n, \theta)`,
    which is :math:`\mathrm{diag}\sum_n J_n^\top(\mathrm{diag}\,p_n - p_np_n^\top)J_n` (:math:`J_n` the Jacobian of
    row :math:`n`'s logits; the generalized Gauss-Newton diagonal). ``log_probs(theta, batch)`` returns the
    log class probabilities (n, C) of a batch. Exact (no label sampling): one Jacobian of the :math:`C` log
    probabilities per row, all rows in one ``jax.vmap``."""
    def one(row):
        batch = jax.tree_util.tree_map(lambda leaf: leaf[None], row)
        jac = jax.jacrev(lambda th: log_probs(th, batch)[0])(theta)  # (C, d)
        p = jnp.exp(jax.lax.stop_gradient(log_probs(theta, batch)[0]))
        return jnp.einsum("c,cd->d", p, jac**2)

    return jnp.sum(jax.vmap(one)(data), axis=0)


# ---------------------------------------------------------------------------------------------------------------
# hierarchical linear regression: the exact check
# ---------------------------------------------------------------------------------------------------------------
def linreg_log_likelihood(noise: float):
    """Per-example :math:`\\log \\mathcal{N}(y_n; x_n^\\top\\theta, \\text{noise}^2)`, data ``(x (n, d), y (n,))``
    or ``{"x": x, "y": y}``."""
    def log_likelihood(theta, data):
        x, y = (data["x"], data["y"]) if isinstance(data, dict) else data
        r = y - x @ theta
        return -0.5 * (r / noise) ** 2 - jnp.log(noise) - 0.5 * jnp.log(2 * jnp.pi)

    return log_likelihood


def exact_linreg_posterior(q: NIW, x, y, noise: float):
    r"""The exact posterior of :math:`\theta` under prior :math:`\mathcal{N}(m, P^{-1})`, :math:`P = \nu V^{-1}`,
    and likelihood :math:`\mathcal{N}(y \mid X\theta, \text{noise}^2 I)`:
    :math:`V_i = (X^\top X/s^2 + P)^{-1}`, :math:`m_i = V_i(X^\top y/s^2 + P m)` (computed without any
    quadratic approximation, by a linear solve; the reference for :func:`local_posterior`)."""
    p = q.mean_precision()
    p = jnp.diag(p) if q.diagonal else p
    prec = x.T @ x / noise**2 + p
    v = jnp.linalg.solve(prec, jnp.eye(prec.shape[0], dtype=prec.dtype))
    m = jnp.linalg.solve(prec, x.T @ y / noise**2 + p @ q.mean)
    return m, 0.5 * (v + v.T)


def sample_linreg_episodes(seed: int, episodes: int, points: int, mu, sigma, noise: float):
    """Synthetic hierarchical regression: :math:`\\theta_i \\sim N(\\mu, \\Sigma)`, :math:`x_{in} \\sim N(0, I)`,
    :math:`y_{in} = x_{in}^\\top\\theta_i + \\text{noise}\\,\\epsilon`. Returns NumPy ``x (E, n, d)``,
    ``y (E, n)``, ``theta (E, d)``."""
    rng = np.random.default_rng(seed)
    mu, sigma = np.asarray(mu, float), np.asarray(sigma, float)
    d = mu.shape[0]
    theta = rng.multivariate_normal(mu, sigma, size=episodes)
    x = rng.normal(size=(episodes, points, d))
    y = np.einsum("end,ed->en", x, theta) + noise * rng.normal(size=(episodes, points))
    return x, y, theta
