r"""Exact computations for the Euler-discretized augmented SDE when it is linear-Gaussian (NumPy, float64).

For :math:`dX = -\theta X\,dt + \sigma\,d\hat B^H` (:math:`\theta = 0`: scaled fBM) the Euler chain of
:math:`Z = (X, Y^1..Y^K)` is :math:`Z_{n+1} = M_n Z_n + g\,\Delta B_n`, :math:`\Delta B_n \sim \mathcal N(0, \Delta
t_n)`, with :math:`g = (\sigma\bar\omega, 1, \dots, 1)` and

.. math:: M_n = \begin{pmatrix} 1 - \theta\Delta t_n & -\sigma\,(\omega_k\gamma_k\Delta t_n)_k \\
                                0 & \mathrm{diag}(1 - \gamma_k \Delta t_n) \end{pmatrix}.

* :func:`log_likelihood`: the exact marginal likelihood of noisy observations of :math:`X` (a Kalman filter): what
  a perfect variational posterior's ELBO would reach, and the likelihood whose maximizer over :math:`H` is the best
  any variational fit of this discretized model can do.
* :func:`family_gap`: the smallest ELBO gap :math:`\mathrm{KL}(Q \| P(\cdot \mid o))` over all posteriors that only
  shift the mean of every increment (a control, Girsanov), per observed sequence. The exact posterior of the chain
  draws :math:`\Delta B_n` given :math:`Z_n` from a Gaussian with mean affine in :math:`Z_n` (which
  :class:`~pplvi.models.fbm_sde.sde.LinearFeedbackControl` represents) and variance :math:`v_n = (1/\Delta t_n +
  q_n)^{-1}`, :math:`q_n = g^\top J_{n+1} g` with :math:`J` the backward information of the observations; a control
  keeps the variance :math:`\Delta t_n`, so the gap is at least (and with the best control exactly)
  :math:`\sum_n \tfrac12 (\Delta t_n q_n - \log(1 + \Delta t_n q_n))`.
  This assumes the posterior's initial state is the exact posterior's (a learned :math:`q(Y_0)` for a type I
  driver); keeping the prior's initial state adds :func:`initial_state_gap`.
* :func:`initial_state_gap`: the extra gap (summed over sequences) when the posterior keeps the prior's initial OU
  state, :math:`\mathrm{KL}(p(Y_0) \| p(Y_0 \mid o))` (type I only; zero for type II).
* :func:`controlled_moments`: the exact mean and std of :math:`X` under a linear-feedback control (no sampling).
* :func:`posterior_std` and :func:`best_control_std`: the std of :math:`X` on the grid under the exact posterior of
  the chain given one observation at the end, and under the best control.
"""

from __future__ import annotations

import jax
import numpy as np

from pplvi.models.fbm_sde.markov import MarkovFBM


def chain(noise: MarkovFBM, hurst: float, scale: float, theta: float, dts) -> tuple[list, np.ndarray, np.ndarray]:
    """``(M_n list, g, P_0)``: the transition matrices, the diffusion column and the covariance of :math:`Z_0`."""
    with jax.enable_x64(True):
        w = np.asarray(noise.weights(hurst), np.float64)
    g = np.asarray(noise.gammas, np.float64)
    K = len(g)
    matrices = []
    for dt in np.asarray(dts, np.float64):
        M = np.eye(K + 1)
        M[0, 0] = 1.0 - theta * dt
        M[0, 1:] = -scale * w * g * dt
        M[1:, 1:] = np.diag(1.0 - g * dt)
        matrices.append(M)
    column = np.concatenate([[scale * w.sum()], np.ones(K)])
    P0 = np.zeros((K + 1, K + 1))
    P0[1:, 1:] = np.asarray(noise.initial_covariance(), np.float64)
    return matrices, column, P0


def log_likelihood(noise: MarkovFBM, hurst: float, scale: float, dts, observation_steps, data, obs_noise: float,
                   theta: float = 0.0) -> float:
    """The exact log-likelihood of ``data`` (``(sequences, observations)``, :math:`X` at grid indices
    ``observation_steps`` plus noise of std ``obs_noise``; :math:`X_0 = 0`), summed over sequences."""
    matrices, column, P = chain(noise, hurst, scale, theta, dts)
    data = np.asarray(data, np.float64)
    at = {int(i): j for j, i in enumerate(observation_steps)}
    mean = np.zeros((len(column), data.shape[0]))
    total = 0.0
    for n, (M, dt) in enumerate(zip(matrices, np.asarray(dts, np.float64))):
        mean, P = M @ mean, M @ P @ M.T + dt * np.outer(column, column)
        if n + 1 in at:
            S = P[0, 0] + obs_noise ** 2
            r = data[:, at[n + 1]] - mean[0]
            total += float(-0.5 * np.sum(r ** 2) / S - 0.5 * data.shape[0] * np.log(2 * np.pi * S))
            gain = P[:, 0] / S
            mean, P = mean + np.outer(gain, r), P - np.outer(gain, P[0])
    return total


def _backward(matrices, column, dts, observation_steps, obs_noise):
    """The backward information ``J_{n+1}`` seen by step ``n`` (a list) and the per-step gap terms."""
    at = {int(i) for i in observation_steps}
    J = np.zeros((len(column), len(column)))
    seen, terms = [None] * len(matrices), np.zeros(len(matrices))
    for n in range(len(matrices) - 1, -1, -1):
        if n + 1 in at:
            J = J.copy()
            J[0, 0] += 1.0 / obs_noise ** 2
        seen[n] = J
        dt, q = dts[n], column @ J @ column
        terms[n] = 0.5 * (dt * q - np.log1p(dt * q))
        Jg = J @ column
        J = matrices[n].T @ (J - np.outer(Jg, Jg) / (1.0 / dt + q)) @ matrices[n]
    return seen, terms


def family_gap(noise: MarkovFBM, hurst: float, scale: float, dts, observation_steps, obs_noise: float,
               theta: float = 0.0) -> float:
    """The smallest ELBO gap (nats, per observed sequence) of a posterior that controls the drift only (module
    docstring); it does not depend on the observed values."""
    matrices, column, _ = chain(noise, hurst, scale, theta, dts)
    return float(np.sum(_backward(matrices, column, np.asarray(dts, np.float64), observation_steps, obs_noise)[1]))


def initial_state_gap(noise: MarkovFBM, hurst: float, scale: float, dts, observation_steps, data, obs_noise: float,
                      theta: float = 0.0) -> float:
    r""":math:`\sum_{\text{sequences}} \mathrm{KL}(p(Y_0) \,\|\, p(Y_0 \mid o))` (nats): the extra ELBO gap of a
    posterior that keeps the prior's initial OU state (type I: stationary, random; type II: 0, no gap) instead of
    learning :math:`q(Y_0)` (:class:`~pplvi.models.fbm_sde.sde.InitialOUPosterior`). With the backward information
    :math:`(J_0, h_0)` of the observations seen from :math:`Z_0` (restricted to :math:`Y`), the posterior of
    :math:`Y_0` has precision :math:`\Lambda = P_0^{-1} + J_0` and mean :math:`\Lambda^{-1} h_0`, and
    :math:`\mathrm{KL}(\mathcal N(0, P_0) \| \mathcal N(\mu, \Lambda^{-1})) = \tfrac12 (\mathrm{tr}(\Lambda P_0) - K +
    \mu^\top\Lambda\mu - \log\det\Lambda - \log\det P_0)`."""
    if noise.kind == "II":
        return 0.0
    dts = np.asarray(dts, np.float64)
    matrices, column, P0 = chain(noise, hurst, scale, theta, dts)
    data = np.asarray(data, np.float64)
    at = {int(i): j for j, i in enumerate(observation_steps)}
    J, h = np.zeros((len(column), len(column))), np.zeros((len(column), data.shape[0]))
    for n in range(len(matrices) - 1, -1, -1):
        if n + 1 in at:
            J, h = J.copy(), h.copy()
            J[0, 0] += 1.0 / obs_noise ** 2
            h[0] += data[:, at[n + 1]] / obs_noise ** 2
        Jg, shrink = J @ column, 1.0 / (1.0 / dts[n] + column @ J @ column)
        h = matrices[n].T @ (h - np.outer(Jg, column @ h) * shrink)
        J = matrices[n].T @ (J - np.outer(Jg, Jg) * shrink) @ matrices[n]
    P, precision = P0[1:, 1:], np.linalg.inv(P0[1:, 1:]) + J[1:, 1:]
    mean = np.linalg.solve(precision, h[1:])
    K = P.shape[0]
    per_sequence = 0.5 * (np.trace(precision @ P) - K + np.einsum("ip,ij,jp->p", mean, precision, mean)
                          - np.linalg.slogdet(precision)[1] - np.linalg.slogdet(P)[1])
    return float(np.sum(per_sequence))


def posterior_std(noise: MarkovFBM, hurst: float, scale: float, theta: float, dts, obs_noise: float) -> np.ndarray:
    """The std of :math:`X` at every grid time under the exact posterior of the chain given :math:`X_N` observed
    with noise ``obs_noise`` (``(steps + 1,)``)."""
    matrices, column, P = chain(noise, hurst, scale, theta, dts)
    covs = [P]
    for M, dt in zip(matrices, dts):
        P = M @ P @ M.T + dt * np.outer(column, column)
        covs.append(P)
    with_last, power = np.zeros(len(covs)), np.eye(len(column))
    for i in range(len(covs) - 1, -1, -1):  # Cov(X_i, X_N) = [M_{N-1} ... M_i P_i]_00
        with_last[i] = (power @ covs[i])[0, 0]
        if i > 0:
            power = power @ matrices[i - 1]
    var = np.array([c[0, 0] for c in covs]) - with_last ** 2 / (covs[-1][0, 0] + obs_noise ** 2)
    return np.sqrt(np.clip(var, 0.0, None))


def best_control_std(noise: MarkovFBM, hurst: float, scale: float, theta: float, dts, obs_noise: float):
    """``(std, gap)``: the std of :math:`X` on the grid under the best drift-only control for one observation of
    :math:`X_N` (conditional means of the exact posterior, one-step variances :math:`\\Delta t_n`) and its gap."""
    dts = np.asarray(dts, np.float64)
    matrices, column, P = chain(noise, hurst, scale, theta, dts)
    seen, terms = _backward(matrices, column, dts, [len(dts)], obs_noise)
    var = [P[0, 0]]
    for M, J, dt in zip(matrices, seen, dts):
        v = 1.0 / (1.0 / dt + column @ J @ column)
        A = M - np.outer(column, v * (column @ J @ M))
        P = A @ P @ A.T + dt * np.outer(column, column)
        var.append(P[0, 0])
    return np.sqrt(np.asarray(var)), float(terms.sum())


def controlled_moments(noise: MarkovFBM, hurst: float, scale: float, theta: float, dts, control,
                       index=()) -> tuple[np.ndarray, np.ndarray]:
    r"""The exact mean and std of :math:`X` on the grid (``(steps + 1,)`` each) under a
    :class:`~pplvi.models.fbm_sde.sde.LinearFeedbackControl` ``control`` with one latent dimension
    (:math:`Z_{n+1} = (M_n + \Delta t_n \rho_n g c_n^\top) Z_n + \Delta t_n \rho_n a_n g + g\,\Delta B_n`);
    ``index`` picks the offsets of one sequence when they have a batch axis."""
    dts = np.asarray(dts, np.float64)
    matrices, column, P = chain(noise, hurst, scale, theta, dts)
    offset = np.asarray(control.offset, np.float64)[(slice(None), *index, 0)]
    gain = np.asarray(control.gain, np.float64)[:, 0]
    rate = np.asarray(control.rate, np.float64)
    mean = np.zeros(len(column))
    means, var = [0.0], [P[0, 0]]
    for n, (M, dt) in enumerate(zip(matrices, dts)):
        A = M + dt * rate[n] * np.outer(column, gain[n])
        mean = A @ mean + dt * rate[n] * offset[n] * column
        P = A @ P @ A.T + dt * np.outer(column, column)
        means.append(mean[0])
        var.append(P[0, 0])
    return np.asarray(means), np.sqrt(np.asarray(var))
