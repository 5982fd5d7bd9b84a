r"""A denoising diffusion model: a network, its noise schedule and what the network predicts; and its training
objective, a (reweighted) ELBO written as a pplvi objective.

Forward process :math:`x_t = a_t x_0 + s_t \varepsilon` with :math:`a_t = \sqrt{\bar\alpha(t)}`,
:math:`s_t = \sqrt{1 - \bar\alpha(t)}` (see :mod:`pplvi.diffusion.schedules`). The network predicts one of

* ``"eps"``: :math:`\hat\varepsilon` (Ho et al. 2020); :math:`\hat x_0 = (x_t - s_t \hat\varepsilon)/a_t`;
* ``"x0"``: :math:`\hat x_0`; :math:`\hat\varepsilon = (x_t - a_t \hat x_0)/s_t`;
* ``"v"``: :math:`\hat v`, :math:`v = a_t \varepsilon - s_t x_0` (Salimans & Ho 2022);
  :math:`\hat x_0 = a_t x_t - s_t \hat v`, :math:`\hat\varepsilon = s_t x_t + a_t \hat v`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as nd

import pplvi
from pplvi import PPLVIError
from pplvi.diffusion.schedules import LinearSchedule, Schedule

PREDICTIONS = ("eps", "x0", "v")


class Diffusion(eqx.Module):
    """``Diffusion(net, schedule, prediction="eps", num_classes=0)``.

    ``net(x_t, t, label)`` acts on one example; the methods here take a batch ``x_t`` of shape ``(B, *shape)``,
    ``t`` a scalar or ``(B,)``, ``labels`` ``None`` (unconditional: the null token), a scalar or ``(B,)``. The null
    token is ``num_classes`` (:attr:`null_label`)."""

    net: eqx.Module
    schedule: Schedule = eqx.field(static=True)
    prediction: str = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def __init__(self, net, schedule: Schedule | None = None, prediction: str = "eps", num_classes: int = 0):
        if prediction not in PREDICTIONS:
            raise PPLVIError(f"Diffusion: prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.net, self.schedule = net, schedule or LinearSchedule()
        self.prediction, self.num_classes = prediction, int(num_classes)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def _labels(self, labels, n):
        if labels is None:
            labels = self.num_classes
        return jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (n,))

    def raw(self, x_t, t, labels=None):
        """The network's own output for a batch."""
        n = x_t.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,))
        return jax.vmap(self.net)(x_t, t, self._labels(labels, n))

    def _scales(self, t, x_t):
        a, s = self.schedule.signal_noise(jnp.asarray(t, jnp.float32))
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        return jnp.reshape(a, shape) if jnp.ndim(a) else a, jnp.reshape(s, shape) if jnp.ndim(s) else s

    def eps(self, x_t, t, labels=None):
        """:math:`\\hat\\varepsilon(x_t, t)`."""
        return self.convert(self.raw(x_t, t, labels), x_t, t, to="eps")

    def x0(self, x_t, t, labels=None):
        """:math:`\\hat x_0(x_t, t)` (Tweedie's posterior mean when the network is optimal)."""
        return self.convert(self.raw(x_t, t, labels), x_t, t, to="x0")

    def convert(self, pred, x_t, t, to: str, frm: str | None = None):
        """Convert a prediction ``pred`` (in ``frm``, default this model's ``prediction``) to ``to``."""
        frm = frm or self.prediction
        if to not in PREDICTIONS or frm not in PREDICTIONS:
            raise PPLVIError(f"convert: predictions are {PREDICTIONS}, got {frm!r} -> {to!r}")
        a, s = self._scales(t, x_t)
        if frm == to:
            return pred
        if frm == "eps":
            eps, x0 = pred, (x_t - s * pred) / a
        elif frm == "x0":
            eps, x0 = (x_t - a * pred) / s, pred
        else:
            eps, x0 = s * x_t + a * pred, a * x_t - s * pred
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[to]


def denoising_objective(weighting: str = "simple", p_uncond: float = 0.0) -> pplvi.Objective:
    r"""The diffusion training objective as a pplvi objective ``obj(model, x0, labels=None)`` (maximized: it is
    minus the per-example loss, averaged over the batch).

    Per example, the time :math:`t \sim \mathcal U(t_{\min}, 1)` and the noise :math:`\varepsilon \sim \mathcal N(0,
    I)` are random choices ``"t"`` and ``"eps"``; with ``p_uncond > 0`` a Bernoulli choice ``"drop"`` replaces the
    label by the null token (classifier-free guidance training, Ho & Salimans 2022). The loss is measured in the
    model's own prediction space (``"eps"``, ``"x0"`` or ``"v"``), weighted by

    * ``"simple"``: 1 (Ho et al.'s :math:`L_{\text{simple}}`, a reweighted ELBO);
    * ``"elbo"``: the continuous-time variational bound's weight (Kingma et al. 2021, VDM):
      :math:`-\mathcal L_\infty = -\tfrac12 \mathbb E_{t, \varepsilon}[-\lambda'(t)\,
      \|\varepsilon - \hat\varepsilon\|^2]`, converted to the prediction space (``x0``: times
      :math:`e^{\lambda}`, ``v``: times :math:`1/(1 + e^{-\lambda})`), with :math:`t` uniform on
      :math:`[t_{\min}, 1]` (the bound's diffusion term over that interval, up to the factor :math:`1 - t_{\min}`).

    With ``"elbo"`` and ``t_min -> 0`` this is the model's ELBO minus the prior and reconstruction terms."""
    if weighting not in ("simple", "elbo"):
        raise PPLVIError(f"denoising_objective: weighting must be 'simple' or 'elbo', got {weighting!r}")
    if not 0.0 <= p_uncond < 1.0:
        raise PPLVIError(f"denoising_objective: p_uncond must be in [0, 1), got {p_uncond}")

    @pplvi.objective
    def denoising(model: Diffusion, x0, labels=None):
        sched = model.schedule
        if labels is None:
            labels = jnp.full((x0.shape[0],), model.null_label, jnp.int32)

        def one(x, y):
            t = pplvi.sample("t", nd.Uniform(sched.t_min, 1.0))
            eps = pplvi.sample("eps", nd.Normal(jnp.zeros_like(x), 1.0).to_event(x.ndim))
            if p_uncond > 0.0 and model.num_classes > 0:
                drop = pplvi.sample("drop", nd.Bernoulli(probs=p_uncond))
                y = jnp.where(drop > 0, model.null_label, y)
            a, s = sched.signal_noise(t)
            x_t = a * x + s * eps
            pred = model.net(x_t, t, y)
            target = {"eps": eps, "x0": x, "v": a * eps - s * x}[model.prediction]
            err = jnp.sum((pred - target) ** 2)
            if weighting == "elbo":
                lam = lambda u: sched.log_snr(u)  # noqa: E731
                w = -jax.grad(lam)(t) * 0.5
                w = w * {"eps": 1.0, "x0": jnp.exp(lam(t)), "v": jax.nn.sigmoid(lam(t))}[model.prediction]
                err = w * err
            return -err

        return jnp.mean(jax.vmap(one)(x0, jnp.asarray(labels, jnp.int32)))

    return denoising
