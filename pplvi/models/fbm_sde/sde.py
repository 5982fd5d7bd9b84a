r"""SDEs driven by Markov-approximate fBM: the augmented state, its Euler-Maruyama solver inside objectives, and the
Girsanov path KL (Daems, Opper, Crevecoeur & Birdal, ICLR 2024, Sections 3-4).

Prior. With the driver of :class:`~pplvi.models.fbm_sde.markov.MarkovFBM`, :math:`d\hat B^H = \sum_k \omega_k dY^k`,
the SDE :math:`dX = b_\theta(X, t)\,dt + s_\theta(X, t)\,d\hat B^H_t` becomes a Markov SDE on the augmented state
:math:`Z = (X, Y^1, \dots, Y^K)` (per latent dimension, one scalar Brownian motion :math:`B`):

.. math:: dY^k = -\gamma_k Y^k\,dt + dB, \qquad
          dX = \Big(b_\theta - s_\theta \sum_k \omega_k \gamma_k Y^k\Big) dt + s_\theta\,\bar\omega\,dB, \quad
          \bar\omega = \textstyle\sum_k \omega_k .

Posterior. The variational posterior adds a control :math:`u_\phi(Z, t)` to every OU drift, :math:`dY^k =
(-\gamma_k Y^k + u_\phi)\,dt + dB` (and so :math:`s_\theta \bar\omega u_\phi` to the drift of :math:`X`). The drift
difference is the diffusion column times :math:`u_\phi`, so Girsanov's theorem gives

.. math:: \mathrm{KL}(Q \,\|\, P) = \mathrm{KL}(q(X_0) \,\|\, p(X_0)) + \mathbb E_Q \int_0^T \tfrac12 \|u_\phi\|^2\,dt,
          \qquad \mathrm{ELBO} = \mathbb E_Q \sum_i \log p(o_i \mid X_{t_i}) - \mathrm{KL}(Q \,\|\, P).

Discretization. Euler-Maruyama with steps :math:`\Delta t_n` on a fixed grid (uniform, or refined towards the
observation times by :func:`refined_steps`): :math:`\Delta B_n \sim \mathcal N(0,
\Delta t)` per latent dimension is a reparameterized ``pplvi.sample`` site (address ``"dB"``) inside a
``jax.lax.scan``, so the objective's gradient is the pathwise one. For the discretized chains the path KL is exactly
:math:`\sum_n \frac12 \|u_n\|^2 \Delta t` (each step shifts the mean of one :math:`\mathcal N(0, \Delta t)` by
:math:`u_n \Delta t`), so the ELBO below is a true bound for the discrete model. The explicit OU steps are stable and
monotone only when :math:`\gamma_{\max} \Delta t < 1`; the solver requires :math:`\gamma_{\max} \Delta t \le 1/2`
(the paper's stability condition on the largest speed).

Why refine towards observations: under the posterior each step still injects the prior's noise
:math:`s_\theta \bar\omega\,\Delta B_n`, whatever the control, while the exact posterior of the discretized chain
has a smaller one-step variance (:math:`\Delta t_n / (1 + \Delta t_n\,q_n)`, :math:`q_n` the backward information
along the diffusion column). The smallest possible ELBO gap of a drift-only control is therefore
:math:`\sum_n \frac12 (\Delta t_n q_n - \log(1 + \Delta t_n q_n))` (:func:`~pplvi.models.fbm_sde.linear.
family_gap`), which is small only when every step is short compared with the time to the next observation plus
:math:`s^2 / (s_\theta \bar\omega)^2` (``s``: the observation noise std). A uniform grid fails this for rough
noise (large :math:`\bar\omega`); a grid refined geometrically towards each observation meets it with few steps.

Initial state. A type I driver starts its OU processes from their stationary law (the fBM's infinite past). The
observations are informative about it when :math:`H \ne 1/2`, so a posterior should learn its law too:
:class:`InitialOUPosterior` (Gaussian, in the prior's whitened coordinates, with the
:math:`\mathrm{KL}(q(Z_0) \,\|\, p(Z_0))` term of the ELBO); pass its :meth:`~InitialOUPosterior.sample` as
``y0`` to :func:`solve`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import pplvi
from pplvi.models.fbm_sde.markov import MarkovFBM, check_hurst

STABILITY = 0.5  # largest allowed gamma_max * dt


class Path(eqx.Module):
    """What :func:`solve` returns: ``xs`` (``(steps + 1, *batch, D)``, :math:`X` at every grid time, the initial
    state first), ``ys`` (``(steps + 1, *batch, D, K)``, the OU states) and ``path_kl`` (``(*batch,)``,
    :math:`\\sum_n \\frac12 \\|u_n\\|^2 \\Delta t` summed over latent dimensions)."""

    xs: jax.Array
    ys: jax.Array
    path_kl: jax.Array


def step_sizes(dt, steps: int):
    """``(steps,)`` step sizes from a float ``dt`` (uniform) or a sequence of ``steps`` sizes (NumPy float64)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise pplvi.ObjectiveError(f"steps must be a positive integer, got {steps!r}.")
    sizes = np.broadcast_to(np.asarray(dt, np.float64), (steps,)) if np.ndim(dt) == 0 else np.asarray(dt, np.float64)
    if sizes.shape != (steps,):
        raise pplvi.ObjectiveError(f"dt must be a number or have shape (steps,) = ({steps},), got {sizes.shape}.")
    if not np.all(sizes > 0):
        raise pplvi.ObjectiveError(f"the step dt must be positive, got {dt!r}.")
    return sizes


def refined_steps(observation_times, dt: float, ratio: float = 0.3, dt_min: float = 1e-5) -> np.ndarray:
    r"""Step sizes of a grid from 0 to the last of the sorted ``observation_times`` that is uniform (steps of at most
    ``dt``) away from observations and refined geometrically towards each of them: the steps just before an
    observation are :math:`\Delta t_{\min}` and then grow by the factor :math:`1 + \rho` (``ratio``), each about
    :math:`\rho` times the time to go, until they reach ``dt``. Every observation time is a grid time (use
    ``np.cumsum`` for the times and ``np.searchsorted`` for their step indices)."""
    if not (0 < ratio and 0 < dt_min <= dt):
        raise pplvi.ObjectiveError(f"need ratio > 0 and 0 < dt_min <= dt, got ratio={ratio!r}, dt_min={dt_min!r}, "
                                   f"dt={dt!r}.")
    sizes, start = [], 0.0
    for end in np.asarray(observation_times, np.float64):
        length = end - start
        if not length > 0:
            raise pplvi.ObjectiveError(f"observation times must be positive and increasing, got {observation_times!r}.")
        tail, to_go = [], 0.0
        step = min(dt_min, length)
        while step < dt and to_go + step < 0.5 * length:
            tail.append(step)
            to_go += step
            step = max(ratio * to_go, dt_min)
        rest = length - to_go
        m = int(np.ceil(rest / dt - 1e-9))
        sizes += [rest / m] * m + tail[::-1]
        start = end
    return np.asarray(sizes)


def check_step(noise: MarkovFBM, dt, steps: int) -> None:
    dt = float(np.max(step_sizes(dt, steps)))
    if max(noise.gammas) * dt > STABILITY:
        raise pplvi.ObjectiveError(
            f"Euler step too large for the fastest OU process: gamma_max * dt = {max(noise.gammas)} * {dt} = "
            f"{max(noise.gammas) * dt:.3g} > {STABILITY}. Use dt <= {STABILITY / max(noise.gammas):.4g} or a "
            "smaller gamma_max."
        )


def initial_ou_state(noise: MarkovFBM, shape: tuple, address: str = "y0"):
    r"""Inside an objective: :math:`Y_0` of shape ``(*shape, K)``. Type I: a draw from the stationary law
    :math:`\mathcal N(0, [1/(\gamma_i + \gamma_j)])` at ``address`` (the same under prior and posterior, so it adds
    nothing to the KL); type II: zeros."""
    if noise.kind == "II":
        return jnp.zeros((*shape, noise.K))
    cov = noise.initial_covariance()
    base = dist.MultivariateNormal(jnp.zeros(noise.K), covariance_matrix=cov)
    return pplvi.sample(address, base.expand(shape).to_event(len(shape)))


class InitialOUPosterior(eqx.Module):
    r"""A Gaussian posterior for the initial OU state of a type I driver, :math:`q(Y_0) = \mathcal N(R\,m,
    R S S^\top R^\top)` per latent dimension, in the prior's whitened coordinates: :math:`R` is the Cholesky factor
    of the stationary covariance :math:`[1 / (\gamma_i + \gamma_j)]` (fixed), ``mean`` :math:`m` is
    ``(*batch, D, K)`` (one per observed sequence when ``batch`` is not empty) and ``root`` :math:`S` is a shared
    ``(K, K)`` lower-triangular factor. :math:`m = 0, S = I` is the prior.

    Why: the ELBO (Daems et al., ICLR 2024, Section 4) is :math:`\mathbb E_Q \sum_i \log p(o_i \mid X_{t_i}) -
    \mathrm{KL}(q(Z_0) \,\|\, p(Z_0)) - \mathbb E_Q \int \tfrac12 \|u\|^2 dt`. A type I driver's stationary start
    :math:`Y_0` is the "infinite past" of the fBM; for :math:`H \ne 1/2` the observations carry information about it
    (the weights of the slow OU processes are large), so a posterior that keeps :math:`q(Y_0) = p(Y_0)` has an ELBO
    gap of at least :math:`\mathrm{KL}(p(Y_0) \,\|\, p(Y_0 \mid o))` (:func:`~pplvi.models.fbm_sde.linear.
    initial_state_gap`), which no control can close and which depends on :math:`H` (about 0 at :math:`H = 1/2`),
    so it biases a learned :math:`H` towards 1/2. In the whitened coordinates

    .. math:: \mathrm{KL}(q(Y_0) \,\|\, p(Y_0)) = \tfrac12 \big(\|S\|_F^2 + \|m\|^2 - K\big) - \log|\det S|,

    well conditioned even though the stationary covariance (nearly a Cauchy matrix) is not."""

    mean: jax.Array
    root: jax.Array

    @classmethod
    def prior(cls, K: int, D: int = 1, batch: tuple = ()):
        """The prior itself (``m = 0``, ``S = I``): the starting point of training."""
        return cls(jnp.zeros((*batch, D, K)), jnp.eye(K))

    def sample(self, noise: MarkovFBM, shape: tuple, address: str = "y0"):
        """Inside an objective: :math:`Y_0 = R (m + S \varepsilon)` of shape ``(*shape, K)`` (``shape`` ends with
        the mean's ``(*batch, D)``), :math:`\varepsilon` a reparameterized standard normal site at ``address``."""
        if noise.kind != "I":
            raise pplvi.ObjectiveError("InitialOUPosterior is for a type I driver (type II starts at Y_0 = 0).")
        if tuple(shape[len(shape) - self.mean.ndim + 1:]) != self.mean.shape[:-1]:
            raise pplvi.ObjectiveError(f"shape {shape} must end with the posterior's (*batch, D) = "
                                       f"{self.mean.shape[:-1]}.")
        K = noise.K
        dtype = self.mean.dtype
        base = dist.Normal(jnp.zeros((*shape, K), dtype), 1.0).to_event(len(shape) + 1)
        eps = pplvi.sample(address, base)
        chol = jnp.asarray(stationary_root(noise), dtype)
        whitened = self.mean + eps @ jnp.tril(self.root).T
        return whitened @ chol.T

    def kl(self):
        r""":math:`\mathrm{KL}(q(Y_0) \,\|\, p(Y_0))` summed over latent dimensions, ``(*batch,)``."""
        S = jnp.tril(self.root)
        K = S.shape[0]
        per_dimension = (0.5 * (jnp.sum(S ** 2) - K) - jnp.sum(jnp.log(jnp.abs(jnp.diag(S))))
                         + 0.5 * jnp.sum(self.mean ** 2, -1))
        return jnp.sum(per_dimension, -1)


def stationary_root(noise: MarkovFBM) -> np.ndarray:
    r"""The Cholesky factor (float64, NumPy) of a type I driver's stationary covariance :math:`[1/(\gamma_i +
    \gamma_j)]`."""
    g = np.asarray(noise.gammas, np.float64)
    return np.linalg.cholesky(1.0 / (g[:, None] + g[None, :]))


def sample_initial_ou_state(noise: MarkovFBM, key, shape: tuple):
    """Outside objectives: a draw of :math:`Y_0` (``(*shape, K)``) as in :func:`initial_ou_state`."""
    if noise.kind == "II":
        return jnp.zeros((*shape, noise.K))
    root = jnp.linalg.cholesky(noise.initial_covariance())
    return jax.random.normal(key, (*shape, noise.K)) @ root.T


def sample_increments(key, steps: int, shape: tuple, dt):
    r"""Outside objectives: ``(steps, *shape)`` Brownian increments, each :math:`\mathcal N(0, \Delta t_n)`
    (``dt``: a number or ``(steps,)`` step sizes)."""
    scale = jnp.sqrt(jnp.asarray(step_sizes(dt, steps), jnp.result_type(float)))
    return scale.reshape((steps,) + (1,) * len(shape)) * jax.random.normal(key, (steps, *shape))


def no_control(step, t, x, y):
    """The prior: :math:`u = 0`."""
    return jnp.zeros_like(x)


def solve(noise: MarkovFBM, hurst, drift, diffusion, x0, *, dt, steps: int, control=no_control,
          y0=None, increments=None, address: str = "dB") -> Path:
    r"""Inside an objective: Euler-Maruyama for the augmented SDE (module docstring) from ``x0`` (``(*batch, D)``)
    for ``steps`` steps of ``dt`` (a number, or ``(steps,)`` step sizes, e.g. from :func:`refined_steps`).

    ``drift(t, x)`` and ``diffusion(t, x)`` return arrays shaped like ``x`` (the diffusion is diagonal: one fBM per
    latent dimension); ``control(step, t, x, y)`` returns :math:`u` shaped like ``x`` from the step index, the time,
    :math:`X` and :math:`Y` (``(*batch, D, K)``). ``y0``: the initial OU state (default :func:`initial_ou_state`).
    The Brownian increments are reparameterized sample sites at ``address`` (one per step, shape of ``x0``).

    Outside an objective (plain simulation, e.g. to plot posterior paths), pass ``increments`` (``(steps, *batch,
    D)``, each :math:`\mathcal N(0, \Delta t)`) and ``y0`` (see :func:`sample_initial_ou_state`); then no sample
    sites are used."""
    check_hurst(hurst)
    check_step(noise, dt, steps)
    x0 = jnp.asarray(x0)
    if x0.ndim < 1:
        raise pplvi.ObjectiveError(f"x0 must have a trailing latent dimension (shape (*batch, D)), got shape "
                                   f"{x0.shape}; use x0[..., None] for a scalar SDE.")
    weights = noise.weights(hurst).astype(x0.dtype)
    gammas = noise.speed_array(x0.dtype)
    if increments is not None and y0 is None and noise.kind == "I":
        raise pplvi.ObjectiveError("with increments=, pass y0= too (sample_initial_ou_state) for a type I driver.")
    if y0 is None:
        y0 = initial_ou_state(noise, x0.shape)
    sizes = step_sizes(dt, steps)
    starts = jnp.asarray(np.concatenate([[0.0], np.cumsum(sizes)[:-1]]), x0.dtype)
    sizes = jnp.asarray(sizes, x0.dtype)

    def step(carry, inputs):
        x, y = carry
        n, t, dt, given = inputs
        increment = dist.Normal(jnp.zeros(x0.shape, x0.dtype), jnp.sqrt(dt)).to_event(x0.ndim)
        db = pplvi.sample(address, increment) if increments is None else given
        u = control(n, t, x, y)
        dy = (u[..., None] - gammas * y) * dt + db[..., None]
        x_next = x + drift(t, x) * dt + diffusion(t, x) * jnp.sum(weights * dy, -1)
        return (x_next, y + dy), (x_next, y + dy, 0.5 * jnp.sum(u ** 2, -1) * dt)

    if increments is not None and jnp.shape(increments) != (steps, *x0.shape):
        raise pplvi.ObjectiveError(f"increments must have shape (steps, *x0.shape) = {(steps, *x0.shape)}, got "
                                   f"{jnp.shape(increments)}.")
    _, (xs, ys, kls) = jax.lax.scan(step, (x0, y0), (jnp.arange(steps), starts, sizes, increments))
    xs = jnp.concatenate([x0[None], xs])
    ys = jnp.concatenate([y0[None], ys])
    return Path(xs, ys, jnp.sum(kls, 0))


class LinearFeedbackControl(eqx.Module):
    r"""A time-tabulated control affine in the augmented state, :math:`u_n = \rho_n\,(a_n + c_n^\top (X_n,
    Y^1_n, \dots, Y^K_n))` per latent dimension. For a linear-Gaussian prior (e.g. the fOU) and Gaussian observations
    the exact posterior is of this form in continuous time (Doob's h-transform of a Gaussian Markov process has a
    drift affine in the state), so this family contains it up to the discretization.

    ``offset`` :math:`a`: ``(steps, *batch, D)`` (a separate one per observed sequence when ``batch`` is not
    empty); ``gain`` :math:`c`: ``(steps, D, K + 1)``; ``rate`` :math:`\rho`: ``(steps,)``, fixed (not trained),
    default ones. A bridge's control grows like :math:`1 / (t_{\rm obs} - t)` before an observation; passing that
    as ``rate`` (:func:`time_to_go_rate`) keeps the trained parameters of order one."""

    offset: jax.Array
    gain: jax.Array
    rate: jax.Array

    @classmethod
    def zeros(cls, steps: int, D: int, K: int, batch: tuple = (), rate=None):
        rate = jnp.ones(steps) if rate is None else jnp.asarray(rate, jnp.result_type(float))
        if rate.shape != (steps,):
            raise pplvi.ObjectiveError(f"rate must have shape (steps,) = ({steps},), got {rate.shape}.")
        return cls(jnp.zeros((steps, *batch, D)), jnp.zeros((steps, D, K + 1)), rate)

    def __call__(self, step, t, x, y):
        state = jnp.concatenate([x[..., None], y], -1)
        rate = jax.lax.stop_gradient(self.rate[step])
        return rate * (self.offset[step] + jnp.sum(self.gain[step] * state, -1))


def time_to_go_rate(observation_steps, steps: int, dt, floor=0.0):
    r""":math:`\rho_n = 1 / (t_{\text{next observation}} - t_n + \epsilon)` for the grid steps ``0..steps-1`` given
    the sorted step indices of the observations (after the last observation: 1); ``dt`` a number or ``(steps,)``
    sizes; ``floor`` :math:`\epsilon` (may be traced). With observation noise std :math:`s` and a diffusion that is
    locally :math:`s_\theta\bar\omega\,dB`, the exact posterior control grows like :math:`1 / (t_{\rm obs} - t +
    s^2 / (s_\theta\bar\omega)^2)`, so that floor keeps the trained parameters of order one right up to the
    observation (without it, smooth noise, whose :math:`\bar\omega` is small, gets a control whose noise from
    training is amplified by up to :math:`1 / \Delta t_{\min}`)."""
    times = np.concatenate([[0.0], np.cumsum(step_sizes(dt, steps))])
    obs = np.asarray(observation_steps)
    n = np.arange(steps)
    nxt = obs[np.clip(np.searchsorted(obs, n, side="right"), 0, len(obs) - 1)]
    to_go = jnp.asarray(np.where(nxt > n, times[nxt] - times[n], np.inf), jnp.result_type(float))
    return jnp.where(jnp.isfinite(to_go), 1.0 / (to_go + floor), 1.0)
