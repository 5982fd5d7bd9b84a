r"""Align-Then-stEer (ATE) at small scale: adapting a pretrained flow policy to a new action domain through a unified
latent space (Zhang et al. 2025, "Align-Then-stEer: Adapting the Vision-Language Action Models through Unified
Latent Guidance"), on 2-D action mixtures.

**Pretraining.** Actions :math:`a \in \mathbb R^2` of the pretraining domain come from a K-mode mixture. Two models
are trained on them: a flow-matching policy :math:`v_{\mathrm{pre}}` (:mod:`pplvi.models.kinetic_paths.flow`) and a
VAE whose latent prior is a fixed K-mode Gaussian mixture :math:`p_{\mathrm{pre}}(z)`, so that the latent space has
one mode per action mode: encoder :math:`q(z \mid a)`, decoder :math:`a \mid z \sim \mathcal N(D(z), s^2 I)`, trained
by the ELBO :math:`\mathbb E_q[\log \mathcal N(a; D(z), s^2) + \log p_{\mathrm{pre}}(z) - \log q(z \mid a)]`.

**Align.** The new domain's actions are embedded into the *same* latent space by an adapter :math:`T` (affine,
:math:`T(a) = Ma + c`) placed in front of the frozen encoder and inverted behind the frozen decoder:
:math:`q_T(z \mid a) = q(z \mid T(a))`, :math:`a \mid z \sim \mathcal N(T^{-1}(D(z)), \tau^2 I)`. On the target
demonstrations :math:`a_1..a_M` the adapter maximizes the reverse-KL-constrained ELBO

.. math:: \mathcal L_{\mathrm{align}}(T, \tau) = \frac1M\sum_j \mathbb E_{q_T(z \mid a_j)}
          \log \mathcal N(a_j; T^{-1}D(z), \tau^2 I)
          - \beta\,\mathrm{KL}\big(q_T(z \mid a_j)\,\|\,p_{\mathrm{pre}}(z)\big),

the reverse KL (expectation under :math:`q_T`, mode-seeking) pulling every demonstration into one mode of the
pretraining latent distribution.

**Steer.** Fine-tuning the policy on the demonstrations by flow matching is *guided* toward the target domain
through the unified latent space: the objective adds :math:`\gamma\,\mathbb E_{x_0 \sim \mathcal N(0, I)}[r]` with

.. math:: r(x_0) = -\frac{\|\mu(T(\hat a_\theta(x_0))) - \mu(\hat a_{\mathrm{pre}}(x_0))\|^2}{2\ell^2},

where :math:`\hat a_\theta(x_0)` is the policy's own action from noise :math:`x_0` (a few Euler steps of its ODE,
differentiated through), :math:`\hat a_{\mathrm{pre}}` the frozen pretrained policy's, :math:`\mu` the encoder mean
and :math:`\ell` the latent mode width: the policy is steered so that, read through the aligned encoder, it puts each
noise draw in the latent mode the pretrained policy put it in, i.e. the pretrained policy's mode structure carried
into the target domain. Plain fine-tuning is the same objective with :math:`\gamma = 0`.

**Coverage** (how the check is scored): of ``num`` policy samples (unguided Euler sampling), at least
``min_inside`` lie within ``radius`` of some target mode centre and every target mode holds at least
``min_share``/K of them. Steps to cover: the first evaluation step at which this holds.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

import pplvi
from pplvi.models.kinetic_paths.flow import VelocityField, flow_matching, flow_matching_term, sample_flow
from pplvi.models.kinetic_paths.paths import GaussianPath


# ------------------------------------------------------------------------------------------------------------------
# action domains
# ------------------------------------------------------------------------------------------------------------------
def mode_centres(num_modes: int, radius: float = 1.0, rotation: float = 0.0, offset=(0.0, 0.0)) -> jnp.ndarray:
    """``(K, 2)`` mode centres evenly on a circle."""
    angle = 2 * np.pi * np.arange(num_modes) / num_modes + rotation
    return jnp.asarray(np.stack([np.cos(angle), np.sin(angle)], -1) * radius + np.asarray(offset), jnp.float32)


def sample_actions(key, centres, counts, std: float) -> jnp.ndarray:
    """``counts[k]`` actions around centre k with isotropic ``std``."""
    counts = np.asarray(counts, int)
    if counts.shape != (centres.shape[0],) or np.any(counts < 0):
        raise pplvi.DataError(f"sample_actions: counts must be {centres.shape[0]} non-negative ints, got {counts}")
    which = jnp.asarray(np.repeat(np.arange(centres.shape[0]), counts))
    return centres[which] + std * jax.random.normal(key, (which.shape[0], 2))


def latent_prior(num_modes: int, radius: float = 2.0, std: float = 0.3):
    """The pretraining latent distribution :math:`p_{\\mathrm{pre}}(z)`: K equal Gaussians on a circle."""
    means = mode_centres(num_modes, radius)
    return dist.MixtureSameFamily(dist.Categorical(jnp.ones(num_modes) / num_modes),
                                  dist.Normal(means, std).to_event(1))


# ------------------------------------------------------------------------------------------------------------------
# pretraining VAE with a mixture latent prior
# ------------------------------------------------------------------------------------------------------------------
class LatentVAE(eqx.Module):
    """Encoder :math:`a \\mapsto (\\mu, \\text{scale})` and decoder :math:`z \\mapsto D(z)` (MLPs)."""

    encoder: eqx.nn.MLP
    decoder: eqx.nn.MLP

    def __init__(self, width: int = 64, *, key):
        k1, k2 = jax.random.split(key)
        self.encoder = eqx.nn.MLP(2, 4, width, 2, activation=jax.nn.silu, key=k1)
        self.decoder = eqx.nn.MLP(2, 2, width, 2, activation=jax.nn.silu, key=k2)

    def encode(self, a):
        out = jax.vmap(self.encoder)(a)
        return out[:, :2], jax.nn.softplus(out[:, 2:]) + 1e-3

    def decode(self, z):
        return jax.vmap(self.decoder)(z)


def pretraining_elbo(prior, action_noise: float) -> pplvi.Objective:
    """Per-action ELBO of :class:`LatentVAE` with the mixture prior, an objective ``(vae, actions)``."""

    @pplvi.gen
    def model(vae, a):
        z = pplvi.sample("z", prior.expand([a.shape[0]]).to_event(1))
        pplvi.sample("a", dist.Normal(vae.decode(z), action_noise).to_event(2), obs=a)

    @pplvi.gen
    def guide(vae, a):
        loc, scale = vae.encode(a)
        pplvi.sample("z", dist.Normal(loc, scale).to_event(2))

    @pplvi.objective
    def latent_vae_elbo(vae, a):
        trace = guide.simulate(vae, a)
        return (model.assess(trace.choices, vae, a) - trace.score) / a.shape[0]

    return latent_vae_elbo


# ------------------------------------------------------------------------------------------------------------------
# align: an affine adapter into the frozen latent space, by the reverse-KL-constrained ELBO
# ------------------------------------------------------------------------------------------------------------------
class AffineAdapter(eqx.Module):
    """:math:`T(a) = Ma + c` and the target-space decoder noise :math:`\\tau = e^{\\text{log\\_noise}}`."""

    matrix: jnp.ndarray
    offset: jnp.ndarray
    log_noise: jnp.ndarray

    def __call__(self, a):
        return a @ self.matrix.T + self.offset

    def inverse(self, b):
        return jnp.linalg.solve(self.matrix, (b - self.offset).T).T


def alignment_elbo(vae: LatentVAE, prior, beta: float = 1.0) -> pplvi.Objective:
    """:math:`\\mathcal L_{\\mathrm{align}}` (module docstring), an objective ``(adapter, demos)``; the pretrained
    ``vae`` and ``prior`` are frozen."""

    @pplvi.objective
    def reverse_kl_alignment(adapter, demos):
        loc, scale = vae.encode(adapter(demos))
        q = dist.Normal(loc, scale).to_event(2)
        z = pplvi.sample("z", q)
        reconstruction = dist.Normal(adapter.inverse(vae.decode(z)), jnp.exp(adapter.log_noise)).to_event(2)
        reverse_kl = q.log_prob(z) - jnp.sum(prior.log_prob(z))  # one-sample estimate of KL(q_T || p_pre)
        return (reconstruction.log_prob(demos) - beta * reverse_kl) / demos.shape[0]

    return reverse_kl_alignment


def fit_adapter(vae, prior, demos, pretraining_actions, *, steps: int = 1500, restarts: int = 4, seed: int = 0):
    """Fit an :class:`AffineAdapter` with :func:`pplvi.fit` from ``restarts`` initial rotations of the moment-matching
    map (demo mean/scale onto the pretraining mean/scale); keep the one with the best final objective."""
    demos = jnp.asarray(demos, jnp.float32)
    if demos.ndim != 2 or demos.shape[1] != 2 or demos.shape[0] < 3:
        raise pplvi.DataError(f"fit_adapter: demos must be (M >= 3, 2), got shape {demos.shape}")
    scale = jnp.sqrt(jnp.mean(jnp.var(pretraining_actions, 0)) / jnp.mean(jnp.var(demos, 0)))
    objective = alignment_elbo(vae, prior)
    best = None
    for r in range(restarts):
        angle = 2 * np.pi * r / restarts
        rot = jnp.asarray([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], jnp.float32)
        matrix = scale * rot
        offset = pretraining_actions.mean(0) - demos.mean(0) @ matrix.T
        adapter = AffineAdapter(matrix, offset, jnp.asarray(np.log(0.1), jnp.float32))
        result = pplvi.fit(objective, adapter, optimizer=optax.adam(1e-2), steps=steps, key=seed * 10 + r,
                           data=demos, progress=False)
        score = float(np.mean(result.history["objective"][-100:]))
        if best is None or score > best[0]:
            best = (score, result.params)
    return best[1]


def latent_guidance(vae: LatentVAE, adapter: AffineAdapter, pretrained_velocity, *, latent_std: float,
                    euler_steps: int = 4):
    """The steering reward of the module docstring as ``reward(velocity, x0)`` per noise draw: the policy's action
    from ``x0``, embedded by the aligned encoder, should land on the latent that the frozen pretrained policy's action
    from the same ``x0`` has."""

    def reward(velocity, x0):
        reference = jax.lax.stop_gradient(vae.encode(euler_actions(pretrained_velocity, x0, euler_steps))[0])
        latent = vae.encode(adapter(euler_actions(velocity, x0, euler_steps)))[0]
        return -jnp.sum((latent - reference) ** 2, -1) / (2 * latent_std**2)

    return reward


# ------------------------------------------------------------------------------------------------------------------
# steer: guided fine-tuning of the flow policy
# ------------------------------------------------------------------------------------------------------------------
def euler_actions(velocity, x0, steps: int):
    """The policy's actions from noise ``x0`` by ``steps`` Euler steps (differentiable)."""
    dt = 1.0 / steps
    x = x0
    for k in range(steps):
        x = x + dt * velocity(x, jnp.asarray(k * dt, x.dtype))
    return x


def guided_finetune_objective(path: GaussianPath, reward, guidance: float, *,
                              num_guide: int = 128) -> pplvi.Objective:
    """Flow matching on the demos plus :math:`\\gamma\\,\\mathbb E_{x_0}[r]` (module docstring), an objective
    ``(velocity, demos)``; ``reward(velocity, x0)`` is e.g. :func:`latent_guidance`, ``x0_guide`` the random choice
    that drives the policy's own actions. ``guidance = 0`` is plain flow-matching fine-tuning."""

    @pplvi.objective
    def ate_finetune(velocity, demos):
        fm = flow_matching_term(path, velocity, demos)
        if guidance == 0:
            return fm
        x0 = pplvi.sample("x0_guide", dist.Normal(jnp.zeros((num_guide, demos.shape[1])), 1.0).to_event(2))
        return fm + guidance * jnp.mean(reward(velocity, x0))

    return ate_finetune


def coverage(samples, centres, *, radius: float, min_inside: float = 0.8, min_share: float = 1.0 / 3.0) -> dict:
    """The coverage criterion of the module docstring: ``{"covered", "inside", "min_mode_share"}``
    (``min_mode_share`` is the smallest mode's share of all samples times K)."""
    d = jnp.linalg.norm(samples[:, None, :] - centres[None], axis=-1)
    nearest, dmin = jnp.argmin(d, -1), jnp.min(d, -1)
    inside = dmin <= radius
    shares = jnp.array([jnp.mean(inside & (nearest == k)) for k in range(centres.shape[0])]) * centres.shape[0]
    inside_frac, min_mode = float(jnp.mean(inside)), float(jnp.min(shares))
    return {"covered": bool(inside_frac >= min_inside and min_mode >= min_share), "inside": inside_frac,
            "min_mode_share": min_mode}


def steps_to_cover(objective, velocity, demos, centres, *, radius: float, max_steps: int, eval_every: int,
                   lr: float = 3e-3, seed: int = 0, num_eval: int = 1000, eval_steps: int = 16):
    """Fine-tune ``velocity`` with ``objective`` by one :func:`pplvi.fit` run (Adam) that evaluates :func:`coverage`
    every ``eval_every`` steps; returns ``(steps, trace, params)``: the first evaluated step count at which coverage
    holds (``None`` if never within ``max_steps``), the coverage at every evaluation, the final policy."""
    eval_key = jax.random.key(seed + 999)
    draw = eqx.filter_jit(lambda v: sample_flow(v, eval_key, num_eval, steps=eval_steps))

    def evaluate(params, key):
        c = coverage(draw(params), centres, radius=radius)
        return {"inside": c["inside"], "min_mode_share": c["min_mode_share"], "covered": float(c["covered"])}

    result = pplvi.fit(objective, velocity, optimizer=optax.adam(lr), steps=max_steps, key=seed + 5, data=demos,
                       evaluate=evaluate, eval_every=eval_every, progress=False)
    ev = result.evaluations
    trace = [{"step": int(ev["step"][i]), "inside": float(ev["inside"][i]),
              "min_mode_share": float(ev["min_mode_share"][i]), "covered": bool(ev["covered"][i])}
             for i in range(len(ev["step"]))]
    first = next((t["step"] for t in trace if t["covered"]), None)
    return first, trace, result.params


def pretrain(pretraining_actions, prior, *, action_noise: float, flow_steps: int, vae_steps: int, seed: int = 0):
    """Train the pretraining flow policy (Cond-OT flow matching) and :class:`LatentVAE` with :func:`pplvi.fit`."""
    path = GaussianPath.cond_ot()
    velocity = VelocityField(2, 64, key=jax.random.key(seed))
    flow = pplvi.fit(flow_matching(path), velocity, optimizer=optax.adam(optax.cosine_decay_schedule(2e-3, flow_steps,
                     alpha=0.05)), steps=flow_steps, key=seed + 1, data=pretraining_actions, batch_size=256,
                     progress=False)
    vae = LatentVAE(64, key=jax.random.key(seed + 2))
    fitted = pplvi.fit(pretraining_elbo(prior, action_noise), vae, optimizer=optax.adam(optax.cosine_decay_schedule(
                       2e-3, vae_steps, alpha=0.05)), steps=vae_steps, key=seed + 3, data=pretraining_actions,
                       batch_size=256, progress=False)
    return flow.params, fitted.params
