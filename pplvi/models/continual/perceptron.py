r"""Variational continual learning of a binary perceptron in field space (Li, Huang, Zou & Huang, "Statistical
mechanics of continual learning: variational principle and mean-field potential", Phys. Rev. E 108, 014309, 2023).

**Tasks.** Teacher-student: task :math:`t` has a teacher :math:`W^{(t)} \in \{\pm1\}^N` and examples
:math:`(x_\mu, y_\mu = \mathrm{sign}(W^{(t)} \cdot x_\mu))`, :math:`x_\mu \sim \mathcal N(0, I_N)`. Successive
teachers are correlated: :math:`W^{(t+1)}` is :math:`W^{(t)}` with a fraction ``flip`` of its signs flipped.

**Variational family.** Mean-field over binary weights, parameterized by *fields* :math:`h \in \mathbb R^N`:
:math:`q_h(w) = \prod_i e^{h_i w_i} / (2\cosh h_i)`, means :math:`m_i = \tanh h_i`. Training happens in field space,
where gradients exist, instead of the ill-defined discrete weight space.

**Gaussian approximation of pre-activations.** Under :math:`q_h` the pre-activation :math:`u = w \cdot x/\sqrt N` is a
sum of N independent terms, so :math:`u \approx \mathcal N(\mu, v)` with :math:`\mu = m \cdot x/\sqrt N`,
:math:`v = \sum_i (1 - m_i^2) x_i^2 / N`, and the probability that the binary student labels :math:`x` correctly is
:math:`\Phi(y\mu/\sqrt v)` (:math:`\Phi` the standard normal CDF).

**Objective for task t** (per example, maximized): the previous task's posterior is the prior,

.. math:: \mathcal L_t(h) = \frac1P \sum_{\mu=1}^P \log \Phi\Big(\frac{y_\mu \mu_\mu}{\sqrt{v_\mu}}\Big)
          - \frac1P\,\mathrm{KL}(q_h \,\|\, q_{h^{(t-1)}}),
          \qquad \mathrm{KL} = \sum_i (h_i - h_i')\tanh h_i - \log\cosh h_i + \log\cosh h_i',

with :math:`h^{(0)} = 0` (the uniform prior). The data term is the log of the Gaussian-approximated expected
likelihood of the step-function perceptron (the paper's mean-field potential: the expectation is inside the log,
as in the Franz-Parisi free energy). The KL keeps weights that the previous tasks pinned (large :math:`|h'|`) and
frees uncertain ones: weight uncertainty allocates synaptic resources between tasks.

**Baseline.** Plain SGD trains the same fields on the same data term without the KL (each task starting from the
previous task's fields). The binary network's weights are :math:`\mathrm{sign}(h)`; the overlap with teacher
:math:`t` is :math:`R_t = \frac1N \sum_i \mathrm{sign}(h_i) W^{(t)}_i` (generalization error
:math:`\arccos(R_t)/\pi`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import log_ndtr

import pplvi


def make_teachers(key, num_inputs: int, num_tasks: int, flip: float) -> jnp.ndarray:
    """``(num_tasks, N)`` teachers in :math:`\\{\\pm1\\}^N`; each is the previous with a fraction ``flip`` flipped."""
    if not 0.0 <= flip <= 1.0:
        raise pplvi.DataError(f"make_teachers: flip must be in [0, 1], got {flip!r}")
    keys = jax.random.split(key, num_tasks)
    teacher = jnp.where(jax.random.bernoulli(keys[0], 0.5, (num_inputs,)), 1.0, -1.0)
    teachers = [teacher]
    for k in keys[1:]:
        flips = jax.random.permutation(k, num_inputs)[: int(round(flip * num_inputs))]
        teacher = teacher.at[flips].multiply(-1.0)
        teachers.append(teacher)
    return jnp.stack(teachers)


def make_task(key, teacher, num_examples: int):
    """``(x, y)``: Gaussian inputs ``(P, N)`` labelled by the teacher's sign."""
    x = jax.random.normal(key, (num_examples, teacher.shape[0]))
    return x, jnp.where(x @ teacher >= 0, 1.0, -1.0)


def log_correct_probability(fields, x, y):
    """:math:`\\log\\Phi(y\\mu/\\sqrt v)` per example (Gaussian approximation of the pre-activation)."""
    m = jnp.tanh(fields)
    n = x.shape[-1]
    mean = x @ m / jnp.sqrt(n)
    var = (x**2) @ (1.0 - m**2) / n
    return log_ndtr(y * mean / jnp.sqrt(var + 1e-6))


def binary_kl(fields, prior_fields):
    """:math:`\\mathrm{KL}(q_h \\| q_{h'})` between mean-field distributions over :math:`\\{\\pm1\\}^N`."""
    log_cosh = lambda h: jnp.logaddexp(h, -h) - jnp.log(2.0)  # noqa: E731 (stable log cosh)
    return jnp.sum((fields - prior_fields) * jnp.tanh(fields) - log_cosh(fields) + log_cosh(prior_fields))


def continual_objective(prior_fields, num_examples: int, kl_weight: float = 1.0) -> pplvi.Objective:
    """:math:`\\mathcal L_t` above, an objective ``(fields, x, y)`` on a minibatch (``kl_weight=0``: the baseline's
    data term alone)."""
    prior_fields = jnp.asarray(prior_fields)

    @pplvi.objective
    def field_space_elbo(fields, x, y):
        data_term = jnp.mean(log_correct_probability(fields, x, y))
        return data_term - kl_weight * binary_kl(fields, prior_fields) / num_examples

    return field_space_elbo


def overlap(fields, teacher) -> float:
    """:math:`R = \\frac1N \\sum_i \\mathrm{sign}(h_i) W_i` of the binary student ``sign(h)``."""
    return float(jnp.mean(jnp.where(fields >= 0, 1.0, -1.0) * teacher))


def learn_sequence(tasks, *, variational: bool, steps: int = 400, batch_size: int = 100, lr: float = 0.5,
                   init_scale: float = 1e-2, seed: int = 0, progress: bool = False):
    """Train fields through ``tasks`` (a list of ``(x, y)``) in order with :func:`pplvi.fit` and plain SGD
    (``optax.sgd``, the same for both methods). ``variational=True``: the objective above with the previous fields
    as the prior; ``False``: the data term alone (plain SGD). Returns the list of fields after each task."""
    if not tasks:
        raise pplvi.DataError("learn_sequence: no tasks")
    num_inputs = tasks[0][0].shape[1]
    fields = init_scale * jax.random.normal(jax.random.key(seed), (num_inputs,))
    prior = jnp.zeros(num_inputs)
    history = []
    for t, (x, y) in enumerate(tasks):
        objective = continual_objective(prior, x.shape[0], kl_weight=1.0 if variational else 0.0)
        result = pplvi.fit(objective, fields, optimizer=optax.sgd(lr), steps=steps, key=seed * 100 + t,
                           data=(x, y), batch_size=min(batch_size, x.shape[0]), progress=progress)
        fields = result.params
        prior = fields
        history.append(np.asarray(fields))
    return history
