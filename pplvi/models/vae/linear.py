r"""The linear-Gaussian VAE and probabilistic PCA: an exact check of ELBO training.

Probabilistic PCA (Tipping & Bishop 1999) is the linear-Gaussian latent-variable model

.. math:: z \sim \mathcal N(0, I_L), \qquad x \mid z \sim \mathcal N(W z + b, s^2 I_D),
          \qquad\text{so}\qquad x \sim \mathcal N(b, W W^\top + s^2 I_D).

Its maximum log-likelihood has a closed form: with :math:`\lambda_1 \ge \dots \ge \lambda_D` and :math:`U` the
eigenvalues and eigenvectors of the sample covariance, :math:`b_{ML}` is the sample mean,
:math:`s^2_{ML} = \frac{1}{D-L}\sum_{j>L} \lambda_j` and :math:`W_{ML} = U_L (\Lambda_L - s^2_{ML} I)^{1/2}` (up to a
rotation). A VAE with a linear decoder and a linear-Gaussian encoder :math:`q(z \mid x) = \mathcal N(A x + c, \Sigma)`
with an input-independent covariance can attain it, because the exact posterior is
:math:`\mathcal N(M^{-1} W^\top (x - b),\; s^2 M^{-1})`, :math:`M = W^\top W + s^2 I`: Gaussian, with a mean linear in
:math:`x` and a covariance that does not depend on :math:`x`. With a full :math:`\Sigma` (``covariance="full"``, the
default) the family holds the exact posterior for every :math:`W`; with a diagonal one (``"diagonal"``) it holds it
when the columns of :math:`W` are orthogonal, which is where the ELBO's maximizers lie (Lucas et al. 2019) — but
training then converges slowly along rotations of :math:`W`, which change the ELBO only at second order. Either way
the ELBO maximized by :func:`pplvi.fit` must reach :math:`\max_\theta \frac1N \sum_n \log p_\theta(x_n)`;
:func:`ppca_check` measures the gap with the ELBO computed in closed form (no Monte Carlo noise).
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

import pplvi
from pplvi import objectives as O


class LinearGaussianVAE(eqx.Module):
    r"""Decoder ``z -> W z + b`` with noise ``s = exp(log_noise)``; encoder ``x -> A x + c`` with an
    input-independent covariance :math:`\Sigma = T T^\top`, ``T`` lower-triangular with diagonal
    ``exp(log_scale)`` and strictly lower part ``tril`` (``covariance="full"``) or diagonal (``"diagonal"``:
    ``tril`` is ignored and the guide is a product of independent Normals)."""

    encoder: eqx.nn.Linear
    decoder: eqx.nn.Linear
    log_scale: jax.Array
    tril: jax.Array
    log_noise: jax.Array
    covariance: str = eqx.field(static=True, default="full")

    @classmethod
    def init(cls, key, data_dim: int, latent: int, covariance: str = "full"):
        if covariance not in ("full", "diagonal"):
            raise ValueError(f"covariance={covariance!r} is not 'full' or 'diagonal'")
        k_enc, k_dec = jax.random.split(key)
        return cls(eqx.nn.Linear(data_dim, latent, key=k_enc), eqx.nn.Linear(latent, data_dim, key=k_dec),
                   jnp.zeros(latent), jnp.zeros((latent, latent)), jnp.zeros(()), covariance)

    @property
    def latent(self) -> int:
        return self.log_scale.shape[0]

    def scale_tril(self):
        """The guide's Cholesky factor ``T`` (``(latent, latent)``)."""
        diag = jnp.diag(jnp.exp(self.log_scale))
        return diag if self.covariance == "diagonal" else diag + jnp.tril(self.tril, -1)


@pplvi.gen
def linear_model(vae, X):
    """For a dataset ``X`` of shape ``(N, D)``: ``z_n ~ N(0, I)``, ``x_n ~ N(W z_n + b, s^2 I)`` independently."""
    z = pplvi.sample("z", dist.Normal(jnp.zeros((X.shape[0], vae.latent)), 1.0).to_event(2))
    pplvi.sample("x", dist.Normal(jax.vmap(vae.decoder)(z), jnp.exp(vae.log_noise)).to_event(2), obs=X)


@pplvi.gen
def linear_guide(vae, X):
    """``z_n ~ N(A x_n + c, T T^T)`` independently for the rows of ``X`` (reparameterized); a diagonal Normal when
    ``vae.covariance == "diagonal"``. One Cholesky factor for all rows: the density costs one triangular solve
    with ``N`` right-hand sides."""
    loc = jax.vmap(vae.encoder)(X)
    if vae.covariance == "diagonal":
        return pplvi.sample("z", dist.Normal(loc, jnp.exp(vae.log_scale)).to_event(2))
    return pplvi.sample("z", dist.MultivariateNormal(loc, scale_tril=vae.scale_tril()).to_event(1))


def linear_elbo(*, analytic_kl: bool = False) -> pplvi.Objective:
    """The ELBO of the linear-Gaussian VAE on a (mini)batch ``X``, per datum: ``O.elbo(linear_model, linear_guide)``
    on the whole batch, divided by its size. Call as ``objective(vae, X)``. (The generative functions take the
    batch at once rather than one datum under ``jax.vmap``, so that the full-covariance guide's density is one
    triangular solve rather than ``N`` small ones — about 20 times faster on CPU.)"""
    bound = O.elbo(linear_model, linear_guide, analytic_kl=analytic_kl)

    @pplvi.objective
    def linear_elbo(vae, X):
        return bound(vae, X) / X.shape[0]

    return linear_elbo


# ---------------------------------------------------------------------------------------------------------------
# Exact quantities (NumPy, float64)
# ---------------------------------------------------------------------------------------------------------------
def sample_ppca(seed: int, n: int, data_dim: int = 10, latent: int = 3, noise: float = 0.5):
    """``n`` draws from a PPCA model with random ``W`` (standard normal entries), ``b`` (standard normal) and noise
    standard deviation ``noise``. Returns ``(x (n, data_dim) float32, {"W", "b", "noise_var"})``."""
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(data_dim, latent)), rng.normal(size=data_dim)
    x = rng.normal(size=(n, latent)) @ W.T + b + noise * rng.normal(size=(n, data_dim))
    return x.astype(np.float32), {"W": W, "b": b, "noise_var": noise**2}


def ppca_log_likelihood(x, W, b, noise_var) -> float:
    r"""Mean over the rows of ``x`` of :math:`\log \mathcal N(x_n; b, W W^\top + s^2 I)` (float64)."""
    x = np.asarray(x, np.float64)
    W = np.asarray(W, np.float64)
    cov = W @ W.T + noise_var * np.eye(x.shape[1])
    r = x - np.asarray(b, np.float64)
    _, logdet = np.linalg.slogdet(cov)
    maha = np.einsum("nd,nd->n", r, np.linalg.solve(cov, r.T).T)
    return float(np.mean(-0.5 * (x.shape[1] * np.log(2 * np.pi) + logdet + maha)))


def ppca_mle(x, latent: int) -> dict:
    """The maximum-likelihood PPCA fit (Tipping & Bishop 1999, eqs. 7-8): ``{"W", "b", "noise_var",
    "log_likelihood"}``, the last the maximum of the mean log-likelihood per datum."""
    x = np.asarray(x, np.float64)
    b = x.mean(0)
    cov = (x - b).T @ (x - b) / len(x)
    lam, U = np.linalg.eigh(cov)
    lam, U = lam[::-1], U[:, ::-1]
    noise_var = float(lam[latent:].mean())
    W = U[:, :latent] * np.sqrt(np.maximum(lam[:latent] - noise_var, 0.0))
    return {"W": W, "b": b, "noise_var": noise_var, "log_likelihood": ppca_log_likelihood(x, W, b, noise_var)}


def exact_linear_elbo(vae: LinearGaussianVAE, x) -> float:
    r"""The ELBO of ``vae`` averaged over the rows of ``x``, in closed form (float64), with :math:`m = Ax + c`:
    :math:`\mathbb{E}_q \log \mathcal N(x; Wz+b, s^2 I) = \log \mathcal N(x; Wm+b, s^2 I) - \frac{\mathrm{tr}(W
    \Sigma W^\top)}{2 s^2}` minus :math:`\mathrm{KL}(\mathcal N(m, \Sigma) \| \mathcal N(0, I))`."""
    x = np.asarray(x, np.float64)
    A, c = np.asarray(vae.encoder.weight, np.float64), np.asarray(vae.encoder.bias, np.float64)
    W, b = np.asarray(vae.decoder.weight, np.float64), np.asarray(vae.decoder.bias, np.float64)
    s2 = float(np.exp(2 * np.float64(vae.log_noise)))
    T = np.asarray(vae.scale_tril(), np.float64)
    cov = T @ T.T
    m = x @ A.T + c
    r = x - m @ W.T - b
    D, L = x.shape[1], len(cov)
    expected_ll = -0.5 * (D * np.log(2 * np.pi * s2) + (np.sum(r**2, 1) + np.trace(W @ cov @ W.T)) / s2)
    kl = 0.5 * (np.trace(cov) + np.sum(m**2, 1) - L - 2 * np.sum(np.log(np.abs(np.diag(T)))))
    return float(np.mean(expected_ll - kl))


def ppca_check(*, n: int = 2000, data_dim: int = 10, latent: int = 3, noise: float = 0.5, steps: int = 2000,
               lr: float = 0.1, seed: int = 0, covariance: str = "full", mc_keys: int = 32) -> dict:
    """Train a :class:`LinearGaussianVAE` by the ELBO (full batch, Adam with an exponentially decaying step) on
    ``n`` draws of a random PPCA model, and compare with the exact maximum log-likelihood.

    Returns ``{"ppca_elbo_gap", ...}``: ``ppca_elbo_gap`` = max log-likelihood minus the trained ELBO, nats per datum
    (>= 0 up to float32 rounding of the parameters); ``ppca_ll_gap`` = max log-likelihood minus the log-likelihood at
    the trained decoder; ``elbo_mc`` / ``elbo_mc_se``: the same ELBO estimated by the pplvi objective (mean and
    standard error over ``mc_keys`` keys), which must agree with the closed form; the history's first and last
    values; the seconds spent."""
    t0 = time.perf_counter()
    x, _ = sample_ppca(seed, n, data_dim, latent, noise)
    mle = ppca_mle(x, latent)
    vae = LinearGaussianVAE.init(jax.random.key(seed), data_dim, latent, covariance)
    objective = linear_elbo()
    schedule = optax.exponential_decay(lr, steps, 1e-3)
    result = pplvi.fit(objective, vae, data=jnp.asarray(x), optimizer=optax.adam(schedule), steps=steps,
                       key=jax.random.key(seed + 1), progress=False)
    trained = result.params
    elbo = exact_linear_elbo(trained, x)
    ll = ppca_log_likelihood(x, trained.decoder.weight, trained.decoder.bias, float(jnp.exp(2 * trained.log_noise)))
    keys = jax.random.split(jax.random.key(seed + 2), mc_keys)
    mc = np.asarray(jax.vmap(lambda k: objective.estimate(k, trained, jnp.asarray(x)))(keys), np.float64)
    return {
        "ppca_elbo_gap": mle["log_likelihood"] - elbo,
        "ppca_ll_gap": mle["log_likelihood"] - ll,
        "ppca_max_log_likelihood": mle["log_likelihood"],
        "ppca_trained_elbo": elbo,
        "ppca_trained_log_likelihood": ll,
        "ppca_elbo_mc": float(mc.mean()),
        "ppca_elbo_mc_se": float(mc.std(ddof=1) / np.sqrt(mc_keys)),
        "ppca_objective_first": float(result.history["objective"][0]),
        "ppca_objective_last": float(result.history["objective"][-1]),
        "ppca_noise_var_trained": float(jnp.exp(2 * trained.log_noise)),
        "ppca_noise_var_ml": mle["noise_var"],
        "ppca_setting": {"n": n, "data_dim": data_dim, "latent": latent, "noise": noise, "steps": steps, "lr": lr,
                         "seed": seed, "covariance": covariance},
        "ppca_seconds": time.perf_counter() - t0,
    }
