r"""The Koopman part of the Koopman VAE (Naiman et al., ICLR 2024, Sec. 3): a linear map fitted to latent
trajectories by least squares, its multi-step prediction error, and a penalty on its spectrum.

Latent trajectories are stacked as ``z`` of shape ``(B, T, k)``, a row per time step. With
:math:`\bar Z_{\text{past}} = [\bar z_{b,t}]_{b,\,t < T}` and
:math:`\bar Z_{\text{future}} = [\bar z_{b,t}]_{b,\,t > 1}`
(both ``(B (T-1), k)``, rows in the same order), the Koopman operator of the batch is the least-squares solution

.. math:: A = \arg\min_A \|\bar Z_{\text{future}} - \bar Z_{\text{past}} A\|_F^2 = \bar Z_{\text{past}}^{+}
          \bar Z_{\text{future}},

computed from the normal equations :math:`A = (\bar Z_{\text{past}}^\top \bar Z_{\text{past}})^{-1}
\bar Z_{\text{past}}^\top \bar Z_{\text{future}}` (a ``k x k`` solve: cost :math:`O(B T k^2)`, and cheap to
differentiate, so gradients reach the trajectories through :math:`A`; a pseudo-inverse or QR of the tall
``(B (T-1), k)`` matrix gives the same :math:`A` at several times the cost of a training step).
The row convention means :math:`\bar z_{t+1} \approx \bar z_t A`, so the dynamics' eigenvalues are those of
:math:`A` (equivalently of :math:`A^\top` acting on column vectors).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def koopman_operator(z):
    r"""The least-squares linear map ``A`` (``(k, k)``) with :math:`z_{b,t+1} \approx z_{b,t} A` over every
    sequence ``b`` and step ``t`` of ``z`` (``(B, T, k)``, or one trajectory ``(T, k)``)."""
    z = z[None] if z.ndim == 2 else z
    k = z.shape[-1]
    past = z[:, :-1].reshape(-1, k)
    future = z[:, 1:].reshape(-1, k)
    gram = past.T @ past
    ridge = 1e-6 * jnp.trace(gram) / k  # a relative 1e-6: negligible, and keeps a rank-deficient batch finite
    return jnp.linalg.solve(gram + ridge * jnp.eye(k, dtype=gram.dtype), past.T @ future)


def prediction_error(z, A, steps: int = 1):
    r"""Normalized multi-step prediction error of the linear dynamics ``A`` on trajectories ``z`` (``(B, T, k)``):

    .. math:: \frac1J \sum_{j=1}^{J} \frac{\|\bar Z_{1+j:T} - \bar Z_{1:T-j} A^j\|_F^2}{\|\bar Z_{1+j:T}\|_F^2},

    the relative squared error of predicting ``j`` steps ahead, averaged over ``j = 1..steps``. ``steps = 1`` is the
    residual of the least-squares fit that defines ``A`` (the paper's :math:`\mathcal L_{\text{pred}}`);
    the normalization makes it independent of the latents' scale, so the prior cannot shrink it by shrinking
    :math:`\bar z`."""
    z = z[None] if z.ndim == 2 else z
    if not 1 <= steps < z.shape[1]:
        raise ValueError(f"steps={steps} must be in 1..{z.shape[1] - 1} for trajectories of {z.shape[1]} steps")
    total = jnp.zeros(())
    power = jnp.eye(A.shape[0], dtype=A.dtype)
    for j in range(1, steps + 1):
        power = power @ A
        predicted = z[:, :-j] @ power
        target = z[:, j:]
        total = total + jnp.sum((target - predicted) ** 2) / (jnp.sum(target**2) + 1e-8)
    return total / steps


def eigenvalues(A):
    """The eigenvalues of ``A`` (complex), sorted by decreasing modulus."""
    lam = jnp.linalg.eigvals(A)
    return lam[jnp.argsort(-jnp.abs(lam))]


def spectral_penalty(A, modes: int, radius: float = 1.0):
    r"""Pull the ``modes`` eigenvalues of largest modulus onto the circle of the given ``radius``:

    .. math:: \sum_{i=1}^{m} (|\lambda_i(A)| - r)^2, \qquad |\lambda_1| \ge |\lambda_2| \ge \dots

    (Naiman et al. 2024, Sec. 3.3: constraining the spectrum encodes domain knowledge — ``r = 1`` keeps the
    dominant modes neither growing nor decaying, as for the periodic "sines"; a penalty on
    :math:`\max(|\lambda| - 1, 0)` would instead only enforce stability). Differentiable through
    ``jnp.linalg.eig`` (eigenvalue derivatives need distinct eigenvalues; JAX implements ``eig`` on CPU only).
    ``modes = 0`` gives 0."""
    if modes <= 0:
        return jnp.zeros(())
    modulus = jnp.abs(jnp.linalg.eigvals(A))
    chosen = jnp.argsort(-jax.lax.stop_gradient(modulus))[:modes]
    return jnp.sum((modulus[chosen] - radius) ** 2)


def linear_system_latents(key, A, n: int, length: int, noise: float = 0.0):
    r"""``n`` trajectories of ``length`` steps of :math:`z_{t+1} = z_t A + \sigma \epsilon_t`, started at
    :math:`z_1 \sim \mathcal N(0, I)`: ``(n, length, k)``. Used to check that :func:`koopman_operator` recovers a
    known system."""
    k0, k1 = jax.random.split(key)
    z0 = jax.random.normal(k0, (n, A.shape[0]))
    eps = noise * jax.random.normal(k1, (length - 1, n, A.shape[0]))

    def step(z, e):
        nxt = z @ A + e
        return nxt, nxt

    _, rest = jax.lax.scan(step, z0, eps)
    return jnp.concatenate([z0[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)
