r"""Generative functions with *estimated* densities: marginalization and self-normalized importance resampling.

Both are built from the generative function interface of their components (``simulate``, ``generate``,
``assess``); inside an objective every random choice they make is a random choice of the objective, so any
estimator applies and gradients stay unbiased for the bound they define.

**Density estimates.** Used as a *guide* (``simulate``), a trace's ``score`` is an estimate
:math:`\log \hat q(z)` with :math:`\mathbb{E}[1/\hat q(z)] = 1/q(z)`, so :math:`\mathbb{E}[\log p - \log \hat q]`
stays a lower bound on :math:`\log p(x)`. Used as a *model* (``assess`` / ``generate``), the density estimate is
unbiased, :math:`\mathbb{E}[\hat p(z)] = p(z)`, so the ELBO computed with it is again a lower bound. Both estimates
need randomness: outside an objective use ``simulate(key, ...)`` / ``generate(key, constraints, ...)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

from pplvi.core.errors import ObjectiveError
from pplvi.core.estimators import Estimator, reinforce
from pplvi.core.gen import ASSESS, GENERATE, GenerativeFunction, in_objective
from pplvi.core.primitives import bind_sample

ESTIMATE = "~estimate"  # the single log-density entry recorded for an estimated density


def _selected(choices: dict, keep: tuple[str, ...]) -> dict:
    return {a: v for a, v in choices.items() if any(a == k or a.startswith(k + "/") for k in keep)}


def _randomness(run, what: str):
    """Keys for sub-runs: real keys when the run has one, None (staged choices) inside an objective."""
    if run.key is not None:
        return run.next_key
    if in_objective():
        return lambda: None
    raise ObjectiveError(
        f"{what} estimates its density by sampling: call it inside an objective, or outside one with a key "
        "(simulate(key, ...) / generate(key, constraints, ...)); assess(...) without a key cannot sample."
    )


def _simulate(gf, key, *args):
    return gf.simulate(*args) if key is None else gf.simulate(key, *args)


def _generate(gf, key, constraints, *args):
    return gf.generate(constraints, *args) if key is None else gf.generate(key, constraints, *args)


def _record(run, choices: dict, log_density):
    """Record ``choices`` in ``run`` with one estimated log density for all of them."""
    for top in sorted({a.split("/")[0] for a in choices}):
        run.claim(top)
    run.visited |= set(choices)
    run.choices.update(choices)
    run.log_probs[ESTIMATE] = log_density
    if run.mode in (ASSESS, GENERATE):
        run.weight = run.weight + log_density


class Marginal(GenerativeFunction):
    r"""``marginal(gf, keep, proposal=None, particles=1)``: the distribution of ``gf``'s choices at the addresses in
    ``keep``, the others (:math:`u`) integrated out by importance sampling (Ranganath et al. 2016, HVI; Sobolev &
    Vetrov 2019, IWHVI).

    ``proposal(kept_choices, *args)`` is a generative function over the marginalized addresses (the auxiliary
    inference model :math:`r(u \mid z)`); by default the prior of ``gf`` (``gf.generate`` with the kept choices
    constrained). With :math:`u_0` the draw that produced :math:`z` and :math:`u_{1..m} \sim r`:

    .. math:: \hat q(z) = \frac{1}{m+1} \sum_{k=0}^{m} \frac{q(z, u_k)}{r(u_k \mid z)} \;\;\text{(guide)},\qquad
              \hat p(z) = \frac{1}{m} \sum_{k=1}^{m} \frac{p(z, u_k)}{r(u_k \mid z)} \;\;\text{(model)}.

    ``particles = m = 0`` as a guide is HVI's bound with :math:`r`; ``m > 0`` is IWHVI."""

    def __init__(self, gf: GenerativeFunction, keep: Iterable[str], proposal=None, particles: int = 1):
        self.gf = gf
        self.keep = tuple([keep] if isinstance(keep, str) else keep)
        self.proposal = proposal
        self.particles = particles
        self.name = f"marginal({gf.name})"
        self.estimators = {}

    def _log_weight(self, key, kept: dict, args):
        """One importance weight log p(z, u)/r(u | z) with u ~ r."""
        if self.proposal is None:
            _, w = _generate(self.gf, key, kept, *args)
            return w
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        r = _simulate(self.proposal, k1, kept, *args)
        return self.gf.assess({**kept, **r.choices}, *args) - r.score

    def _weights(self, next_key, kept, args, n):
        if n == 0:
            return jnp.zeros((0,))
        keys = [next_key() for _ in range(n)]
        if keys[0] is None:
            return jax.vmap(lambda _: self._log_weight(None, kept, args))(jnp.arange(n))
        return jax.vmap(lambda k: self._log_weight(k, kept, args))(jnp.stack(keys))

    def _execute(self, run, args):
        next_key = _randomness(run, self.name)
        if run.mode in (ASSESS, GENERATE) and run.constraints:
            kept = dict(run.constraints)
            if self.particles < 1:
                raise ObjectiveError(f"{self.name} as a model needs particles >= 1.")
            log_w = self._weights(next_key, kept, args, self.particles)
            _record(run, kept, jax.nn.logsumexp(log_w) - jnp.log(self.particles))
            return None
        tr = _simulate(self.gf, next_key(), *args)
        kept = _selected(tr.choices, self.keep)
        if not kept:
            raise ObjectiveError(f"{self.name}: keep={list(self.keep)} selects none of {sorted(tr.choices)}.")
        if self.proposal is None:
            log_w0 = sum((jnp.sum(v) for a, v in tr.log_probs.items() if a in kept or a not in tr.choices), 0.0)
        else:
            aux = {a: v for a, v in tr.choices.items() if a not in kept}
            log_w0 = tr.score - self.proposal.assess(aux, kept, *args)
        log_w = jnp.concatenate([jnp.reshape(log_w0, (1,)), self._weights(next_key, kept, args, self.particles)])
        _record(run, kept, jax.nn.logsumexp(log_w) - jnp.log(log_w.shape[0]))
        return tr.retval


def marginal(gf: GenerativeFunction, keep, proposal=None, particles: int = 1) -> GenerativeFunction:
    """Marginalize every address of ``gf`` not in ``keep``; see :class:`Marginal`."""
    return Marginal(gf, keep, proposal, particles)


class Normalize(GenerativeFunction):
    r"""``normalize(target, proposal, particles=K)``: sampling importance resampling as a generative function
    (Rubin 1988; used as a variational family by genjax.vi and Lew et al. 2023).

    ``target(*args)`` is an unnormalized density over the same addresses as ``proposal(*args)`` (its observations
    included). ``simulate`` draws :math:`z_{1..K} \sim q`, weights :math:`w_k = \tilde p(z_k)/q(z_k)` and returns
    :math:`z_j`, :math:`j \sim \mathrm{Categorical}(w)`, with

    .. math:: \log \hat q(z_j) = \log \tilde p(z_j) - \log \tfrac1K \textstyle\sum_k w_k,

    whose reciprocal is unbiased for the SIR distribution's. ``assess(z)`` places ``z`` among ``K - 1`` fresh
    particles: :math:`\hat q(z) = \tilde p(z) / (\tfrac1K (w(z) + \sum_{k \ge 2} w_k))`. The resampling index is a
    random choice whose gradient uses ``index_estimator`` (default ``reinforce``)."""

    def __init__(self, target, proposal, particles: int, index_estimator: Estimator = reinforce):
        if particles < 1:
            raise ObjectiveError("normalize needs particles >= 1.")
        self.target, self.proposal, self.particles = target, proposal, particles
        self.index_estimator = index_estimator
        self.name = f"normalize({target.name}, {proposal.name}, {particles})"
        self.estimators = {}

    def _particle(self, key, args):
        q = _simulate(self.proposal, key, *args)
        return q.choices, self.target.assess(q.choices, *args) - q.score

    def _particles(self, next_key, args, n):
        keys = [next_key() for _ in range(n)]
        if keys[0] is None:
            return jax.vmap(lambda _: self._particle(None, args))(jnp.arange(n))
        return jax.vmap(lambda k: self._particle(k, args))(jnp.stack(keys))

    def _execute(self, run, args):
        next_key = _randomness(run, self.name)
        K = self.particles
        if run.mode in (ASSESS, GENERATE) and run.constraints:
            z = dict(run.constraints)
            w_z = self.target.assess(z, *args) - self.proposal.assess(z, *args)
            others = self._particles(next_key, args, K - 1)[1] if K > 1 else jnp.zeros((0,))
            log_z_hat = jax.nn.logsumexp(jnp.concatenate([w_z[None], others])) - jnp.log(K)
            _record(run, z, self.target.assess(z, *args) - log_z_hat)
            return None
        choices, log_w = self._particles(next_key, args, K)
        key = next_key()
        if key is None:
            j = bind_sample(run.path("~index"), nd.Categorical(logits=log_w), self.index_estimator)
        else:
            j = jax.random.categorical(key, log_w)
        z = jax.tree_util.tree_map(lambda c: c[j], choices)
        log_z_hat = jax.nn.logsumexp(log_w) - jnp.log(K)
        _record(run, z, self.target.assess(z, *args) - log_z_hat)
        return None


def normalize(target: GenerativeFunction, proposal: GenerativeFunction, particles: int,
              index_estimator: Estimator = reinforce) -> GenerativeFunction:
    """Sampling importance resampling as a generative function; see :class:`Normalize`."""
    return Normalize(target, proposal, particles, index_estimator)
