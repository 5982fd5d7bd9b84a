r"""The Distribution Transformer (Whittle et al., arXiv:2502.02463): a map from a prior Gaussian mixture and
a set of observations to a posterior Gaussian mixture with the same number of components.

* Every prior component :math:`(\pi_k, \mu_k, L_k)` becomes a token (an MLP of its features); every observation
  :math:`y_n` becomes a token. There are **no positional encodings**.
* Each block: self-attention among the component tokens, cross-attention from the components to the observation
  tokens, a per-token MLP (pre-layer-norm, residual). Component tokens are therefore permutation *equivariant* and
  the observation tokens enter through a permutation-*invariant* attention sum: permuting the observations leaves
  the output unchanged, permuting the prior's components permutes the output's components (the same mixture).
* Output head, per token: :math:`\ell_k' = \ell_k + \Delta\ell_k`, :math:`\mu_k' = \mu_k + L_k \Delta\mu_k`,
  :math:`L_k' = L_k M_k` with :math:`M_k` lower-triangular, :math:`\mathrm{diag}(M_k) = e^{\Delta d_k}`. The
  posterior covariances are Cholesky-parameterized (a product of lower-triangular factors with positive diagonals),
  and an all-zero head returns the prior: the Kalman update of a linear-Gaussian model has exactly this form.
* :class:`PriorConverter` turns a parametric prior (here the inverse-gamma's :math:`(a, b)`) into a mixture (the
  paper's distribution embedding); it is trained by the prior-consistency term of the objective.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

import pplvi
from pplvi.models.dist_transformer.mixture import GaussianMixture, check_mixture

LOG_WEIGHT_FLOOR = -12.0


def _tril_features(scale_tril):
    d = scale_tril.shape[-1]
    rows, cols = jnp.tril_indices(d, -1)
    return jnp.log(jnp.diagonal(scale_tril, 0, -2, -1)), scale_tril[..., rows, cols]


def _lower_triangular(diag_log, offdiag, d):
    rows, cols = jnp.tril_indices(d, -1)
    m = jnp.zeros(diag_log.shape[:-1] + (d, d))
    m = m.at[..., rows, cols].set(offdiag)
    return m + jnp.eye(d) * jnp.exp(diag_log)[..., None, :]


class Block(eqx.Module):
    """Self-attention among components, cross-attention to observations, MLP; pre-norm residuals."""

    norm_self: eqx.nn.LayerNorm
    self_attention: eqx.nn.MultiheadAttention
    norm_cross: eqx.nn.LayerNorm
    cross_attention: eqx.nn.MultiheadAttention
    norm_mlp: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, width: int, heads: int, hidden: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm_self = eqx.nn.LayerNorm(width)
        self.self_attention = eqx.nn.MultiheadAttention(heads, width, inference=True, key=k1)
        self.norm_cross = eqx.nn.LayerNorm(width)
        self.cross_attention = eqx.nn.MultiheadAttention(heads, width, inference=True, key=k2)
        self.norm_mlp = eqx.nn.LayerNorm(width)
        self.mlp = eqx.nn.MLP(width, width, hidden, 1, activation=jax.nn.gelu, key=k3)

    def __call__(self, components, observations):
        h = jax.vmap(self.norm_self)(components)
        components = components + self.self_attention(h, h, h)
        h = jax.vmap(self.norm_cross)(components)
        components = components + self.cross_attention(h, observations, observations)
        return components + jax.vmap(self.mlp)(jax.vmap(self.norm_mlp)(components))


class DistributionTransformer(eqx.Module):
    r"""Prior mixture + observations :math:`\to` posterior mixture (one problem; ``jax.vmap`` for batches).

    ``location_scale`` and ``observation_scale`` divide means / Cholesky factors and observations before the
    embeddings (fixed constants of a problem family, so features are of order one). Observations enter as
    :math:`(\mathrm{clip}(y/s, \pm 10), \mathrm{asinh}(y/s))` so heavy-tailed data keep their information."""

    component_embedding: eqx.nn.MLP
    observation_embedding: eqx.nn.MLP
    blocks: tuple[Block, ...]
    head: eqx.nn.Linear
    dim: int = eqx.field(static=True)
    observation_dim: int = eqx.field(static=True)
    location_scale: float = eqx.field(static=True)
    observation_scale: float = eqx.field(static=True)

    def __init__(self, dim: int, observation_dim: int, *, key, width: int = 48, depth: int = 3, heads: int = 4,
                 hidden: int = 96, location_scale: float = 1.0, observation_scale: float = 1.0):
        if dim < 1 or observation_dim < 1 or depth < 1 or width % heads:
            raise pplvi.DataError(f"DistributionTransformer: need dim, observation_dim, depth >= 1 and width "
                                  f"divisible by heads (got {dim}, {observation_dim}, {depth}, {width}/{heads})")
        keys = jax.random.split(key, depth + 3)
        self.dim, self.observation_dim = dim, observation_dim
        self.location_scale, self.observation_scale = float(location_scale), float(observation_scale)
        n_tril = dim * (dim - 1) // 2
        self.component_embedding = eqx.nn.MLP(2 + 2 * dim + n_tril, width, hidden, 2, activation=jax.nn.gelu,
                                              key=keys[0])
        self.observation_embedding = eqx.nn.MLP(2 * observation_dim, width, hidden, 2, activation=jax.nn.gelu,
                                                key=keys[1])
        self.blocks = tuple(Block(width, heads, hidden, key=k) for k in keys[2:-1])
        head = eqx.nn.Linear(width, 1 + 2 * dim + n_tril, key=keys[-1])
        # a small head: the untrained network returns (nearly) the prior
        self.head = eqx.tree_at(lambda h: (h.weight, h.bias), head, (head.weight * 1e-2, jnp.zeros_like(head.bias)))

    def component_features(self, prior: GaussianMixture):
        log_w = jnp.maximum(jax.nn.log_softmax(prior.logits), LOG_WEIGHT_FLOOR)
        diag_log, offdiag = _tril_features(prior.scale_tril / self.location_scale)
        return jnp.concatenate([log_w[:, None] / 4.0, jnp.exp(log_w)[:, None], prior.means / self.location_scale,
                                diag_log, offdiag], -1)

    def observation_features(self, observations):
        y = observations / self.observation_scale
        return jnp.concatenate([jnp.clip(y, -10.0, 10.0), jnp.arcsinh(y)], -1)

    def __call__(self, prior: GaussianMixture, observations) -> GaussianMixture:
        """``prior``: a mixture with ``K`` components in ``dim`` dimensions (no batch axes); ``observations``:
        ``(N, observation_dim)``. Returns the posterior mixture, ``K`` components."""
        observations = jnp.asarray(observations, jnp.float32)
        if observations.ndim != 2 or observations.shape[-1] != self.observation_dim:
            raise pplvi.DataError(f"DistributionTransformer: observations must have shape (N, "
                                  f"{self.observation_dim}), got {observations.shape}")
        if prior.means.ndim != 2 or prior.dim != self.dim:
            raise pplvi.DataError(f"DistributionTransformer: the prior must be one mixture in {self.dim} "
                                  f"dimensions (means (K, {self.dim})), got means {prior.means.shape}; "
                                  "use jax.vmap for batches")
        check_mixture(prior, "DistributionTransformer prior")
        tokens = jax.vmap(self.component_embedding)(self.component_features(prior))
        data = jax.vmap(self.observation_embedding)(self.observation_features(observations))
        for block in self.blocks:
            tokens = block(tokens, data)
        out = jax.vmap(self.head)(tokens)
        d = self.dim
        d_logit, d_mean, d_diag, d_off = out[:, 0], out[:, 1:1 + d], out[:, 1 + d:1 + 2 * d], out[:, 1 + 2 * d:]
        factor = _lower_triangular(jnp.clip(d_diag, -8.0, 4.0), d_off, d)
        return GaussianMixture(prior.logits + d_logit,
                               prior.means + jnp.einsum("kde,ke->kd", prior.scale_tril, d_mean),
                               prior.scale_tril @ factor)

    def prior_mixture(self, prior: GaussianMixture) -> GaussianMixture:
        """The mixture the network starts from: the given prior itself."""
        return prior


class PriorConverter(eqx.Module):
    r"""A parametric prior's parameters :math:`\to` a ``K``-component mixture (the paper's distribution embedding).
    Inputs are passed through ``log`` (positive parameters such as an inverse-gamma's :math:`(a, b)`)."""

    mlp: eqx.nn.MLP
    components: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, parameters: int, components: int, dim: int = 1, *, key, hidden: int = 64):
        self.components, self.dim = components, dim
        n_tril = dim * (dim - 1) // 2
        self.mlp = eqx.nn.MLP(parameters, components * (1 + 2 * dim + n_tril), hidden, 2, activation=jax.nn.gelu,
                              key=key)

    def __call__(self, parameters) -> GaussianMixture:
        out = self.mlp(jnp.log(parameters)).reshape(self.components, -1)
        d = self.dim
        diag_log = jnp.clip(out[:, 1 + d:1 + 2 * d], -8.0, 4.0)
        return GaussianMixture(out[:, 0], out[:, 1:1 + d], _lower_triangular(diag_log, out[:, 1 + 2 * d:], d))


class ConvertedDistributionTransformer(eqx.Module):
    """A :class:`PriorConverter` followed by a :class:`DistributionTransformer`: parametric prior + data ->
    posterior mixture. :meth:`prior_mixture` is the converted prior that the prior-consistency term trains."""

    converter: PriorConverter
    transformer: DistributionTransformer

    def prior_mixture(self, parameters) -> GaussianMixture:
        return self.converter(parameters)

    def __call__(self, parameters, observations) -> GaussianMixture:
        return self.transformer(self.converter(parameters), observations)
