r"""The Normal-Inverse-Wishart (NIW) family and the closed forms the NIW meta-learner needs.

:math:`\phi = (\mu, \Sigma) \sim \mathrm{NIW}(m, \lambda, V, \nu)` means
:math:`\Sigma \sim \mathcal{W}^{-1}(V, \nu)` (density :math:`\propto |\Sigma|^{-(\nu+d+1)/2}
e^{-\mathrm{tr}(V\Sigma^{-1})/2}`, :math:`\nu > d - 1`) and :math:`\mu \mid \Sigma \sim \mathcal{N}(m, \Sigma/\lambda)`.
Kim & Hospedales (ICLR 2024, arXiv 2306.09702) put this prior on the mean and covariance of per-episode network
weights :math:`\theta_i \sim \mathcal{N}(\mu, \Sigma)`. Everything the ELBO needs about :math:`q(\phi)` is in closed
form (Kim & Hospedales, Sec. 3 and App. A):

* :math:`\mathbb{E}[\Sigma^{-1}] = \nu V^{-1}`,
  :math:`\mathbb{E}\log|\Sigma| = \log|V| - d\log 2 - \psi_d(\nu/2)` (:func:`expected_log_det`);
* :math:`\mathbb{E}_{q(\phi)}\mathrm{KL}(\mathcal{N}(m_i, V_i)\,\|\,\mathcal{N}(\mu, \Sigma)) = \tfrac12[\nu\,
  \mathrm{tr}(V^{-1}V_i) + \nu (m_i - m)^\top V^{-1}(m_i - m) + d/\lambda - d + \mathbb{E}\log|\Sigma| - \log|V_i|]`
  (:func:`expected_gaussian_kl`); as a function of :math:`(m_i, V_i)` it is
  :math:`\mathrm{KL}(\mathcal{N}(m_i, V_i) \| \mathcal{N}(m, V/\nu))` plus a constant, which is why the local
  posterior has a closed form (see :mod:`pplvi.models.niw_meta.local`);
* :math:`\mathrm{KL}(\mathrm{NIW}_q \| \mathrm{NIW}_p)` (:func:`niw_kl`): the expected KL of the conditional normals
  plus the KL of the inverse-Wisharts (equal to the KL of the Wisharts of :math:`\Sigma^{-1}`).

For deep networks (:math:`d` = number of weights) the paper makes the covariances diagonal. Here that is the
*diagonal NIW* (:class:`NIW` with ``diagonal=True``): independent one-dimensional NIWs per coordinate
(:math:`\sigma_j^2 \sim \mathrm{Inv\text{-}Gamma}(\nu/2, v_j/2)`, :math:`\mu_j \mid \sigma_j^2 \sim
\mathcal{N}(m_j, \sigma_j^2/\lambda)`) with shared :math:`\lambda, \nu`; every formula above then holds with
:math:`d = 1` per coordinate, summed. All functions take a :class:`NIW` whose ``scale`` is the matrix :math:`V`
(full) or the vector :math:`\mathrm{diag}\,V` (diagonal).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, multigammaln

import pplvi


class NIW(eqx.Module):
    r"""An NIW distribution with unconstrained parameters (so :func:`pplvi.fit` can train it).

    ``mean`` :math:`m` (d,); :math:`\lambda = e^{\text{log\_kappa}}`; ``scale_param``: for ``diagonal`` the vector
    :math:`\log \mathrm{diag}\,V` (d,), otherwise a (d, d) matrix whose lower triangle, with the diagonal
    exponentiated, is the Cholesky factor of :math:`V`; :math:`\nu = d_\text{eff} - 1 + \mathrm{softplus}(\cdot)`
    with :math:`d_\text{eff} = 1` (diagonal) or :math:`d` (full), so the distribution is always proper."""

    mean: jax.Array
    log_kappa: jax.Array
    scale_param: jax.Array
    dof_param: jax.Array
    diagonal: bool = eqx.field(static=True)

    @classmethod
    def create(cls, mean, kappa, scale, dof, diagonal: bool | None = None) -> NIW:
        """From natural values: ``scale`` a (d,) vector (diagonal NIW) or a (d, d) positive-definite matrix."""
        mean = jnp.asarray(mean, jnp.result_type(float))
        scale = jnp.asarray(scale, mean.dtype)
        if mean.ndim != 1:
            raise pplvi.PPLVIError(f"NIW mean must be a vector (d,), got shape {mean.shape}")
        d = mean.shape[0]
        diagonal = scale.ndim == 1 if diagonal is None else diagonal
        want = (d,) if diagonal else (d, d)
        if scale.shape != want:
            raise pplvi.PPLVIError(f"NIW scale must have shape {want} for a {'diagonal' if diagonal else 'full'} "
                                   f"NIW with a mean of shape {mean.shape}, got {scale.shape}")
        d_eff = 1 if diagonal else d
        if not float(dof) > d_eff - 1:
            raise pplvi.PPLVIError(f"NIW degrees of freedom must exceed {d_eff - 1} (d_eff - 1), got {dof}")
        if not float(kappa) > 0:
            raise pplvi.PPLVIError(f"NIW kappa (lambda) must be positive, got {kappa}")
        if diagonal:
            sp = jnp.log(scale)
        else:
            chol = jnp.linalg.cholesky(scale)
            sp = jnp.tril(chol, -1) + jnp.diag(jnp.log(jnp.diag(chol)))
        excess = jnp.asarray(float(dof) - (d_eff - 1), mean.dtype)
        return cls(mean, jnp.log(jnp.asarray(kappa, mean.dtype)), sp, excess + jnp.log(-jnp.expm1(-excess)),
                   diagonal)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def kappa(self):
        return jnp.exp(self.log_kappa)

    @property
    def dof(self):
        d_eff = 1 if self.diagonal else self.dim
        return d_eff - 1 + jax.nn.softplus(self.dof_param)

    @property
    def scale(self):
        """:math:`V`: (d,) diagonal or (d, d)."""
        if self.diagonal:
            return jnp.exp(self.scale_param)
        chol = self.scale_tril
        return chol @ chol.T

    @property
    def scale_tril(self):
        return jnp.tril(self.scale_param, -1) + jnp.diag(jnp.exp(jnp.diag(self.scale_param)))

    @property
    def log_det_scale(self):
        """:math:`\\log|V|` (full) or the vector :math:`\\log v_j` (diagonal)."""
        return self.scale_param if self.diagonal else 2.0 * jnp.sum(jnp.diag(self.scale_param))

    def mean_precision(self):
        r""":math:`\mathbb{E}[\Sigma^{-1}] = \nu V^{-1}`: (d,) or (d, d)."""
        if self.diagonal:
            return self.dof / self.scale
        return self.dof * jnp.linalg.inv(self.scale)

    def mean_covariance(self):
        r""":math:`\mathbb{E}[\Sigma] = V / (\nu - d - 1)` (needs :math:`\nu > d + 1`; ``inf`` otherwise)."""
        d_eff = 1 if self.diagonal else self.dim
        denom = self.dof - d_eff - 1
        return jnp.where(denom > 0, self.scale / jnp.where(denom > 0, denom, 1.0), jnp.inf)


def _multidigamma(a, d: int):
    return jnp.sum(digamma(a - 0.5 * jnp.arange(d)))


def expected_log_det(q: NIW):
    r""":math:`\mathbb{E}_q \log|\Sigma| = \log|V| - d \log 2 - \psi_d(\nu/2)` (the sum over coordinates for a
    diagonal NIW)."""
    if q.diagonal:
        return jnp.sum(q.log_det_scale - jnp.log(2.0) - digamma(q.dof / 2))
    d = q.dim
    return q.log_det_scale - d * jnp.log(2.0) - _multidigamma(q.dof / 2, d)


def expected_gaussian_kl(q: NIW, m_i, v_i):
    r""":math:`\mathbb{E}_{(\mu,\Sigma)\sim q}\,\mathrm{KL}(\mathcal{N}(m_i, V_i) \| \mathcal{N}(\mu, \Sigma))`.

    ``v_i``: the covariance :math:`V_i`, (d,) diagonal for a diagonal ``q``, (d, d) for a full one."""
    d, r = q.dim, m_i - q.mean
    if q.diagonal:
        p = q.mean_precision()
        quad = jnp.sum(p * (v_i + r**2))
        logdet_i = jnp.sum(jnp.log(v_i))
    else:
        p = q.mean_precision()
        quad = jnp.trace(p @ v_i) + r @ p @ r
        logdet_i = jnp.linalg.slogdet(v_i)[1]
    return 0.5 * (quad + d / q.kappa - d + expected_log_det(q) - logdet_i)


def niw_log_prob(q: NIW, mu, sigma):
    r""":math:`\log \mathrm{NIW}(\mu, \Sigma)`; ``sigma`` is (d, d), or the (d,) variances for a diagonal NIW."""
    nu, lam = q.dof, q.kappa
    if q.diagonal:
        a, v = nu / 2, q.scale
        log_ig = a * jnp.log(v / 2) - jax.scipy.special.gammaln(a) - (a + 1) * jnp.log(sigma) - v / (2 * sigma)
        log_n = -0.5 * (jnp.log(2 * jnp.pi * sigma / lam) + lam * (mu - q.mean) ** 2 / sigma)
        return jnp.sum(log_ig + log_n)
    d = q.dim
    _, logdet_s = jnp.linalg.slogdet(sigma)
    s_inv = jnp.linalg.inv(sigma)
    log_iw = (0.5 * nu * q.log_det_scale - 0.5 * nu * d * jnp.log(2.0) - multigammaln(nu / 2, d)
              - 0.5 * (nu + d + 1) * logdet_s - 0.5 * jnp.trace(q.scale @ s_inv))
    r = mu - q.mean
    log_n = -0.5 * (d * jnp.log(2 * jnp.pi / lam) + logdet_s + lam * r @ s_inv @ r)
    return log_iw + log_n


def niw_sample(key, q: NIW, n: int):
    r"""``n`` draws ``(mu, sigma)`` from ``q`` (for tests and Monte Carlo checks; not differentiated).
    Full: :math:`\Sigma^{-1} \sim \mathcal{W}(V^{-1}, \nu)` by the Bartlett decomposition."""
    k1, k2, k3 = jax.random.split(key, 3)
    nu, lam = q.dof, q.kappa
    if q.diagonal:
        d = q.dim
        prec = 2 * jax.random.gamma(k1, nu / 2, (n, d)) / q.scale  # 1/sigma^2 ~ Gamma(nu/2, rate v/2)
        sigma = 1 / prec
        mu = q.mean + jnp.sqrt(sigma / lam) * jax.random.normal(k2, (n, d))
        return mu, sigma
    d = q.dim
    lw = jnp.linalg.cholesky(jnp.linalg.inv(q.scale))  # Wishart scale V^{-1} = L L^T
    dfs = nu - jnp.arange(d)
    diag = jnp.sqrt(2 * jax.random.gamma(k1, dfs / 2, (n, d)))
    low = jnp.tril(jax.random.normal(k3, (n, d, d)), -1)
    a = low + jax.vmap(jnp.diag)(diag)
    la = lw @ a
    sigma = jnp.linalg.inv(la @ jnp.swapaxes(la, -1, -2))
    chol = jnp.linalg.cholesky(sigma)
    mu = q.mean + jnp.einsum("nij,nj->ni", chol, jax.random.normal(k2, (n, d))) / jnp.sqrt(lam)
    return mu, sigma


def niw_kl(q: NIW, p: NIW):
    r""":math:`\mathrm{KL}(\mathrm{NIW}(m, \lambda, V, \nu) \| \mathrm{NIW}(m', \lambda', V', \nu'))`
    :math:`= \tfrac12[d\lambda'/\lambda - d + d\log(\lambda/\lambda') + \lambda'\nu(m - m')^\top V^{-1}(m - m')]`
    :math:`+ \tfrac{\nu - \nu'}{2}\psi_d(\nu/2) + \tfrac{\nu}{2}(\mathrm{tr}(V'V^{-1}) - d)
    + \tfrac{\nu'}{2}(\log|V| - \log|V'|) + \log\Gamma_d(\nu'/2) - \log\Gamma_d(\nu/2)`.

    (The second line is the KL of the Wisharts of :math:`\Sigma^{-1}`, which equals that of the inverse-Wisharts.)
    Summed over coordinates (``d = 1`` each) for diagonal NIWs. Zero iff ``q == p``."""
    if q.diagonal != p.diagonal or q.dim != p.dim:
        raise pplvi.PPLVIError(f"niw_kl needs two NIWs of the same kind and dimension, got diagonal={q.diagonal} "
                               f"d={q.dim} and diagonal={p.diagonal} d={p.dim}")
    lam, lam_p, nu, nu_p, r = q.kappa, p.kappa, q.dof, p.dof, q.mean - p.mean
    if q.diagonal:
        v, v_p = q.scale, p.scale
        normal = 0.5 * (lam_p / lam - 1 + jnp.log(lam / lam_p) + lam_p * nu * r**2 / v)
        wish = (0.5 * (nu - nu_p) * digamma(nu / 2) + 0.5 * nu * (v_p / v - 1)
                + 0.5 * nu_p * (jnp.log(v) - jnp.log(v_p))
                + jax.scipy.special.gammaln(nu_p / 2) - jax.scipy.special.gammaln(nu / 2))
        return jnp.sum(normal + wish)
    d = q.dim
    v_inv = jnp.linalg.inv(q.scale)
    normal = 0.5 * (d * lam_p / lam - d + d * jnp.log(lam / lam_p) + lam_p * nu * r @ v_inv @ r)
    wish = (0.5 * (nu - nu_p) * _multidigamma(nu / 2, d) + 0.5 * nu * (jnp.trace(p.scale @ v_inv) - d)
            + 0.5 * nu_p * (q.log_det_scale - p.log_det_scale) + multigammaln(nu_p / 2, d) - multigammaln(nu / 2, d))
    return normal + wish
