r"""Inverse problems with a diffusion prior, solved as variational inference (RED-Diff), with two baselines.

A measurement :math:`y = f(x_0) + \sigma_y n` of an unknown image :math:`x_0` is given through a *degradation
operator* :math:`f` (:class:`Inpainting`, :class:`SuperResolution`, :class:`GaussianBlur`, :class:`Denoising`,
:class:`MatrixOperator`); each has ``forward``, ``adjoint`` and the Moore–Penrose ``pinv``.

**RED-Diff** (Mardani, Song, Kautz & Vahdat, "A Variational Perspective on Solving Inverse Problems with Diffusion
Models", ICLR 2024) fits :math:`q(x_0 \mid y) = \mathcal N(\mu, s^2 I)` by minimizing

.. math::
    \ell(\mu) = \frac{\|y - f(\mu)\|^2}{2\sigma_y^2\, m}
      + \frac{\lambda}{d}\, \mathbb E_{t, \varepsilon}\!\left[ w_t\,
        \mathrm{sg}\!\left(\hat\varepsilon(x_t; t) - \varepsilon\right)^{\!\top} \mu \right],
    \qquad x_t = a_t \mu + s_t \varepsilon,

(:math:`m` measurements, :math:`d` pixels: the per-entry means of the paper's code; ``sg`` is
``jax.lax.stop_gradient``). Its gradient in :math:`\mu` is that of the data term plus
:math:`\tfrac{\lambda}{d} w_t(\hat\varepsilon - \varepsilon)`, the score-matching regularizer's gradient without the
denoiser's Jacobian. :func:`red_diff_objective` writes :math:`-\ell` as a pplvi objective (maximized) in which the
noise ``"eps"`` (and, for :math:`s > 0`, the posterior draw ``"x0"``; with ``random_time=True`` also the time ``"t"``)
are random choices; :func:`red_diff` runs Adam on :math:`\mu` visiting the times in descending order, from
:math:`t = 1` to ``t_min`` (the paper's schedule), starting from :math:`f^+(y)`. The weights :math:`w_t`
(:data:`WEIGHTINGS`) are functions of the noise level :math:`\sigma_t = s_t / a_t = \mathrm{SNR}_t^{-1/2}`; the
paper's default is :math:`w_t = \sigma_t` (``"sigma"``) with :math:`\lambda = 0.25`, Adam with learning rate 0.1 and
:math:`\beta = (0.9, 0.99)`.

For Gaussian data :math:`x_0 \sim \mathcal N(m_0, C)` the exact noise prediction is
:math:`\hat\varepsilon(x_t) = s_t A_t^{-1}(x_t - a_t m_0)`, :math:`A_t = a_t^2 C + s_t^2 I`, so the expected
regularizer gradient is linear, :math:`\tfrac{\lambda}{d} K (\mu - m_0)` with
:math:`K = \mathbb E_t[w_t a_t s_t A_t^{-1}]`, and for a linear :math:`f = H` the stationary point solves

.. math:: \Big(\tfrac{1}{\sigma_y^2 m} H^\top H + \tfrac{\lambda}{d} K\Big)\mu
          = \tfrac{1}{\sigma_y^2 m} H^\top y + \tfrac{\lambda}{d} K m_0

(:func:`gaussian_fixed_point`; :math:`t` uniform on the range ``red_diff`` visits).

**DPS** (Chung, Kim, Mccann, Klasky & Ye, "Diffusion Posterior Sampling for General Noisy Inverse Problems",
ICLR 2023), :func:`dps`: ancestral DDPM steps, each followed by
:math:`x_{s} \leftarrow x_{s} - \zeta \nabla_{x_t} \|y - f(\hat x_0(x_t))\|` (the network's Jacobian is needed).
**Pseudo-inverse**: :math:`f^+(y)`.

Quality: :func:`psnr` and :func:`ssim` (Wang, Bovik, Sheikh & Simoncelli 2004, Gaussian window
:math:`\sigma = 1.5`, 11x11, or 7x7 for images smaller than 11 pixels).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import optax

import pplvi
from pplvi import PPLVIError
from pplvi.diffusion.schedules import Schedule

# ----------------------------------------------------------------------------------------------------------------
# Degradation operators
# ----------------------------------------------------------------------------------------------------------------


class Operator(eqx.Module):
    """A degradation operator acting on a batch ``x`` of shape ``(B, *x_shape)``.

    ``forward(x)`` is :math:`f(x)`, ``adjoint(y)`` :math:`f^\\top y` and ``pinv(y)`` the Moore–Penrose
    pseudo-inverse :math:`f^+ y` (all linear here). ``num_measurements`` is :math:`m`, the entries of ``y`` that
    carry information (per example)."""

    x_shape: tuple = eqx.field(static=True)

    def _check(self, x, name="x"):
        if jnp.ndim(x) != len(self.x_shape) + 1 or tuple(jnp.shape(x)[1:]) != tuple(self.x_shape):
            raise PPLVIError(
                f"{type(self).__name__}: {name} must have shape (batch, {', '.join(map(str, self.x_shape))}), got "
                f"{tuple(jnp.shape(x))}"
            )

    def _check_y(self, y):
        want = self.y_shape
        if jnp.ndim(y) != len(want) + 1 or tuple(jnp.shape(y)[1:]) != tuple(want):
            raise PPLVIError(
                f"{type(self).__name__}: the measurement y must have shape (batch, {', '.join(map(str, want))}), "
                f"got {tuple(jnp.shape(y))}"
            )

    @property
    def y_shape(self) -> tuple:
        return tuple(self.x_shape)

    @property
    def num_measurements(self) -> float:
        return float(np.prod(self.y_shape))

    def forward(self, x):
        raise NotImplementedError

    def adjoint(self, y):
        raise NotImplementedError

    def pinv(self, y):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)


class Denoising(Operator):
    """:math:`f = I` (the measurement noise :math:`\\sigma_y` makes it a denoising problem)."""

    def __init__(self, x_shape):
        self.x_shape = tuple(x_shape)

    def forward(self, x):
        self._check(x)
        return x

    def adjoint(self, y):
        self._check_y(y)
        return y

    def pinv(self, y):
        self._check_y(y)
        return y


class Inpainting(Operator):
    """:math:`f(x) = M \\odot x` with a 0/1 mask ``M`` of shape ``x_shape`` (one mask for the batch) or
    ``(B, *x_shape)`` (one per example). ``y`` keeps ``x``'s shape, zeros where unobserved; :math:`f` is an
    orthogonal projection, so :math:`f^\\top = f^+ = f`. Build masks with :meth:`box` and :meth:`random`."""

    mask: jax.Array

    def __init__(self, mask, x_shape=None):
        mask = jnp.asarray(mask, jnp.float32)
        x_shape = tuple(x_shape) if x_shape is not None else tuple(mask.shape)
        if tuple(mask.shape) != x_shape and tuple(mask.shape[1:]) != x_shape:
            raise PPLVIError(f"Inpainting: the mask's shape {mask.shape} is neither x_shape {x_shape} nor "
                             f"(batch, *x_shape)")
        if not bool(jnp.all((mask == 0) | (mask == 1))):
            raise PPLVIError("Inpainting: the mask must hold only 0 and 1")
        self.mask, self.x_shape = mask, x_shape

    @classmethod
    def box(cls, x_shape, top: int, left: int, height: int, width: int) -> Inpainting:
        """Hide the ``height`` x ``width`` box at (``top``, ``left``) of every channel (images ``(C, H, W)``)."""
        if len(x_shape) != 3:
            raise PPLVIError(f"Inpainting.box: x_shape must be (C, H, W), got {tuple(x_shape)}")
        _, h, w = x_shape
        if not (0 <= top and 0 <= left and height > 0 and width > 0 and top + height <= h and left + width <= w):
            raise PPLVIError(f"Inpainting.box: the box {(top, left, height, width)} does not fit in {h}x{w}")
        mask = np.ones(x_shape, np.float32)
        mask[:, top : top + height, left : left + width] = 0.0
        return cls(mask)

    @classmethod
    def random(cls, key, x_shape, missing: float = 0.5, batch: int | None = None) -> Inpainting:
        """Hide each pixel independently with probability ``missing`` (the same pixel in every channel); one mask,
        or ``batch`` independent masks."""
        if not 0.0 <= missing < 1.0:
            raise PPLVIError(f"Inpainting.random: missing must be in [0, 1), got {missing}")
        x_shape = tuple(x_shape)
        lead = () if batch is None else (int(batch),)
        keep = jax.random.bernoulli(key, 1.0 - missing, lead + (1,) + x_shape[1:])
        return cls(jnp.broadcast_to(keep, lead + x_shape).astype(jnp.float32), x_shape)

    @property
    def num_measurements(self) -> float:
        per = self.mask.reshape((-1,) + self.x_shape).reshape(-1, int(np.prod(self.x_shape))).sum(-1)
        return float(jnp.mean(per))

    def _masked(self, v, name):
        (self._check if name == "x" else self._check_y)(v)
        if self.mask.ndim == len(self.x_shape) + 1 and v.shape[0] != self.mask.shape[0]:
            raise PPLVIError(f"Inpainting: {self.mask.shape[0]} per-example masks but a batch of {v.shape[0]}")
        return self.mask * v

    def forward(self, x):
        return self._masked(x, "x")

    def adjoint(self, y):
        return self._masked(y, "y")

    def pinv(self, y):
        return self._masked(y, "y")


class SuperResolution(Operator):
    """``factor``-times downsampling by average pooling of images ``(C, H, W)``: :math:`f = P`, each output pixel
    the mean of a ``factor`` x ``factor`` block. :math:`P P^\\top = I / k^2`, so :math:`P^+ = k^2 P^\\top` is
    nearest-neighbour upsampling."""

    factor: int = eqx.field(static=True)

    def __init__(self, x_shape, factor: int):
        x_shape = tuple(x_shape)
        factor = int(factor)
        if len(x_shape) != 3 or factor < 1 or x_shape[1] % factor or x_shape[2] % factor:
            raise PPLVIError(f"SuperResolution: need images (C, H, W) with H and W divisible by the factor; got "
                             f"x_shape {x_shape}, factor {factor}")
        self.x_shape, self.factor = x_shape, factor

    @property
    def y_shape(self):
        c, h, w = self.x_shape
        return (c, h // self.factor, w // self.factor)

    def forward(self, x):
        self._check(x)
        b, (c, h, w), k = x.shape[0], self.x_shape, self.factor
        return x.reshape(b, c, h // k, k, w // k, k).mean(axis=(3, 5))

    def _upsample(self, y):
        self._check_y(y)
        k = self.factor
        return jnp.repeat(jnp.repeat(y, k, axis=2), k, axis=3)

    def adjoint(self, y):
        return self._upsample(y) / self.factor**2

    def pinv(self, y):
        return self._upsample(y)


class GaussianBlur(Operator):
    """Circular convolution of images ``(C, H, W)`` with a normalized Gaussian kernel of width ``sigma`` pixels
    (``size`` x ``size`` taps), diagonal in the 2-D Fourier basis: :math:`f = F^{-1} \\mathrm{diag}(\\hat k) F`,
    :math:`f^\\top` uses :math:`\\overline{\\hat k}` and :math:`f^+` uses :math:`1/\\hat k` where
    :math:`|\\hat k| > ` ``rcond`` (zero elsewhere: the pseudo-inverse of the truncated operator)."""

    kernel_fft: jax.Array
    rcond: float = eqx.field(static=True)

    def __init__(self, x_shape, sigma: float = 1.0, size: int = 9, rcond: float = 1e-3):
        x_shape = tuple(x_shape)
        if len(x_shape) != 3 or sigma <= 0 or size < 1 or size > min(x_shape[1:]):
            raise PPLVIError(f"GaussianBlur: need images (C, H, W), sigma > 0 and 1 <= size <= min(H, W); got "
                             f"{x_shape}, sigma={sigma}, size={size}")
        r = np.arange(size) - (size - 1) / 2
        g = np.exp(-(r**2) / (2 * sigma**2))
        k2 = np.outer(g, g)
        k2 /= k2.sum()
        _, h, w = x_shape
        full = np.zeros((h, w))
        for i in range(size):  # centre the kernel at the origin (circularly)
            for j in range(size):
                full[(i - size // 2) % h, (j - size // 2) % w] += k2[i, j]
        self.kernel_fft = jnp.asarray(np.fft.fft2(full), jnp.complex64)
        self.x_shape, self.rcond = x_shape, float(rcond)

    def _apply(self, v, spectrum):
        return jnp.real(jnp.fft.ifft2(jnp.fft.fft2(v) * spectrum)).astype(v.dtype)

    def forward(self, x):
        self._check(x)
        return self._apply(x, self.kernel_fft)

    def adjoint(self, y):
        self._check_y(y)
        return self._apply(y, jnp.conj(self.kernel_fft))

    def pinv(self, y):
        self._check_y(y)
        k = self.kernel_fft
        keep = jnp.abs(k) > self.rcond
        return self._apply(y, jnp.where(keep, 1.0 / jnp.where(keep, k, 1.0), 0.0))


class MatrixOperator(Operator):
    """:math:`f(x) = H x` for flat vectors ``x`` of shape ``(B, d)``; ``H`` of shape ``(m, d)``."""

    matrix: jax.Array
    matrix_pinv: jax.Array

    def __init__(self, matrix):
        matrix = jnp.asarray(matrix, jnp.float32)
        if matrix.ndim != 2:
            raise PPLVIError(f"MatrixOperator: H must be a matrix, got shape {matrix.shape}")
        self.matrix, self.x_shape = matrix, (matrix.shape[1],)
        self.matrix_pinv = jnp.asarray(np.linalg.pinv(np.asarray(matrix, np.float64)), jnp.float32)

    @property
    def y_shape(self):
        return (self.matrix.shape[0],)

    def forward(self, x):
        self._check(x)
        return x @ self.matrix.T

    def adjoint(self, y):
        self._check_y(y)
        return y @ self.matrix

    def pinv(self, y):
        self._check_y(y)
        return y @ self.matrix_pinv.T


def measure(key, operator: Operator, x, sigma_y: float = 0.0):
    """:math:`y = f(x) + \\sigma_y n`, :math:`n \\sim \\mathcal N(0, I)` (unobserved inpainting entries stay 0)."""
    y = operator.forward(x)
    if sigma_y > 0:
        noise = sigma_y * jax.random.normal(key, y.shape)
        y = y + (operator.forward(noise) if isinstance(operator, Inpainting) else noise)
    return y


# ----------------------------------------------------------------------------------------------------------------
# RED-Diff
# ----------------------------------------------------------------------------------------------------------------

#: Weights :math:`w_t` as functions of :math:`\sigma_t = \mathrm{SNR}_t^{-1/2}` (the paper's ablation, its Fig. 9):
#: ``"sigma"`` (the default), ``"sqrt_sigma"``, ``"sigma_squared"`` (:math:`1/\mathrm{SNR}`), ``"log1p_sigma"``,
#: ``"clipped_sigma"`` (:math:`\min(\sigma_t, 1)`) and ``"constant"``.
WEIGHTINGS = {
    "sigma": lambda sig: sig,
    "sqrt_sigma": jnp.sqrt,
    "sigma_squared": jnp.square,
    "log1p_sigma": jnp.log1p,
    "clipped_sigma": lambda sig: jnp.minimum(sig, 1.0),
    "constant": lambda sig: jnp.ones_like(sig),
}


def _weight_fn(weighting: str):
    if weighting not in WEIGHTINGS:
        raise PPLVIError(f"red_diff: weighting must be one of {sorted(WEIGHTINGS)}, got {weighting!r}")
    return WEIGHTINGS[weighting]


def red_diff_weight(schedule: Schedule, t, weighting: str = "sigma"):
    """:math:`w_t` of the named weighting."""
    return _weight_fn(weighting)(schedule.sigma(t))


class GaussianPrior(eqx.Module):
    """The exact denoiser of Gaussian data :math:`\\mathcal N(m, C)` (flat vectors ``(B, d)``): ``eps(x_t, t)``
    with ``t`` a scalar or ``(B,)``, :math:`\\hat\\varepsilon = s_t (a_t^2 C + s_t^2 I)^{-1}(x_t - a_t m)`."""

    mean: jax.Array
    cov: jax.Array
    schedule: Schedule = eqx.field(static=True)

    def eps(self, x_t, t, labels=None):
        del labels
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x_t.shape[0],))
        eye = jnp.eye(self.mean.shape[0])

        def one(x, tt):
            a, s = self.schedule.signal_noise(tt)
            return s * jnp.linalg.solve(a**2 * self.cov + s**2 * eye, x - a * self.mean)

        return jax.vmap(one)(x_t, t)


def red_diff_objective(operator: Operator, schedule: Schedule, *, lam: float = 0.25, weighting: str = "sigma",
                       sigma_y: float = 1.0, sigma_x0: float = 0.0, random_time: bool = False,
                       t_range: tuple | None = None) -> pplvi.Objective:
    r"""RED-Diff's objective :math:`-\ell(\mu)` (see the module docs) as a pplvi objective
    ``obj(mu, denoiser, y, t)``, averaged over the batch ``mu`` of shape ``(B, *x_shape)``.

    ``denoiser`` has ``eps(x_t, t)`` for a batch (a :class:`~pplvi.diffusion.Diffusion`, unconditional, or
    :class:`GaussianPrior`); it is called on ``stop_gradient(x_t)`` and its output is stopped too, so no Jacobian of
    the network is ever formed. Random choices: ``"x0"`` :math:`\sim \mathcal N(\mu, s^2 I)` when ``sigma_x0 = s >
    0`` (reparameterized; ``s = 0`` is the deterministic limit :math:`x_0 = \mu`), ``"eps"`` :math:`\sim \mathcal
    N(0, I)`, and with ``random_time=True`` ``"t"`` :math:`\sim \mathcal U(t_{lo}, t_{hi})` per example (the
    argument ``t`` is then ignored; pass ``None``); otherwise ``t`` is the (scalar or ``(B,)``) time of this step."""
    wfn = _weight_fn(weighting)
    if lam < 0 or sigma_y <= 0 or sigma_x0 < 0:
        raise PPLVIError(f"red_diff_objective: need lam >= 0, sigma_y > 0, sigma_x0 >= 0; got {lam}, {sigma_y}, "
                         f"{sigma_x0}")
    t_lo, t_hi = t_range if t_range is not None else (schedule.t_min, 1.0)
    d = float(np.prod(operator.x_shape))
    m = operator.num_measurements

    @pplvi.objective
    def red_diff(mu, denoiser, y, t):
        operator._check(mu, "mu")
        operator._check_y(y)
        b = mu.shape[0]
        if sigma_x0 > 0:
            x0 = pplvi.sample("x0", nd.Normal(mu, sigma_x0).to_event(mu.ndim))
        else:
            x0 = mu
        if random_time:
            t = pplvi.sample("t", nd.Uniform(t_lo, t_hi).expand([b]).to_event(1))
        else:
            if t is None:
                raise PPLVIError("red_diff_objective: pass the time t of this step (or build the objective with "
                                 "random_time=True to make t a random choice)")
            t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        eps = pplvi.sample("eps", nd.Normal(jnp.zeros_like(mu), 1.0).to_event(mu.ndim))
        shape = (b,) + (1,) * (mu.ndim - 1)
        a, s = schedule.signal_noise(t)
        x_t = a.reshape(shape) * x0 + s.reshape(shape) * eps
        eps_hat = jax.lax.stop_gradient(denoiser.eps(jax.lax.stop_gradient(x_t), t))
        w = wfn(schedule.sigma(t)).reshape(shape)
        data_fit = jnp.sum((y - operator.forward(x0)) ** 2) / (2.0 * sigma_y**2 * m)
        regularizer = lam / d * jnp.sum(w * jax.lax.stop_gradient(eps_hat - eps) * x0)
        return -(data_fit + regularizer) / b

    return red_diff


class InverseResult(NamedTuple):
    x: jax.Array  # the reconstruction (B, *x_shape)
    nfe: int  # network evaluations per example
    seconds: float  # wall-clock time of the solve after compilation
    compile_seconds: float = 0.0  # time to trace and compile the solver's jitted program(s)


def red_diff(key, denoiser, operator: Operator, y, *, steps: int = 1000, lr: float = 0.1, lam: float = 0.25,
             weighting: str = "sigma", sigma_y: float = 1.0, sigma_x0: float = 0.0, random_time: bool = False,
             optimizer: optax.GradientTransformation | None = None, init=None, average_from: int | None = None,
             t_range: tuple | None = None, scan: bool = False) -> InverseResult:
    r"""Solve the inverse problem with RED-Diff: ``steps`` Adam steps (``lr``, :math:`\beta = (0.9, 0.99)`, or
    ``optimizer``) ascending :func:`red_diff_objective` in :math:`\mu`, from ``init`` (default :math:`f^+(y)`).
    Times go from ``t_range[1]`` (default 1) down to ``t_range[0]`` (default ``t_min``) in equal steps, one
    step each; with ``random_time=True`` each step draws its own times. ``average_from``: return the mean of the
    iterates from that step on (Polyak averaging, for fixed-point checks) instead of the last one. ``scan=True``
    runs the loop as one ``lax.scan`` (fast for small models), otherwise one jitted call per step (the fast choice
    for convolutional networks on CPU). Returns :class:`InverseResult` (``nfe = steps``)."""
    if int(steps) < 1:
        raise PPLVIError(f"red_diff: steps must be >= 1, got {steps}")
    if average_from is not None and not 0 <= average_from < steps:
        raise PPLVIError(f"red_diff: average_from must be in [0, steps), got {average_from}")
    schedule = denoiser.schedule
    operator._check_y(y)
    obj = red_diff_objective(operator, schedule, lam=lam, weighting=weighting, sigma_y=sigma_y, sigma_x0=sigma_x0,
                             random_time=random_time, t_range=t_range)
    t_lo, t_hi = t_range if t_range is not None else (schedule.t_min, 1.0)
    times = jnp.linspace(t_hi, t_lo, int(steps))
    opt = optimizer if optimizer is not None else optax.adam(lr, b1=0.9, b2=0.99)
    mu = operator.pinv(y) if init is None else jnp.asarray(init, jnp.float32)
    operator._check(mu, "init")
    start = 0 if average_from is None else int(average_from)

    def step(carry, inp):
        mu, state, total = carry
        k, t, i = inp
        grad = obj.grad(k, mu, denoiser, y, t)
        updates, state = opt.update(jax.tree.map(jnp.negative, grad), state, mu)
        mu = optax.apply_updates(mu, updates)
        total = total + jnp.where(i >= start, 1.0, 0.0) * mu
        return (mu, state, total), None

    keys = jax.random.split(key, int(steps))
    idx = jnp.arange(int(steps))
    carry = (mu, opt.init(mu), jnp.zeros_like(mu))
    t0 = time.perf_counter()
    if scan:
        run = jax.jit(lambda c: jax.lax.scan(step, c, (keys, times, idx))[0]).lower(carry).compile()
        t1 = time.perf_counter()
        carry = run(carry)
    else:
        jstep = jax.jit(lambda c, k, t, i: step(c, (k, t, i))[0]).lower(carry, keys[0], times[0], idx[0]).compile()
        t1 = time.perf_counter()
        for i in range(int(steps)):
            carry = jstep(carry, keys[i], times[i], idx[i])
    mu, _, total = carry
    out = mu if average_from is None else total / (int(steps) - start)
    out = jax.block_until_ready(out)
    return InverseResult(out, int(steps), time.perf_counter() - t1, t1 - t0)


def gaussian_fixed_point(operator: MatrixOperator, y, mean, cov, schedule: Schedule, *, lam: float = 0.25,
                         weighting: str = "sigma", sigma_y: float = 1.0, t_range: tuple | None = None,
                         panels: int = 2000):
    r"""The stationary point of RED-Diff's expected loss (time uniform on ``t_range``) for Gaussian data
    :math:`\mathcal N(m_0, C)` and a linear operator :math:`H`: the solution of
    :math:`(\tfrac{1}{\sigma_y^2 m} H^\top H + \tfrac{\lambda}{d} K)\mu = \tfrac{1}{\sigma_y^2 m} H^\top y +
    \tfrac{\lambda}{d} K m_0` with :math:`K = \mathbb E_t[w_t a_t s_t (a_t^2 C + s_t^2 I)^{-1}]` by composite
    8-point Gauss–Legendre quadrature on ``panels`` equal panels (float64 NumPy).
    ``y`` of shape ``(B, m)``; returns ``(B, d)``."""
    t_lo, t_hi = t_range if t_range is not None else (schedule.t_min, 1.0)
    wfn = _weight_fn(weighting)
    h = np.asarray(operator.matrix, np.float64)
    c = np.asarray(cov, np.float64)
    m0 = np.asarray(mean, np.float64)
    d = h.shape[1]
    u, wq = np.polynomial.legendre.leggauss(8)
    edges = np.linspace(t_lo, t_hi, int(panels) + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    ts = ((edges[:-1, None] + edges[1:, None]) / 2 + half * u[None]).ravel()
    wq = (half * wq[None]).ravel() / (t_hi - t_lo)  # the mean over a uniform t
    ab = np.asarray(schedule.alpha_bar(jnp.asarray(ts, jnp.float32)), np.float64)
    a, s = np.sqrt(ab), np.sqrt(1 - ab)
    w = np.asarray(wfn(jnp.asarray(s / a)), np.float64)
    evals, evecs = np.linalg.eigh(c)
    # K = V diag(E_t[w a s / (a^2 lambda_i + s^2)]) V^T
    kdiag = np.sum(wq[:, None] * (w * a * s)[:, None] / (a[:, None] ** 2 * evals[None] + s[:, None] ** 2), 0)
    k = evecs @ np.diag(kdiag) @ evecs.T
    m = h.shape[0]
    lhs = h.T @ h / (sigma_y**2 * m) + lam / d * k
    rhs = np.asarray(y, np.float64) @ h / (sigma_y**2 * m) + lam / d * (k @ m0)[None]
    return np.linalg.solve(lhs, rhs.T).T


# ----------------------------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------------------------


def pinv(operator: Operator, y) -> InverseResult:
    """The pseudo-inverse reconstruction :math:`f^+(y)` (no network)."""
    t0 = time.perf_counter()
    x = jax.block_until_ready(operator.pinv(y))
    return InverseResult(x, 0, time.perf_counter() - t0, 0.0)


def dps(key, denoiser, operator: Operator, y, *, steps: int = 1000, zeta: float = 1.0, clip: tuple | None = (-1, 1),
        scan: bool = False) -> InverseResult:
    r"""Diffusion posterior sampling (Chung et al. 2023, Algorithm 1): from :math:`x_1 \sim \mathcal N(0, I)`,
    ``steps`` ancestral DDPM steps on equally spaced times from 1 to ``t_min``, each

    .. math:: x_s = \tilde\mu_{s|t}(x_t, \hat x_0) + \tilde\sigma_{s|t} z
              - \zeta\, \nabla_{x_t} \|y - f(\hat x_0(x_t))\|,

    with :math:`\hat x_0(x_t) = (x_t - s_t \hat\varepsilon)/a_t` (clipped to ``clip`` in the posterior mean) and the
    norm taken per example; returns the final :math:`\hat x_0`. ``nfe = steps + 1`` forward passes (the last one
    for the final :math:`\hat x_0`), ``steps`` of them with a backward pass through the network."""
    if int(steps) < 1:
        raise PPLVIError(f"dps: steps must be >= 1, got {steps}")
    operator._check_y(y)
    schedule = denoiser.schedule
    shape = (y.shape[0],) + tuple(operator.x_shape)
    k0, key = jax.random.split(key)
    x = jax.random.normal(k0, shape)
    times = jnp.linspace(1.0, schedule.t_min, int(steps) + 1)

    def x0_of(x, t):
        a, s = schedule.signal_noise(t)
        return (x - s * denoiser.eps(x, t)) / a

    def residual_norms(x, t):
        x0 = x0_of(x, t)
        r = (y - operator.forward(x0)).reshape(x.shape[0], -1)
        return jnp.sum(jnp.sqrt(jnp.sum(r**2, -1) + 1e-12)), x0

    def step(x, inp):
        t, s_time, k = inp
        grad, x0 = jax.grad(residual_norms, has_aux=True)(x, t)
        x0c = x0 if clip is None else jnp.clip(x0, *clip)
        ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s_time)
        alpha_ts = ab_t / ab_s
        var_ts = 1.0 - alpha_ts
        mean = (jnp.sqrt(ab_s) * var_ts / (1 - ab_t)) * x0c + (jnp.sqrt(alpha_ts) * (1 - ab_s) / (1 - ab_t)) * x
        std = jnp.sqrt(var_ts * (1 - ab_s) / (1 - ab_t))
        x_new = mean + std * jax.random.normal(k, x.shape) - zeta * grad
        return x_new, None

    keys = jax.random.split(key, int(steps))
    t0 = time.perf_counter()
    if scan:
        run = jax.jit(lambda x: jax.lax.scan(step, x, (times[:-1], times[1:], keys))[0]).lower(x).compile()
        t1 = time.perf_counter()
        x = run(x)
    else:
        jstep = jax.jit(lambda x, t, s, k: step(x, (t, s, k))[0]).lower(x, times[0], times[1], keys[0]).compile()
        t1 = time.perf_counter()
        for i in range(int(steps)):
            x = jstep(x, times[i], times[i + 1], keys[i])
    x0 = x0_of(x, times[-1])
    x0 = jax.block_until_ready(x0 if clip is None else jnp.clip(x0, *clip))
    return InverseResult(x0, int(steps) + 1, time.perf_counter() - t1, t1 - t0)


# ----------------------------------------------------------------------------------------------------------------
# Quality
# ----------------------------------------------------------------------------------------------------------------


def _images(a, name):
    a = jnp.asarray(a, jnp.float32)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise PPLVIError(f"{name}: images must have shape (N, H, W) or (N, 1, H, W), got {a.shape}")
    return a


def psnr(x, ref, data_range: float = 1.0):
    """Peak signal-to-noise ratio per image, :math:`10\\log_{10}(R^2 / \\mathrm{MSE})` (dB), for images
    ``(N, H, W)`` (or ``(N, 1, H, W)``) with range ``data_range``."""
    x, ref = _images(x, "psnr"), _images(ref, "psnr")
    if x.shape != ref.shape:
        raise PPLVIError(f"psnr: shapes differ, {x.shape} vs {ref.shape}")
    mse = jnp.mean((x - ref) ** 2, axis=(1, 2))
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-20))


def ssim(x, ref, data_range: float = 1.0, sigma: float = 1.5, window: int | None = None):
    r"""Structural similarity per image (Wang et al. 2004): the mean over valid window positions of

    .. math:: \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}{(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 +
              C_2)},\quad C_1 = (0.01 R)^2,\ C_2 = (0.03 R)^2,

    local statistics weighted by a Gaussian window (``sigma`` 1.5; ``window`` 11, or 7 for images smaller than 11
    pixels), with the unbiased (N/(N-1)) covariance as in scikit-image's ``gaussian_weights=True``."""
    x, ref = _images(x, "ssim"), _images(ref, "ssim")
    if x.shape != ref.shape:
        raise PPLVIError(f"ssim: shapes differ, {x.shape} vs {ref.shape}")
    size = min(x.shape[1:])
    window = window or (11 if size >= 11 else 7)
    if window > size or window % 2 == 0:
        raise PPLVIError(f"ssim: the window ({window}) must be odd and fit in the images ({x.shape[1:]})")
    r = jnp.arange(window) - (window - 1) / 2
    g = jnp.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()

    def conv_valid(img):
        h = jax.vmap(jax.vmap(lambda row: jnp.convolve(row, g, mode="valid")))(img)  # along W
        h = jnp.swapaxes(h, 1, 2)
        h = jax.vmap(jax.vmap(lambda col: jnp.convolve(col, g, mode="valid")))(h)  # along H
        return jnp.swapaxes(h, 1, 2)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n = window * window
    cov_norm = n / (n - 1.0)
    ux, uy = conv_valid(x), conv_valid(ref)
    vx = cov_norm * (conv_valid(x * x) - ux**2)
    vy = cov_norm * (conv_valid(ref * ref) - uy**2)
    vxy = cov_norm * (conv_valid(x * ref) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(1, 2))


__all__ = [
    "Denoising", "GaussianBlur", "GaussianPrior", "Inpainting", "InverseResult", "MatrixOperator", "Operator",
    "SuperResolution", "WEIGHTINGS", "dps", "gaussian_fixed_point", "measure", "pinv", "psnr", "red_diff",
    "red_diff_objective", "red_diff_weight", "ssim",
]

