r"""Noise schedules of variance-preserving diffusions, in continuous time :math:`t \in [0, 1]`.

A schedule is the decreasing signal fraction :math:`\bar\alpha(t)` of

.. math:: x_t = \sqrt{\bar\alpha(t)}\, x_0 + \sqrt{1 - \bar\alpha(t)}\, \varepsilon,
          \qquad \varepsilon \sim \mathcal N(0, I),

equivalently its noise level :math:`\sigma(t) = \sqrt{(1-\bar\alpha)/\bar\alpha}` (the variance-exploding view
:math:`x_t / \sqrt{\bar\alpha} = x_0 + \sigma \varepsilon` used by the ODE samplers) or its log signal-to-noise ratio
:math:`\lambda(t) = -2 \log \sigma(t)`. Every schedule has a closed-form inverse :meth:`Schedule.t_of_sigma`, so a
sampler can place its steps in whichever variable it likes and still query the network at a time it was trained on.

* :class:`LinearSchedule`: DDPM's linear betas (Ho et al. 2020) in the continuous limit of Song et al. (2021),
  :math:`\bar\alpha(t) = \exp(-\beta_{\min} t - \tfrac12 (\beta_{\max} - \beta_{\min}) t^2)`; with the defaults
  (0.1, 20), :math:`t = i / 1000` reproduces DDPM's 1,000-step discrete schedule.
* :class:`CosineSchedule`: Nichol & Dhariwal (2021), :math:`\bar\alpha(t) = f(t)/f(0)`,
  :math:`f(t) = \cos^2(\tfrac{t + s}{1 + s} \tfrac\pi2)`, clipped at :math:`\bar\alpha_{\min}`.
* :class:`EDMSchedule`: Karras et al. (2022) noise levels,
  :math:`\sigma(t) = (\sigma_{\min}^{1/\rho} + t(\sigma_{\max}^{1/\rho} - \sigma_{\min}^{1/\rho}))^\rho`.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from pplvi import PPLVIError


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class: subclasses define :meth:`alpha_bar` and :meth:`t_of_sigma`. Frozen and hashable (a static
    argument under ``jax.jit``). ``t_min`` is the smallest time trained on and sampled to."""

    t_min: float = 1e-3

    def alpha_bar(self, t):
        raise NotImplementedError

    def t_of_sigma(self, sigma):
        raise NotImplementedError

    def sigma(self, t):
        """Noise level of the variance-exploding view, :math:`\\sqrt{(1 - \\bar\\alpha)/\\bar\\alpha}`."""
        ab = self.alpha_bar(t)
        return jnp.sqrt((1.0 - ab) / ab)

    def log_snr(self, t):
        """:math:`\\lambda(t) = \\log(\\bar\\alpha / (1 - \\bar\\alpha))`, decreasing in ``t``."""
        ab = self.alpha_bar(t)
        return jnp.log(ab) - jnp.log1p(-ab)

    def signal_noise(self, t):
        """``(sqrt(alpha_bar), sqrt(1 - alpha_bar))``: the scales of :math:`x_0` and :math:`\\varepsilon` in
        :math:`x_t`."""
        ab = self.alpha_bar(t)
        return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)

    def sigma_max(self) -> float:
        return float(self.sigma(1.0))

    def sigma_min(self) -> float:
        return float(self.sigma(self.t_min))


@dataclasses.dataclass(frozen=True)
class LinearSchedule(Schedule):
    """DDPM's linear :math:`\\beta(t) = \\beta_{\\min} + t(\\beta_{\\max} - \\beta_{\\min})` (continuous time)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        if not 0 <= self.beta_min < self.beta_max:
            raise PPLVIError(f"LinearSchedule: need 0 <= beta_min < beta_max, got {self.beta_min}, {self.beta_max}")

    def alpha_bar(self, t):
        t = jnp.asarray(t, jnp.float32)
        return jnp.exp(-self.beta_min * t - 0.5 * (self.beta_max - self.beta_min) * t**2)

    def t_of_sigma(self, sigma):
        # solve 0.5 (bmax - bmin) t^2 + bmin t = log(1 + sigma^2)
        c = jnp.log1p(jnp.asarray(sigma, jnp.float32) ** 2)
        d = self.beta_max - self.beta_min
        return (-self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * d * c)) / d


@dataclasses.dataclass(frozen=True)
class CosineSchedule(Schedule):
    """Nichol & Dhariwal's cosine schedule with offset ``s``; :math:`\\bar\\alpha` is clipped below at
    ``alpha_bar_min`` so that :math:`\\sigma(1)` stays finite."""

    s: float = 0.008
    alpha_bar_min: float = 1e-4

    def _f(self, t):
        return jnp.cos((t + self.s) / (1.0 + self.s) * (math.pi / 2)) ** 2

    def alpha_bar(self, t):
        t = jnp.asarray(t, jnp.float32)
        return jnp.clip(self._f(t) / self._f(0.0), self.alpha_bar_min, 1.0)

    def t_of_sigma(self, sigma):
        ab = 1.0 / (1.0 + jnp.asarray(sigma, jnp.float32) ** 2)
        ab = jnp.clip(ab, self.alpha_bar_min, 1.0)
        t = jnp.arccos(jnp.sqrt(ab * self._f(0.0))) * (2.0 / math.pi) * (1.0 + self.s) - self.s
        return jnp.clip(t, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class EDMSchedule(Schedule):
    """Karras et al.'s noise levels, :math:`\\sigma` from ``sigma_min`` (t = 0) to ``sigma_max`` (t = 1) with
    exponent ``rho``."""

    sigma_lo: float = 0.002
    sigma_hi: float = 80.0
    rho: float = 7.0
    t_min: float = 0.0

    def __post_init__(self):
        if not 0 < self.sigma_lo < self.sigma_hi:
            raise PPLVIError(f"EDMSchedule: need 0 < sigma_lo < sigma_hi, got {self.sigma_lo}, {self.sigma_hi}")

    def sigma(self, t):
        t = jnp.asarray(t, jnp.float32)
        lo, hi = self.sigma_lo ** (1 / self.rho), self.sigma_hi ** (1 / self.rho)
        return (lo + t * (hi - lo)) ** self.rho

    def alpha_bar(self, t):
        return 1.0 / (1.0 + self.sigma(t) ** 2)

    def log_snr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def t_of_sigma(self, sigma):
        lo, hi = self.sigma_lo ** (1 / self.rho), self.sigma_hi ** (1 / self.rho)
        return (jnp.asarray(sigma, jnp.float32) ** (1 / self.rho) - lo) / (hi - lo)


SCHEDULES = {"linear": LinearSchedule, "cosine": CosineSchedule, "edm": EDMSchedule}


def schedule(name: str, **kwargs) -> Schedule:
    """A schedule by name: ``"linear"``, ``"cosine"`` or ``"edm"``."""
    if name not in SCHEDULES:
        raise PPLVIError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
