r"""Denoising networks in equinox: a small U-Net for images and an MLP for low-dimensional data.

Both map one example ``(x_t, t, label)`` to an array shaped like ``x_t`` (an :math:`\varepsilon`, :math:`x_0` or
:math:`v` prediction, see :class:`pplvi.diffusion.Diffusion`). ``t`` is the continuous time in [0, 1]; ``label`` an
integer class in ``[0, num_classes]`` where ``num_classes`` is the *null token* of classifier-free guidance (Ho &
Salimans 2022): one network is both the conditional and the unconditional model. ``num_classes = 0`` makes an
unconditional network (labels ignored). Batch with ``jax.vmap``.

The U-Net keeps equinox layers as its parameters but computes channels-last (NHWC) with stride-1 "SAME" convolutions
whose backward pass is itself a forward convolution (input gradient) and nine matrix products (weight gradient), see
:func:`conv_same`. XLA:CPU compiles convolutions inside ``while``/``scan`` loops (samplers, solvers, training
loops) through a slow generic path, measured on jax 0.11 (2 cores, 32 channels, 8x8, batch 128) at 20x
(channels-first forward), 15x (input gradient) and 30-50x (weight gradient) the cost outside a loop; in this form all
three stay on the fast path.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from pplvi import PPLVIError


def time_features(t, dim: int):
    """Sinusoidal features of ``1000 t`` (Vaswani et al. 2017; Ho et al. 2020), ``dim`` even."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
    a = 1000.0 * jnp.asarray(t, jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(a), jnp.cos(a)])


def _conv_nhwc(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv_same(x, w):
    """Stride-1 "SAME" convolution of ``x (N, H, W, Cin)`` with an odd-sized kernel ``w (kh, kw, Cin, Cout)``."""
    return _conv_nhwc(x, w)


def _conv_same_fwd(x, w):
    return _conv_nhwc(x, w), (x, w)


def _conv_same_bwd(res, g):
    x, w = res
    kh, kw = w.shape[:2]
    # input gradient: the correlation with the flipped, transposed kernel (again stride 1, "SAME")
    dx = _conv_nhwc(g, jnp.flip(w, (0, 1)).swapaxes(2, 3))
    # weight gradient: one matrix product per kernel offset
    ph, pw = kh // 2, kw // 2
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    h, wd = x.shape[1], x.shape[2]
    rows = [
        jnp.stack([jnp.einsum("nhwc,nhwo->co", xp[:, i:i + h, j:j + wd, :], g) for j in range(kw)])
        for i in range(kh)
    ]
    return dx, jnp.stack(rows)


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def _conv(layer: eqx.nn.Conv2d, h, stride: int = 1):
    """Apply an equinox ``Conv2d`` (weights (Cout, Cin, kh, kw), "SAME" padding) to one channels-last image."""
    w = jnp.transpose(layer.weight, (2, 3, 1, 0))
    out = conv_same(h[None], w)[0]
    if stride > 1:  # a stride-s convolution with padding k // 2 is the stride-1 one read every s pixels
        out = out[::stride, ::stride]
    return out if layer.bias is None else out + layer.bias.reshape(-1)


def _group_norm(gn: eqx.nn.GroupNorm, h):
    """An equinox ``GroupNorm`` applied to one channels-last image ``(H, W, C)``."""
    hh, ww, c = h.shape
    g = h.reshape(hh, ww, gn.groups, c // gn.groups)
    mean = jnp.mean(g, axis=(0, 1, 3), keepdims=True)
    var = jnp.var(g, axis=(0, 1, 3), keepdims=True)
    out = ((g - mean) * jax.lax.rsqrt(var + gn.eps)).reshape(hh, ww, c)
    return out * gn.weight + gn.bias if gn.channelwise_affine else out


class Conditioning(eqx.Module):
    """Time (sinusoidal + MLP) and class (learned embedding with a null token) into one vector."""

    time_mlp: eqx.nn.MLP
    label_embedding: eqx.nn.Embedding | None
    num_classes: int = eqx.field(static=True)
    features: int = eqx.field(static=True)

    def __init__(self, dim: int, num_classes: int, key, features: int = 64):
        k1, k2 = jax.random.split(key)
        self.features, self.num_classes = features, num_classes
        self.time_mlp = eqx.nn.MLP(features, dim, dim, depth=2, activation=jax.nn.silu, key=k1)
        self.label_embedding = eqx.nn.Embedding(num_classes + 1, dim, key=k2) if num_classes > 0 else None

    def __call__(self, t, label):
        e = self.time_mlp(time_features(t, self.features))
        if self.label_embedding is not None:
            e = e + self.label_embedding(jnp.asarray(label, jnp.int32))
        return e


class ResBlock(eqx.Module):
    """GroupNorm-SiLU-conv twice, the conditioning vector added in between, and a 1x1 skip when widths differ."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    cond: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, c_in: int, c_out: int, dim: int, key):
        k = jax.random.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(min(8, c_in), c_in)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, padding=1, key=k[0])
        self.cond = eqx.nn.Linear(dim, c_out, key=k[1])
        self.norm2 = eqx.nn.GroupNorm(min(8, c_out), c_out)
        self.conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, key=k[2])
        self.skip = eqx.nn.Conv2d(c_in, c_out, 1, key=k[3]) if c_in != c_out else None

    def __call__(self, x, e):
        """``x``: one channels-last image ``(H, W, C)``."""
        h = _conv(self.conv1, jax.nn.silu(_group_norm(self.norm1, x)))
        h = h + self.cond(jax.nn.silu(e))
        h = _conv(self.conv2, jax.nn.silu(_group_norm(self.norm2, h)))
        return h + (x if self.skip is None else _conv(self.skip, x))


class UNet(eqx.Module):
    """A small U-Net (Ronneberger et al. 2015; the DDPM variant of Ho et al. 2020 without attention): one residual
    block per level on the way down, two on the way up (with skip connections), strided-conv downsampling and
    nearest-neighbour upsampling. Spatial sizes must be divisible by ``2 ** (len(channels) - 1)``.

    ``UNet(in_channels=1, channels=(32, 64, 64), num_classes=10, key=key)`` has about 0.6 M parameters and fits
    28x28 MNIST; ``channels=(32, 64)`` suits 8x8 digits."""

    conditioning: Conditioning
    stem: eqx.nn.Conv2d
    down: list
    downsample: list
    middle: list
    up: list
    head_norm: eqx.nn.GroupNorm
    head: eqx.nn.Conv2d
    channels: tuple = eqx.field(static=True)

    def __init__(self, in_channels: int = 1, channels=(32, 64, 64), num_classes: int = 0, *, key, dim: int = 128):
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise PPLVIError("UNet: channels must name at least one level")
        keys = iter(jax.random.split(key, 4 * len(channels) + 8))
        self.channels = channels
        self.conditioning = Conditioning(dim, num_classes, next(keys))
        self.stem = eqx.nn.Conv2d(in_channels, channels[0], 3, padding=1, key=next(keys))
        self.down, self.downsample = [], []
        c_prev = channels[0]
        for i, c in enumerate(channels):
            self.down.append(ResBlock(c_prev, c, dim, next(keys)))
            c_prev = c
            if i < len(channels) - 1:
                self.downsample.append(eqx.nn.Conv2d(c, c, 3, stride=2, padding=1, key=next(keys)))
        self.middle = [ResBlock(c_prev, c_prev, dim, next(keys)), ResBlock(c_prev, c_prev, dim, next(keys))]
        self.up = []
        for c in reversed(channels):
            self.up.append(ResBlock(c_prev + c, c, dim, next(keys)))
            c_prev = c
        self.head_norm = eqx.nn.GroupNorm(min(8, channels[0]), channels[0])
        self.head = eqx.nn.Conv2d(channels[0], in_channels, 3, padding=1, key=next(keys))

    def __call__(self, x, t, label=0):
        if x.ndim != 3:
            raise PPLVIError(f"UNet expects one image shaped (channels, height, width), got shape {x.shape}")
        factor = 2 ** (len(self.channels) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise PPLVIError(
                f"UNet with {len(self.channels)} levels needs height and width divisible by {factor}; got {x.shape}"
            )
        return self.forward(x, self.conditioning(t, label))

    def forward(self, x, e, block_adapters=None):
        """The network given its conditioning vector ``e`` (``conditioning(t, label)``, possibly modified, e.g. by
        an adapter); ``x`` one image ``(channels, height, width)``. ``block_adapters``: optional callables, one per
        residual block in forward order (down, middle, up), each applied as ``h = h + adapter(h)`` to the block's
        channels-last output ``h`` (H, W, C); ``None`` is the plain network."""
        n_blocks = len(self.down) + len(self.middle) + len(self.up)
        if block_adapters is not None and len(block_adapters) != n_blocks:
            raise PPLVIError(f"UNet.forward: {len(block_adapters)} block adapters for {n_blocks} residual blocks")
        adapters = iter(block_adapters or [])

        def run(block, h):
            h = block(h, e)
            return h if block_adapters is None else h + next(adapters)(h)

        h = _conv(self.stem, jnp.transpose(x, (1, 2, 0)))
        skips = []
        for i, block in enumerate(self.down):
            h = run(block, h)
            skips.append(h)
            if i < len(self.downsample):
                h = _conv(self.downsample[i], h, stride=2)
        for block in self.middle:
            h = run(block, h)
        for block in self.up:
            s = skips.pop()
            if h.shape[:2] != s.shape[:2]:
                h = jnp.repeat(jnp.repeat(h, 2, axis=0), 2, axis=1)
            h = run(block, jnp.concatenate([h, s], axis=-1))
        out = _conv(self.head, jax.nn.silu(_group_norm(self.head_norm, h)))
        return jnp.transpose(out, (2, 0, 1))


class MLPDenoiser(eqx.Module):
    """An MLP denoiser for vectors ``x`` of shape ``(dim,)``: ``[x, time/class features]`` through ``depth`` SiLU
    layers of ``width`` units."""

    conditioning: Conditioning
    mlp: eqx.nn.MLP

    def __init__(self, dim: int, num_classes: int = 0, *, key, width: int = 128, depth: int = 3, cond_dim: int = 64):
        k1, k2 = jax.random.split(key)
        self.conditioning = Conditioning(cond_dim, num_classes, k1)
        self.mlp = eqx.nn.MLP(dim + cond_dim, dim, width, depth, activation=jax.nn.silu, key=k2)

    def __call__(self, x, t, label=0):
        if x.ndim != 1:
            raise PPLVIError(f"MLPDenoiser expects one vector shaped (dim,), got shape {x.shape}")
        return self.forward(x, self.conditioning(t, label))

    def forward(self, x, e):
        """The network given its conditioning vector ``e`` (``conditioning(t, label)``, possibly modified)."""
        return self.mlp(jnp.concatenate([x, e]))
