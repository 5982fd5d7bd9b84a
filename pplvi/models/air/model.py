r"""Attend-Infer-Repeat (Eslami et al., NIPS 2016, "Attend, Infer, Repeat: Fast Scene Understanding with Generative
Models"): a scene is a variable number of objects, each drawn by a small VAE decoder into an attention window that
a spatial transformer places on the canvas.

**Model** (per 50 x 50 image ``x``, at most ``steps`` objects). For :math:`t = 1..T`:

.. math:: b_t \sim \mathrm{Bernoulli}(\rho), \quad \pi_t = \textstyle\prod_{s \le t} b_s, \quad
          z^{\text{where}}_t \sim \mathcal N(0, I_3), \quad z^{\text{what}}_t \sim \mathcal N(0, I_{50}),

.. math:: x \sim \mathcal N\Big(\sum_t \pi_t\, \mathrm{place}\big(\sigma(g_\theta(z^{\text{what}}_t)),
          z^{\text{where}}_t\big),\ 0.3^2 I\Big).

:math:`\pi_t` is the "present" indicator: an object exists until the first :math:`b_t = 0`, so the number of objects
:math:`n = \sum_t \pi_t` has the geometric prior :math:`\rho^n (1 - \rho)` (:math:`\rho^T` at :math:`n = T`) of the
paper's sequential prior :math:`z^{\text{pres}}_t \sim \mathrm{Bernoulli}(\rho\, z^{\text{pres}}_{t-1})`, written
with unconditional bits so that no probability is exactly 0 (which would give enumeration and measure-valued
derivatives infinite log-density slopes). ``where`` and ``what`` of absent objects are masked out of the density
(``Distribution.mask``), as in the paper.

**Guide** (the recurrent inference network): an LSTM run for ``T`` steps on an embedding of the image and the
previous step's latents; step :math:`t` emits :math:`q(b_t) = \mathrm{Bernoulli}(\sigma(\cdot))` and the Gaussian
:math:`q(z^{\text{where}}_t)`; the window that ``where`` points at is cropped from the image and encoded into the
Gaussian :math:`q(z^{\text{what}}_t)`.

The present bits have no reparameterization; their gradient comes from the estimator chosen at ``"pres_t"``
(:data:`ESTIMATORS`): ``"reinforce"``, ``"baseline"`` (REINFORCE with a learned image-dependent baseline, NVIL),
``"enum"``, ``"mvd"``, or any :class:`pplvi.Estimator`. ``where`` and ``what`` are reparameterized.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist

import pplvi
from pplvi import objectives as O
from pplvi.models.air.transformer import CANVAS, WINDOW, crop, place

PIXELS = CANVAS * CANVAS
ESTIMATORS = ("reinforce", "baseline", "enum", "mvd")


class AIR(eqx.Module):
    """The networks of AIR: ``embed`` (image -> features for the inference LSTM), ``rnn`` (LSTM cell), ``predict``
    (hidden state -> present logit, ``where`` mean and raw scale), ``encoder`` (window -> ``what`` mean and raw
    scale), ``decoder`` (``what`` -> window logits) and ``baseline`` (image embedding -> scalar, the NVIL baseline
    used only by the ``"baseline"`` estimator)."""

    embed: eqx.Module
    rnn: eqx.nn.LSTMCell
    predict: eqx.nn.Linear
    encoder: eqx.Module
    decoder: eqx.Module
    baseline: eqx.Module
    steps: int = eqx.field(static=True, default=3)
    what_dim: int = eqx.field(static=True, default=50)
    pres_prior: float = eqx.field(static=True, default=0.5)
    obs_scale: float = eqx.field(static=True, default=0.3)

    @classmethod
    def init(cls, key, *, steps: int = 3, what_dim: int = 50, hidden: int = 256, embed: int = 256,
             pres_prior: float = 0.5, obs_scale: float = 0.3):
        """Networks of the paper's multi-MNIST experiment, smaller where CPU training demands it: one hidden layer
        of 200 in the object encoder/decoder, an LSTM of ``hidden`` units fed an ``embed``-dimensional image
        embedding. The present logit starts high (+2) and the decoder's bias low (-2), so training starts from
        "objects present, drawing faint windows" rather than from an empty scene."""
        if steps < 1:
            raise ValueError(f"AIR: steps must be at least 1, got {steps}")
        if not 0.0 < pres_prior < 1.0:
            raise ValueError(f"AIR: pres_prior must be in (0, 1), got {pres_prior}")
        ks = jax.random.split(key, 6)
        window = WINDOW * WINDOW
        predict = eqx.nn.Linear(hidden, 7, key=ks[2])
        predict = eqx.tree_at(lambda m: m.bias, predict, predict.bias.at[0].set(2.0).at[4:].set(-1.0))
        decoder = eqx.nn.MLP(what_dim, window, 200, 1, activation=jax.nn.relu, key=ks[4])
        decoder = eqx.tree_at(lambda m: m.layers[-1].bias, decoder, jnp.full(window, -2.0))
        return cls(
            embed=eqx.nn.MLP(PIXELS, embed, embed, 1, activation=jax.nn.relu, final_activation=jax.nn.relu,
                             key=ks[0]),
            rnn=eqx.nn.LSTMCell(embed + 3 + what_dim + 1, hidden, key=ks[1]),
            predict=predict,
            encoder=eqx.nn.MLP(window, 2 * what_dim, 200, 1, activation=jax.nn.relu, key=ks[3]),
            decoder=decoder,
            baseline=eqx.nn.MLP(embed, "scalar", 64, 1, activation=jax.nn.relu, key=ks[5]),
            steps=steps, what_dim=what_dim, pres_prior=pres_prior, obs_scale=obs_scale,
        )

    def draw(self, what):
        """The object window (``20 x 20`` intensities in (0, 1)) for a ``what`` latent."""
        return jax.nn.sigmoid(self.decoder(what)).reshape(WINDOW, WINDOW)

    def predicted_elbo(self, x):
        """The learned baseline :math:`b_\\psi(x)` in nats: a small MLP on the guide's image embedding, which it reads
        without training it (``stop_gradient``); scaled so that early optimizer steps move it by nats."""
        return 100.0 * self.baseline(jax.lax.stop_gradient(self.embed(x)))


@pplvi.gen
def air_model(air: AIR, x):
    """The generative model for one flattened image ``x`` (``x=None`` samples one); returns the mean canvas."""
    canvas = jnp.zeros((CANVAS, CANVAS))
    present = jnp.ones(())
    for t in range(air.steps):
        bit = pplvi.sample(f"pres_{t}", dist.Bernoulli(probs=air.pres_prior)).astype(jnp.float32)
        present = present * bit
        on = present > 0
        where = pplvi.sample(f"where_{t}", dist.Normal(jnp.zeros(3), 1.0).to_event(1).mask(on))
        what = pplvi.sample(f"what_{t}", dist.Normal(jnp.zeros(air.what_dim), 1.0).to_event(1).mask(on))
        canvas = canvas + present * place(air.draw(what), where)
    pplvi.sample("x", dist.Normal(canvas.reshape(-1), air.obs_scale).to_event(1), obs=x)
    return canvas


@pplvi.gen
def air_guide(air: AIR, x):
    """The recurrent inference network for one image; returns the inferred number of objects."""
    features = air.embed(x)
    image = x.reshape(CANVAS, CANVAS)
    state = (jnp.zeros(air.rnn.hidden_size), jnp.zeros(air.rnn.hidden_size))
    where, what, present = jnp.zeros(3), jnp.zeros(air.what_dim), jnp.ones(())
    count = jnp.zeros(())
    for t in range(air.steps):
        state = air.rnn(jnp.concatenate([features, where, what, present[None]]), state)
        out = air.predict(state[0])
        bit = pplvi.sample(f"pres_{t}", dist.Bernoulli(logits=out[0])).astype(jnp.float32)
        present = present * bit
        on = present > 0
        where = pplvi.sample(f"where_{t}", dist.Normal(out[1:4], jax.nn.softplus(out[4:7]) + 1e-3).to_event(1)
                             .mask(on))
        enc = air.encoder(crop(image, where).reshape(-1))
        loc, scale = enc[:air.what_dim], jax.nn.softplus(enc[air.what_dim:]) + 1e-3
        what = pplvi.sample(f"what_{t}", dist.Normal(loc, scale).to_event(1).mask(on))
        count = count + present
    return count


def _pres_addresses(air: AIR) -> list[str]:
    return [f"pres_{t}" for t in range(air.steps)]


@functools.cache
def _with(estimator, steps: int) -> pplvi.GenerativeFunction:
    return pplvi.with_estimators(air_guide, {f"pres_{t}": estimator for t in range(steps)})


def guide_with(estimator, steps: int = 3) -> pplvi.GenerativeFunction:
    """:func:`air_guide` with ``estimator`` (``"reinforce"``, ``"enum"``, ``"mvd"`` or a :class:`pplvi.Estimator`)
    at every present bit (``"baseline"`` needs the image: :func:`air_elbo` applies it)."""
    table = {"reinforce": pplvi.reinforce, "enum": pplvi.enum, "mvd": pplvi.mvd}
    if isinstance(estimator, str):
        if estimator not in table:
            raise ValueError(f"estimator={estimator!r}: guide_with takes one of {list(table)} or a pplvi.Estimator")
        estimator = table[estimator]
    return _with(estimator, steps)


def _per_image(bound: str, K: int, estimator, steps: int):
    if estimator == "baseline":
        raise ValueError("the baseline estimator is applied per image by air_elbo / air_iwae")
    guide = guide_with(estimator, steps)
    return O.elbo(air_model, guide) if bound == "elbo" else O.iwae(air_model, guide, K)


def _batched(bound: str, K: int, estimator, steps: int) -> pplvi.Objective:
    if not (isinstance(estimator, pplvi.Estimator) or estimator in ESTIMATORS):
        raise ValueError(f"estimator={estimator!r} is not one of {list(ESTIMATORS)} or a pplvi.Estimator")
    per_image = None if estimator == "baseline" else _per_image(bound, K, estimator, steps)

    @pplvi.objective
    def air_objective(air, images):
        if air.steps != steps:
            raise ValueError(f"this objective was built for steps={steps}, the model has steps={air.steps}")
        n = images.shape[0]

        def lane(x):
            if per_image is None:
                est = pplvi.baseline(pplvi.reinforce, air.predicted_elbo(x) / n, learned=True)
                guide = pplvi.with_estimators(air_guide, dict.fromkeys(_pres_addresses(air), est))
                bound_fn = O.elbo(air_model, guide) if bound == "elbo" else O.iwae(air_model, guide, K)
                pplvi.add_cost(bound_fn(air, x) / n)
            else:
                pplvi.add_cost(per_image(air, x) / n)

        jax.vmap(lane)(images)
        return jnp.zeros(())

    air_objective.name = f"air_{bound}{K if bound == 'iwae' else ''}_{getattr(estimator, '__name__', estimator)}"
    return air_objective


def air_elbo(estimator="enum", *, steps: int = 3) -> pplvi.Objective:
    r"""The ELBO averaged over a minibatch of flattened images, ``objective(air, images)``, with ``estimator`` at the
    present bits (:data:`ESTIMATORS` or a :class:`pplvi.Estimator`). Each image's bound is emitted from its own
    ``vmap`` lane with :func:`pplvi.add_cost`, so a present bit's score multiplies only its own image's bound, and
    ``enum`` / ``mvd`` evaluate the alternatives of all images at once."""
    return _batched("elbo", 1, estimator, steps)


def air_iwae(K: int = 2, estimator="reinforce", *, steps: int = 3) -> pplvi.Objective:
    """The ``K``-particle importance-weighted bound (Burda et al. 2016) per image, averaged over a minibatch, with
    ``estimator`` at the present bits (the genjax.vi paper's IWAE(K=2)+REINFORCE and IWAE(K=2)+MVD rows)."""
    if K < 1:
        raise ValueError(f"air_iwae: K must be at least 1, got {K}")
    return _batched("iwae", K, estimator, steps)


def infer_counts(air: AIR, images, key) -> jax.Array:
    """The number of objects the guide infers for each image (one guide draw per image)."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, x: air_guide.simulate(k, air, x).retval)(keys, images).astype(jnp.int32)


def count_accuracy(air: AIR, images, counts, key, chunk: int = 250) -> float:
    """Fraction of images whose inferred count (:func:`infer_counts`) equals the true one."""
    run = eqx.filter_jit(infer_counts)
    hits = 0
    for i in range(0, images.shape[0], chunk):
        inferred = run(air, images[i:i + chunk], jax.random.fold_in(key, i))
        hits += int(jnp.sum(inferred == jnp.asarray(counts[i:i + chunk])))
    return hits / images.shape[0]
