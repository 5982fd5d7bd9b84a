r"""Adapter guidance distillation (AGD): classifier-free guidance in one network evaluation per step.

Perez Jensen & Sadat (2025, TMLR; arXiv:2503.07274), "Efficient Distillation of Classifier-Free Guidance using
Adapters". Classifier-free guidance
(Ho & Salimans 2022) needs two evaluations per step,

.. math:: \hat\varepsilon^{w}(x_t, t, y) = \hat\varepsilon(x_t, t, \varnothing)
          + w\,\big(\hat\varepsilon(x_t, t, y) - \hat\varepsilon(x_t, t, \varnothing)\big).

AGD keeps the base network frozen and adds small *adapters* conditioned on the guidance scale :math:`w`, trained
so that one evaluation of the adapted network reproduces the guided prediction:

.. math:: \min_\phi\; \mathbb E_{(x_t, t, y, w) \sim \text{CFG trajectories}}
          \big\|\hat\varepsilon_{\theta,\phi}(x_t, t, y, w) - \hat\varepsilon^{w}_\theta(x_t, t, y)\big\|^2 .

As in the paper, the training states :math:`x_t` are those *visited by the CFG sampler itself* (DDIM, scales
:math:`w` drawn from a range), not forward-noised data, so the adapter is fitted where it is used (the paper's
remedy for the train/inference mismatch of earlier guidance distillation). The paper's adapters are
scale-conditioned residuals added to the frozen blocks (an *offset* adapter on the conditioning and cross-attention
adapters that read the hidden features). Our networks have no attention; the class and time enter every residual
block through one conditioning vector :math:`e = c(t) + E[y]`. Two adapters, both zero at initialization (so the
untrained AGD is exactly the conditional base model, :math:`w = 1` of CFG):

* the *conditioning* adapter (``adapters="conditioning"``, any base network)

  .. math:: e' = e + A_\phi\big(\phi(w), \phi(t), E_\phi[y]\big),

  an MLP of sinusoidal features of :math:`w` and :math:`t` plus its own label embedding (:class:`ScaleAdapter`).
  It shifts every block's activations by a per-channel amount that is the same at every pixel and for every
  :math:`x_t`;
* *feature* adapters (``adapters="features"``, the default; :class:`UNet` bases), in addition: after residual
  block :math:`i`, with output :math:`h_i` (channels-last),

  .. math:: h_i \leftarrow h_i + W_i \star \operatorname{SiLU}\!\big(\operatorname{GN}(h_i)\,(1 + \gamma_i(z))
            + \beta_i(z)\big), \qquad z = M_\phi\big(\phi(w), \phi(t), E'_\phi[y]\big),

  a FiLM-modulated (Perez et al. 2018) GroupNorm of the block's own features, a SiLU and a zero-initialized
  convolution :math:`W_i` (:class:`FeatureAdapter`; :math:`z` is shared by the blocks, :class:`FeatureAdapters`).

Why features matter: the CFG correction :math:`(w - 1)(\hat\varepsilon_c - \hat\varepsilon_u)` depends on
:math:`x_t` pixel by pixel (it pushes the strokes that make the digit a ``y``), whereas the conditioning adapter can
only add a function of :math:`(w, t, y)`; the feature adapters compute a residual from the block's features, so the
correction can vary with :math:`x_t` and across the image. Only :math:`\phi` is trained (the base is frozen); the
network is then called once per sampling step (:class:`AGDPredictor`, 1 NFE).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import pplvi
from pplvi import PPLVIError
from pplvi.diffusion.model import Diffusion
from pplvi.diffusion.networks import MLPDenoiser, UNet, _conv, _group_norm, time_features
from pplvi.diffusion.samplers import cfg as cfg_predictor
from pplvi.diffusion.samplers import uniform_times

ADAPTER_KINDS = ("conditioning", "features")


def _scale_features(w, t, label, label_embedding, features: int, w_max: float):
    """Sinusoidal features of ``w / w_max`` and ``t``, concatenated with a label embedding."""
    return jnp.concatenate([
        time_features(jnp.asarray(w, jnp.float32) / w_max, features),
        time_features(t, features),
        label_embedding(jnp.asarray(label, jnp.int32)),
    ])


def _zero_last_layer(mlp: eqx.nn.MLP) -> eqx.nn.MLP:
    last = mlp.layers[-1]
    last = eqx.tree_at(lambda lin: (lin.weight, lin.bias), last,
                       (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
    return eqx.tree_at(lambda m: m.layers[-1], mlp, last)


class ScaleAdapter(eqx.Module):
    r""":math:`A_\phi(w, t, y)`: sinusoidal features of ``w / w_max`` and ``t``, plus a label embedding, through a
    SiLU MLP whose output layer is zero at initialization."""

    mlp: eqx.nn.MLP
    label_embedding: eqx.nn.Embedding
    features: int = eqx.field(static=True)
    w_max: float = eqx.field(static=True)

    def __init__(self, out_dim: int, num_classes: int, *, key, width: int = 64, features: int = 32,
                 w_max: float = 10.0):
        k1, k2 = jax.random.split(key)
        self.features, self.w_max = features, float(w_max)
        mlp = eqx.nn.MLP(2 * features + width, out_dim, width, depth=2, activation=jax.nn.silu, key=k1)
        self.mlp = _zero_last_layer(mlp)
        self.label_embedding = eqx.nn.Embedding(num_classes + 1, width, key=k2)

    def __call__(self, w, t, label):
        return self.mlp(_scale_features(w, t, label, self.label_embedding, self.features, self.w_max))


class FeatureAdapter(eqx.Module):
    r"""One block's residual :math:`W \star \operatorname{SiLU}(\operatorname{GN}(h)(1 + \gamma(z)) + \beta(z))`
    for a channels-last ``h`` (H, W, C) and the scale embedding ``z``; :math:`W` (a ``kernel_size`` convolution)
    is zero at initialization."""

    norm: eqx.nn.GroupNorm
    film: eqx.nn.Linear
    out: eqx.nn.Conv2d

    def __init__(self, channels: int, embed_dim: int, *, key, kernel_size: int = 1):
        k1, k2 = jax.random.split(key)
        self.norm = eqx.nn.GroupNorm(min(8, channels), channels, channelwise_affine=False)
        self.film = eqx.nn.Linear(embed_dim, 2 * channels, key=k1)
        out = eqx.nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, key=k2)
        self.out = eqx.tree_at(lambda c: (c.weight, c.bias), out, (jnp.zeros_like(out.weight),
                                                                   jnp.zeros_like(out.bias)))

    def __call__(self, h, z):
        scale, shift = jnp.split(self.film(z), 2)
        return _conv(self.out, jax.nn.silu(_group_norm(self.norm, h) * (1.0 + scale) + shift))


class FeatureAdapters(eqx.Module):
    r"""The shared scale embedding :math:`z = M_\phi(\phi(w), \phi(t), E'_\phi[y])` (a SiLU MLP) and one
    :class:`FeatureAdapter` per residual block of a :class:`UNet` (forward order)."""

    embedding: eqx.nn.MLP
    label_embedding: eqx.nn.Embedding
    blocks: list
    features: int = eqx.field(static=True)
    w_max: float = eqx.field(static=True)

    def __init__(self, net: UNet, num_classes: int, *, key, width: int = 64, features: int = 32,
                 w_max: float = 10.0, kernel_size: int = 1):
        k1, k2, k3 = jax.random.split(key, 3)
        self.features, self.w_max = features, float(w_max)
        self.embedding = eqx.nn.MLP(2 * features + width, width, width, depth=2, activation=jax.nn.silu, key=k1)
        self.label_embedding = eqx.nn.Embedding(num_classes + 1, width, key=k2)
        channels = [b.conv2.out_channels for b in (*net.down, *net.middle, *net.up)]
        self.blocks = [FeatureAdapter(c, width, key=k, kernel_size=kernel_size)
                       for c, k in zip(channels, jax.random.split(k3, len(channels)))]

    def __call__(self, w, t, label):
        """The per-block callables ``h -> residual`` at ``(w, t, label)`` for :meth:`UNet.forward`."""
        z = self.embedding(_scale_features(w, t, label, self.label_embedding, self.features, self.w_max))
        return [functools.partial(block, z=z) for block in self.blocks]


def _conditioning_dim(net) -> int:
    return net.conditioning.time_mlp.out_size


class AGD(eqx.Module):
    r"""A frozen class-conditional :class:`~pplvi.diffusion.Diffusion` (``eps`` prediction, a :class:`UNet` or
    :class:`MLPDenoiser`) with a :class:`ScaleAdapter` on its conditioning vector and, for
    ``adapters="features"`` (the default; :class:`UNet` only), :class:`FeatureAdapters` after every residual block.
    :meth:`eps` is the adapted prediction :math:`\hat\varepsilon_{\theta,\phi}(x_t, t, y, w)` for a batch (one
    network evaluation). ``width``: the conditioning adapter's MLP width; ``feature_width``: the feature adapters'
    embedding width; ``kernel_size``: their output convolution's."""

    base: Diffusion
    adapter: ScaleAdapter
    feature_adapters: FeatureAdapters | None

    def __init__(self, base: Diffusion, *, key, width: int = 64, w_max: float = 10.0, adapters: str = "features",
                 feature_width: int = 64, kernel_size: int = 1):
        if not isinstance(base, Diffusion) or base.num_classes < 1:
            raise PPLVIError("AGD: the base must be a class-conditional pplvi.diffusion.Diffusion")
        if base.prediction != "eps":
            raise PPLVIError(f"AGD: the base must predict eps, got prediction={base.prediction!r}")
        if not isinstance(base.net, (UNet, MLPDenoiser)):
            raise PPLVIError(f"AGD: the base network must be a UNet or MLPDenoiser, got {type(base.net).__name__}")
        if adapters not in ADAPTER_KINDS:
            raise PPLVIError(f"AGD: adapters must be one of {ADAPTER_KINDS}, got {adapters!r}")
        if adapters == "features" and not isinstance(base.net, UNet):
            raise PPLVIError("AGD: adapters='features' needs a UNet base (it adapts the residual blocks' feature "
                             f"maps); a {type(base.net).__name__} supports adapters='conditioning' only")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise PPLVIError(f"AGD: kernel_size must be a positive odd integer, got {kernel_size}")
        self.base = base
        self.adapter = ScaleAdapter(_conditioning_dim(base.net), base.num_classes, key=key, width=width,
                                    w_max=w_max)
        self.feature_adapters = None if adapters == "conditioning" else FeatureAdapters(
            base.net, base.num_classes, key=jax.random.fold_in(key, 1), width=feature_width, w_max=w_max,
            kernel_size=kernel_size)

    @property
    def adapters(self) -> str:
        """``"conditioning"`` or ``"features"``."""
        return "conditioning" if self.feature_adapters is None else "features"

    def _one(self, x, t, label, w):
        net = self.base.net
        e = net.conditioning(t, label) + self.adapter(w, t, label)
        if self.feature_adapters is None:
            return net.forward(x, e)
        return net.forward(x, e, self.feature_adapters(w, t, label))

    def eps(self, x_t, t, labels, w):
        """Adapted noise prediction for a batch; ``t``, ``labels``, ``w`` scalars or ``(B,)``."""
        n = x_t.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,))
        labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (n,))
        w = jnp.broadcast_to(jnp.asarray(w, jnp.float32), (n,))
        return jax.vmap(self._one)(x_t, t, labels, w)

    def adapter_weights(self):
        """The trained part, as saved by ``benchmarks/agd.py``: the :class:`ScaleAdapter` (conditioning) or the
        pair ``(ScaleAdapter, FeatureAdapters)`` (features); load with ``pplvi.train.load_tree(path,
        agd.adapter_weights())``."""
        return self.adapter if self.feature_adapters is None else (self.adapter, self.feature_adapters)

    def trainable(self):
        """The equinox filter spec: only the adapters' arrays train."""
        spec = jax.tree_util.tree_map(lambda _: False, self)
        spec = eqx.tree_at(lambda m: m.adapter, spec, jax.tree_util.tree_map(eqx.is_inexact_array, self.adapter))
        if self.feature_adapters is not None:
            spec = eqx.tree_at(lambda m: m.feature_adapters, spec,
                               jax.tree_util.tree_map(eqx.is_inexact_array, self.feature_adapters))
        return spec


class AGDPredictor:
    """The sampler predictor of an :class:`AGD` model at scale ``w`` for ``labels``: 1 NFE per step."""

    nfe_per_step = 1

    def __init__(self, agd: AGD, labels, w: float):
        self.agd, self.labels, self.w = agd, labels, w

    def init(self, x):
        return None

    def __call__(self, x, t, state):
        return self.agd.eps(x, t, self.labels, self.w), state, jnp.int32(1)


def cfg_trajectories(model: Diffusion, key, labels, w_values, shape, steps: int = 25):
    r"""States visited by DDIM (``eta = 0``) under classifier-free guidance and the CFG targets there.

    For each scale in ``w_values`` (one per trajectory batch) and the per-sample ``labels`` (``(B,)``), runs DDIM
    with :func:`pplvi.diffusion.cfg` from prior draws of ``shape = (B, *event)`` and records every call's
    ``(x_t, t, label, w, eps_cfg)``. Returns a dict of arrays with ``len(w_values) * B * steps`` rows."""
    sched = model.schedule
    ts = uniform_times(sched, steps)
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != (shape[0],):
        raise PPLVIError(f"cfg_trajectories: labels must have shape ({shape[0]},), got {labels.shape}")

    @jax.jit
    def run(k, w):
        pred = cfg_predictor(model, labels, w)
        x = jax.random.normal(k, shape)

        def step(x, ts_pair):
            t, s = ts_pair
            eps, _, _ = pred(x, t, None)
            a_t, s_t = sched.signal_noise(t)
            a_s, s_s = sched.signal_noise(s)
            x_next = a_s * (x - s_t * eps) / a_t + s_s * eps
            return x_next, (x, eps)

        t_next = jnp.concatenate([ts[1:], ts[-1:]])
        _, (xs, eps) = jax.lax.scan(step, x, (ts, t_next))
        return xs, eps

    rows = {"x_t": [], "t": [], "labels": [], "w": [], "target": []}
    for k, w in zip(jax.random.split(key, len(w_values)), w_values):
        xs, eps = run(k, jnp.float32(w))
        n = shape[0]
        rows["x_t"].append(np.asarray(xs).reshape((-1,) + tuple(shape[1:])))
        rows["target"].append(np.asarray(eps).reshape((-1,) + tuple(shape[1:])))
        rows["t"].append(np.repeat(np.asarray(ts), n))
        rows["labels"].append(np.tile(np.asarray(labels), len(ts)))
        rows["w"].append(np.full(len(ts) * n, w, np.float32))
    return {name: jnp.asarray(np.concatenate(v)) for name, v in rows.items()}


@pplvi.objective
def agd_regression(agd: AGD, x_t, t, labels, w, target):
    r"""Minus the mean squared error :math:`\|\hat\varepsilon_{\theta,\phi}(x_t, t, y, w) - \hat\varepsilon^w\|^2`
    over a batch of recorded CFG states (maximized by :func:`pplvi.fit`)."""
    pred = agd.eps(x_t, t, labels, w)
    return -jnp.mean(jnp.sum((pred - target).reshape(pred.shape[0], -1) ** 2, axis=1))


def train_agd(model: Diffusion, trajectories: dict, *, key, steps: int = 500, batch_size: int = 128,
              lr: float = 2e-3, width: int = 64, w_max: float = 10.0, adapters: str = "features",
              feature_width: int = 64, kernel_size: int = 1, progress=False) -> AGD:
    """Fit an :class:`AGD` (base frozen, ``adapters`` as there) to recorded trajectories with :func:`pplvi.fit`.
    The same ``key`` gives both adapter kinds the same conditioning-adapter initialization and minibatches."""
    import optax

    k_init, k_fit = jax.random.split(jax.random.key(key) if isinstance(key, int) else key)
    agd = AGD(model, key=k_init, width=width, w_max=w_max, adapters=adapters, feature_width=feature_width,
              kernel_size=kernel_size)
    data = tuple(trajectories[name] for name in ("x_t", "t", "labels", "w", "target"))
    res = pplvi.fit(agd_regression, agd, optimizer=optax.adam(lr), steps=steps, key=k_fit, data=data,
                    batch_size=batch_size, trainable=agd.trainable(), progress=progress)
    return res.params


__all__ = ["AGD", "AGDPredictor", "FeatureAdapter", "FeatureAdapters", "ScaleAdapter", "agd_regression",
           "cfg_trajectories", "train_agd"]
