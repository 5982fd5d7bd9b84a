r"""A small latent video model driven by Markov-approximate fBM (after the latent video model of Daems et al.,
ICLR 2024, Section 6, at toy scale).

Data (:func:`bar_videos`): a bright bar on a row of ``width`` pixels whose position is
:math:`p_t = \mathrm{reflect}_{[0,1]}(1/2 + a\,B^{H_\star}_t)` — exact fBM (:func:`~pplvi.models.fbm_sde.exact.
sample_fbm`) folded back into the frame when it leaves it, so the bar bounces off the borders — rendered as
:math:`\exp(-(i / (w - 1) - p_t)^2 / 2\ell^2)` plus Gaussian pixel noise, ``frames`` frames on :math:`[0, 1]`.

Model (:class:`VideoSDE`), one latent dimension:

.. math:: X_0 \sim \mathcal N(0, 1), \qquad dX = b_\theta(X)\,dt + s_\theta\,d\hat B^H_t, \qquad
          \text{frame}_f \sim \mathcal N(g_\theta(X_{t_f}), \sigma_{\rm pix}^2 I),

with :math:`b_\theta`, :math:`g_\theta` small MLPs and :math:`s_\theta > 0`. Posterior: an encoder reads the whole
video and returns :math:`q(X_0) = \mathcal N(m, v)` and, per Euler step, the offset of a control
:math:`u_n = \rho_n (a_n(\text{video}) + c_n^\top (X_n, Y_n))` (the gains :math:`c_n` are shared; :math:`\rho_n` is
the time to the next frame). :func:`video_elbo` is the batch-mean ELBO

.. math:: \mathbb E_Q \sum_f \log \mathcal N(\text{frame}_f; g_\theta(X_{t_f}), \sigma^2_{\rm pix} I)
          - \mathrm{KL}(q(X_0) \,\|\, p(X_0)) - \mathbb E_Q \int_0^T \tfrac12 u^2\,dt .

``train_video(..., learn_hurst=False)`` trains the same model with :math:`H` frozen at 1/2 (standard Brownian
motion), the baseline the fBM model is compared with on held-out videos.
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
from pplvi.models.fbm_sde.exact import sample_fbm
from pplvi.models.fbm_sde.markov import MarkovFBM, check_hurst, hurst_from_raw, raw_from_hurst
from pplvi.models.fbm_sde.sde import solve, time_to_go_rate


class VideoConfig(eqx.Module):
    """Sizes of the toy video problem and of the model."""

    hurst: float = 0.8
    frames: int = 16
    width: int = 16
    amplitude: float = 0.6
    bar_width: float = 0.08
    pixel_noise: float = 0.1
    substeps: int = 4
    K: int = 5
    gamma_max: float = 20.0
    kind: str = "I"
    hidden: int = 64

    def __check_init__(self):
        check_hurst(self.hurst)

    @property
    def steps(self) -> int:
        return (self.frames - 1) * self.substeps

    @property
    def dt(self) -> float:
        return 1.0 / self.steps

    @property
    def driver(self) -> MarkovFBM:
        return MarkovFBM(self.K, 1.0, self.kind, self.gamma_max)


def _reflect(p):
    """Fold a real line into [0, 1] (a bounce at each border)."""
    p = np.mod(p, 2.0)
    return np.where(p > 1.0, 2.0 - p, p)


def bar_videos(config: VideoConfig, n: int, seed: int = 0) -> np.ndarray:
    """``n`` videos ``(n, frames, width)`` (float32) of a bar moving by reflected fBM with ``config.hurst``."""
    times = np.linspace(0.0, 1.0, config.frames)[1:]
    paths = np.concatenate([np.zeros((n, 1)), sample_fbm(seed, times, config.hurst, n)], 1)
    start = np.random.default_rng(seed + 1).uniform(0.2, 0.8, (n, 1))
    position = _reflect(start + config.amplitude * paths)
    pixels = np.linspace(0.0, 1.0, config.width)
    clean = np.exp(-((pixels[None, None, :] - position[:, :, None]) ** 2) / (2 * config.bar_width ** 2))
    noisy = clean + config.pixel_noise * np.random.default_rng(seed + 2).standard_normal(clean.shape)
    return noisy.astype(np.float32)


class VideoSDE(eqx.Module):
    """Prior (``raw_hurst``, ``log_diffusion``, ``drift``), decoder, and posterior (``encoder``, ``gain``)."""

    raw_hurst: jax.Array
    log_diffusion: jax.Array
    drift: eqx.nn.MLP
    decoder: eqx.nn.MLP
    encoder: eqx.nn.MLP
    gain: jax.Array

    @classmethod
    def init(cls, key, config: VideoConfig, hurst: float = 0.5):
        k1, k2, k3 = jax.random.split(key, 3)
        drift = eqx.nn.MLP(1, 1, 32, 1, activation=jnp.tanh, key=k1)
        decoder = eqx.nn.MLP(1, config.width, config.hidden, 2, activation=jnp.tanh, key=k2)
        encoder = eqx.nn.MLP(config.frames * config.width, 2 + config.steps, config.hidden, 2,
                             activation=jnp.tanh, key=k3)
        return cls(jnp.asarray(raw_from_hurst(hurst)), jnp.asarray(0.0), drift, decoder, encoder,
                   jnp.zeros((config.steps, 1, config.K + 1)))

    @property
    def hurst(self):
        return hurst_from_raw(self.raw_hurst)


def video_elbo(config: VideoConfig, particles: int = 1) -> pplvi.Objective:
    """The ELBO averaged over a batch of videos ``(B, frames, width)``; call as ``objective(model, videos)``."""
    driver = config.driver
    frame_index = np.arange(config.frames) * config.substeps
    rate = time_to_go_rate(frame_index[1:], config.steps, config.dt)

    @pplvi.objective
    def latent_video_elbo(model, videos):
        batch = videos.shape[0]
        encoded = jax.vmap(model.encoder)(videos.reshape(batch, -1))  # (B, 2 + steps)
        q0 = dist.Normal(encoded[:, :1], jnp.exp(encoded[:, 1:2]))
        offsets = jnp.moveaxis(encoded[:, 2:], 1, 0)[..., None]  # (steps, B, 1)
        x0 = pplvi.sample("x0", q0.expand((particles, batch, 1)).to_event(3))
        kl0 = dist.kl_divergence(q0, dist.Normal(0.0, 1.0)).sum(-1)  # (B,)

        def control(step, t, x, y):
            state = jnp.concatenate([x[..., None], y], -1)
            return rate[step] * (offsets[step] + jnp.sum(model.gain[step] * state, -1))

        def drift(t, x):
            return jax.vmap(model.drift)(x.reshape(-1, 1)).reshape(x.shape)

        scale = jnp.exp(model.log_diffusion)
        path = solve(driver, model.hurst, drift, lambda t, x: scale * jnp.ones_like(x), x0, dt=config.dt,
                     steps=config.steps, control=control)
        latents = path.xs[frame_index]  # (frames, particles, B, 1)
        means = jax.vmap(model.decoder)(latents.reshape(-1, 1)).reshape(*latents.shape[:-1], config.width)
        frames = jnp.moveaxis(videos, 1, 0)[:, None]  # (frames, 1, B, width)
        log_lik = dist.Normal(means, config.pixel_noise).log_prob(frames).sum((0, -1))  # (particles, B)
        return jnp.mean(log_lik - path.path_kl) - jnp.mean(kl0)

    return latent_video_elbo


def train_video(config: VideoConfig, train, *, learn_hurst: bool = True, steps: int = 3000, batch_size: int = 32,
                lr: float = 3e-3, seed: int = 0, progress: bool | None = None):
    """Train :class:`VideoSDE` on ``train`` videos with :func:`pplvi.fit`; ``learn_hurst=False`` freezes
    :math:`H = 1/2` (the Brownian-motion baseline). Returns the :class:`pplvi.train.FitResult`."""
    model = VideoSDE.init(jax.random.key(seed), config)
    trainable = None
    if not learn_hurst:
        trainable = eqx.tree_at(lambda m: m.raw_hurst, jax.tree_util.tree_map(lambda _: True, model), False)
    optimizer = optax.adam(optax.cosine_decay_schedule(lr, steps, 0.1))
    return pplvi.fit(video_elbo(config), model, data=jnp.asarray(train), batch_size=batch_size, optimizer=optimizer,
                     steps=steps, key=jax.random.key(seed + 1), trainable=trainable, progress=progress,
                     desc="video fBM" if learn_hurst else "video BM (H=1/2)")


def heldout_elbo(config: VideoConfig, model, videos, key, particles: int = 16) -> tuple[float, float]:
    """Mean held-out ELBO per video (each video's ELBO averaged over ``particles`` posterior samples) and its
    standard error over videos."""
    objective = video_elbo(config, particles=1)

    @eqx.filter_jit
    def per_video(model, keys, videos):
        return jax.vmap(lambda k, v: jnp.mean(jax.vmap(lambda kk: objective.estimate(kk, model, v[None]))(
            jax.random.split(k, particles))))(keys, videos)

    values = np.asarray(per_video(model, jax.random.split(key, len(videos)), jnp.asarray(videos)), np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def video_check(config: VideoConfig | None = None, *, train_videos: int = 512, test_videos: int = 128,
                steps: int = 3000, seed: int = 0, progress: bool | None = None) -> dict:
    """Train the fBM model and the H = 1/2 baseline on the same data and compare their held-out ELBOs (``config``:
    default :class:`VideoConfig` ())."""
    config = VideoConfig() if config is None else config
    t0 = time.perf_counter()
    train = bar_videos(config, train_videos, seed)
    test = bar_videos(config, test_videos, seed + 100)
    out = {"true_H": config.hurst}
    for name, learn in (("fbm", True), ("bm", False)):
        result = train_video(config, train, learn_hurst=learn, steps=steps, seed=seed, progress=progress)
        elbo, se = heldout_elbo(config, result.params, test, jax.random.key(seed + 7))
        out[f"elbo_{name}"], out[f"elbo_{name}_se"] = elbo, se
        if learn:
            out["learned_H"] = float(result.params.hurst)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
