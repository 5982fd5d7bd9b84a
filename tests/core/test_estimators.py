"""Statistical unbiasedness suite: estimator x distribution family x context.

Each case draws N gradient estimates (vmapped over keys, jitted) of
``L(theta) = E[sum_i f_theta(x_i)]`` with ``f_theta(x) = (x + 1)^2 + theta * x`` and compares their mean with the
exact gradient from closed-form moments. Tolerance: 5 standard errors of the mean (plus 1e-4 absolute for
zero-variance estimators). Seeds are fixed, so a failure is reproducible.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
import pytest

import pplvi

N = 4000
THETA = 0.3


# -- families: a distribution of theta and its first two moments in closed form ---------------------------------
def _cat_probs(t):
    return jax.nn.softmax(jnp.stack([t, 0.0 * t, -t]))


FAMILIES = {
    "normal": (lambda t: nd.Normal(t, jnp.exp(t / 2)), lambda t: (t, t**2 + jnp.exp(t))),
    "bernoulli": (lambda t: nd.Bernoulli(logits=t), lambda t: (jax.nn.sigmoid(t), jax.nn.sigmoid(t))),
    "categorical": (
        lambda t: nd.Categorical(logits=jnp.stack([t, 0.0 * t, -t])),
        lambda t: (_cat_probs(t) @ jnp.arange(3.0), _cat_probs(t) @ jnp.arange(3.0) ** 2),
    ),
    "gamma": (lambda t: nd.Gamma(jnp.exp(t), 1.0), lambda t: (jnp.exp(t), jnp.exp(t) * (jnp.exp(t) + 1))),
    "beta": (
        lambda t: nd.Beta(jnp.exp(t), 2.0),
        lambda t: (
            jnp.exp(t) / (jnp.exp(t) + 2),
            jnp.exp(t) * (jnp.exp(t) + 1) / ((jnp.exp(t) + 2) * (jnp.exp(t) + 3)),
        ),
    ),
}

ESTIMATORS = {
    "reparam": pplvi.reparam,
    "reinforce": pplvi.reinforce,
    "baseline": pplvi.baseline(pplvi.reinforce, 2.0),
    "enum": pplvi.enum,
    "enum_sequential": pplvi.enum_sequential,
    "mvd": pplvi.mvd,
}

APPLIES = {
    "normal": ["reparam", "reinforce", "baseline", "mvd"],
    "bernoulli": ["reinforce", "baseline", "enum", "enum_sequential", "mvd"],
    "categorical": ["reinforce", "baseline", "enum", "mvd"],
    "gamma": ["reparam", "reinforce"],
    "beta": ["reparam", "reinforce"],
}

LOCAL = {"reparam", "reinforce", "baseline"}  # estimators that need no continuation


def f(x, t):
    x = x.astype(jnp.result_type(t))
    return (x + 1.0) ** 2 + t * x


def expected_one(family, t):
    m1, m2 = FAMILIES[family][1](t)
    return m2 + (2.0 + t) * m1 + 1.0


def _site(family, est, t, addr="x"):
    return pplvi.sample(addr, FAMILIES[family][0](t), estimator=ESTIMATORS[est])


def straight(family, est):
    return pplvi.objective(lambda t: f(_site(family, est, t), t)), 1.0


def scan(family, est, unroll=False):
    def obj(t):
        def body(c, _):
            return c + f(_site(family, est, t), t), None

        return jax.lax.scan(body, 0.0 * t, None, length=3)[0]

    return pplvi.objective(obj, unroll=unroll), 3.0


def fori(family, est):
    def obj(t):
        return jax.lax.fori_loop(0, 3, lambda i, c: c + f(_site(family, est, t), t), 0.0 * t)

    return pplvi.objective(obj), 3.0


def cond(family, est):
    def obj(t):
        coin = pplvi.sample("coin", nd.Bernoulli(probs=0.5))  # parameter-free: contributes no score
        return jax.lax.cond(
            coin > 0, lambda: f(_site(family, est, t), t), lambda: 2.0 * f(_site(family, est, t, "y"), t)
        )

    return pplvi.objective(obj), 1.5


def vmapped(family, est):
    def obj(t):
        xs = jax.vmap(lambda tt: _site(family, est, tt))(jnp.full(4, t))
        return jnp.sum(f(xs, t))

    return pplvi.objective(obj), 4.0


def nested(family, est):
    inner = pplvi.objective(lambda t: f(_site(family, est, t, "inner"), t))

    def obj(t):
        return inner(t) + f(_site(family, est, t, "outer"), t)

    return pplvi.objective(obj), 2.0


def nested_jit(family, est):
    def obj(t):
        return jax.jit(lambda tt: f(_site(family, est, tt), tt))(t)

    return pplvi.objective(obj), 1.0


CONTEXTS = {
    "straight": straight,
    "scan": scan,
    "fori_loop": fori,
    "cond": cond,
    "vmap": vmapped,
    "nested_objective": nested,
    "nested_jit": nested_jit,
}
LOOPS = {"scan", "fori_loop"}

CASES = [
    (fam, est, ctx)
    for fam, ests in APPLIES.items()
    for est in ests
    for ctx in CONTEXTS
    if not (ctx in LOOPS and est not in LOCAL)
]


def grad_samples(obj, n=N, seed=0, theta=THETA):
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(lambda k: obj.grad(k, theta)))(keys)


def assert_unbiased(samples, exact, label=""):
    mean = jnp.mean(samples)
    se = jnp.std(samples) / jnp.sqrt(samples.shape[0])
    assert jnp.all(jnp.isfinite(samples)), label
    assert abs(mean - exact) <= 5 * se + 1e-4, f"{label}: mean {mean:.5f} vs exact {exact:.5f} (se {se:.5f})"


@pytest.mark.parametrize("family,est,ctx", CASES, ids=[f"{a}-{b}-{c}" for a, b, c in CASES])
def test_gradient_is_unbiased(family, est, ctx):
    obj, multiplicity = CONTEXTS[ctx](family, est)
    exact = multiplicity * jax.grad(lambda t: expected_one(family, t))(THETA)
    assert_unbiased(grad_samples(obj), exact, f"{family}/{est}/{ctx}")


@pytest.mark.parametrize("est", ["enum", "mvd"])
def test_continuation_estimators_in_scan_are_unbiased_when_unrolled(est):
    obj, m = scan("bernoulli", est, unroll=True)
    exact = m * jax.grad(lambda t: expected_one("bernoulli", t))(THETA)
    assert_unbiased(grad_samples(obj), exact, est)


def test_value_estimates_are_unbiased():
    obj, m = vmapped("categorical", "reinforce")
    keys = jax.random.split(jax.random.key(3), N)
    values = jax.jit(jax.vmap(lambda k: obj.estimate(k, THETA)))(keys)
    assert_unbiased(values, m * expected_one("categorical", THETA), "value")


def test_dirichlet_implicit_reparam_is_unbiased():
    alpha = jnp.array([1.0, 2.0, 3.0])

    @pplvi.objective
    def obj(a):
        x = pplvi.sample("x", nd.Dirichlet(a), estimator=pplvi.reparam)
        return x[0] ** 2

    # E[x0^2] = a0 (a0 + 1) / (A (A + 1)) for Dirichlet
    exact = jax.grad(lambda a: a[0] * (a[0] + 1) / (a.sum() * (a.sum() + 1)))(alpha)
    keys = jax.random.split(jax.random.key(4), N)
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, alpha)))(keys)
    for i in range(3):
        assert_unbiased(g[:, i], exact[i], f"dirichlet[{i}]")


def test_while_loop_reinforce_is_unbiased_in_forward_mode():
    def obj_fn(t):
        def body(state):
            i, c = state
            return i + 1, c + f(pplvi.sample("x", nd.Bernoulli(logits=t), estimator=pplvi.reinforce), t)

        return jax.lax.while_loop(lambda s: s[0] < 3, body, (0, 0.0 * t))[1]

    obj = pplvi.objective(obj_fn)
    keys = jax.random.split(jax.random.key(5), N)
    tangents = jax.jit(jax.vmap(lambda k: jax.jvp(lambda t: obj.estimate(k, t), (THETA,), (1.0,))[1]))(keys)
    assert_unbiased(tangents, 3 * jax.grad(lambda t: expected_one("bernoulli", t))(THETA), "while")


def test_dependent_choices_in_scan_are_unbiased():
    """A Markov chain of Bernoulli choices whose logits depend on the previous choice; exact by enumeration."""

    def chain(t, choose):
        prev, total = 0.0, 0.0
        for i in range(3):
            x = choose(i, t + prev)
            total, prev = total + f(x, t), x
        return total

    @pplvi.objective
    def obj(t):
        def body(prev, _):
            x = pplvi.sample("x", nd.Bernoulli(logits=t + prev), estimator=pplvi.reinforce).astype(jnp.float32)
            return x, f(x, t)

        return jax.lax.scan(body, 0.0 * t, None, length=3)[1].sum()

    def exact(t):
        total = 0.0
        for bits in range(8):
            xs = [(bits >> i) & 1 for i in range(3)]
            prev, lp, val = 0.0, 0.0, 0.0
            for x in xs:
                p = jax.nn.sigmoid(t + prev)
                lp = lp + jnp.log(jnp.where(x == 1, p, 1 - p))
                val, prev = val + f(jnp.float32(x), t), float(x)
            total = total + jnp.exp(lp) * val
        return total

    assert_unbiased(grad_samples(obj), jax.grad(exact)(THETA), "markov chain")


# -- variance properties -----------------------------------------------------------------------------------------
def test_enum_has_zero_variance():
    obj, _ = straight("categorical", "enum")
    g = grad_samples(obj, n=64)
    assert float(jnp.std(g)) < 1e-6


def test_reparam_has_lower_variance_than_reinforce_on_a_gaussian_mean():
    var = {e: float(jnp.var(grad_samples(straight("normal", e)[0], n=2000))) for e in ["reparam", "reinforce"]}
    assert var["reparam"] * 5 < var["reinforce"], var


def test_baseline_reduces_reinforce_variance():
    # f(x) = (x+1)^2 + theta*x for a Bernoulli lies in [1, 4.3]; b = 2.5 centres it.
    plain = grad_samples(straight("bernoulli", "reinforce")[0], n=2000)

    @pplvi.objective
    def with_b(t):
        return f(pplvi.sample("x", nd.Bernoulli(logits=t), estimator=pplvi.baseline(pplvi.reinforce, 2.5)), t)

    assert float(jnp.var(grad_samples(with_b, n=2000))) * 3 < float(jnp.var(plain))


def test_learned_baseline_gradient_fits_the_baseline():
    """With learned=True the baseline's parameter receives d/db of -(f - b)^2 / 2, whose mean is E[f] - b."""

    @pplvi.objective
    def obj(params):
        b = params["b"]
        x = pplvi.sample("x", nd.Bernoulli(logits=params["t"]), estimator=pplvi.baseline(pplvi.reinforce, b, True))
        return f(x, params["t"])

    params = {"t": THETA, "b": 0.0}
    keys = jax.random.split(jax.random.key(7), N)
    g = jax.jit(jax.vmap(lambda k: obj.grad(k, params)))(keys)
    assert_unbiased(g["t"], jax.grad(lambda t: expected_one("bernoulli", t))(THETA), "t")
    assert_unbiased(g["b"], expected_one("bernoulli", THETA) - 0.0, "b")


def test_gradients_depend_on_the_key_inside_scan():
    obj, _ = scan("normal", "reparam")
    g = grad_samples(obj, n=8)
    assert float(jnp.std(g)) > 1e-3


# -- a user-defined estimator in under 30 lines --------------------------------------------------------------------
class LeaveOneOut(pplvi.Estimator):
    """REINFORCE with n samples and a leave-one-out baseline (Kool et al. 2019)."""

    n: int = 4
    needs_continuation = True

    def jvp(self, key, dist, kont):
        keys = jax.random.split(key, self.n)
        xs = [dist.sample(k) for k in keys]
        outs = [kont(x) for x in xs]
        values = jnp.stack([o.primal for o in outs])
        primal = values.mean()
        if not dist.has_tangent:
            return pplvi.Dual(primal, None)
        loo = (values.sum() - values) / (self.n - 1)
        tangent = sum(
            (0.0 if o.tangent is None else o.tangent) + (values[i] - loo[i]) * dist.score(xs[i]).sum()
            for i, o in enumerate(outs)
        ) / self.n
        return pplvi.Dual(primal, tangent)


def test_user_defined_leave_one_out_estimator_is_unbiased():
    @pplvi.objective
    def obj(t):
        return f(pplvi.sample("x", nd.Categorical(logits=jnp.stack([t, 0.0 * t, -t])), estimator=LeaveOneOut()), t)

    exact = jax.grad(lambda t: expected_one("categorical", t))(THETA)
    samples = grad_samples(obj)
    assert_unbiased(samples, exact, "leave-one-out")
    plain = grad_samples(straight("categorical", "reinforce")[0])
    assert jnp.var(samples) < jnp.var(plain)


def test_vmapped_choices_are_independent_even_without_batched_operands():
    """Particles: jax.vmap over an ignored index must still give independent draws per lane."""

    @pplvi.objective
    def obj(t):
        xs = jax.vmap(lambda _: pplvi.sample("x", nd.Normal(t, 1.0)))(jnp.arange(8))
        return jnp.var(xs)

    values = jax.vmap(lambda k: obj.estimate(k, 0.0))(jax.random.split(jax.random.key(0), 500))
    assert abs(values.mean() - 7 / 8) < 5 * values.std() / jnp.sqrt(500.0)  # E[sample var] = (n-1)/n


# -- choices with event dims (.to_event): enumeration and MVD work per element ----------------------------------
EVENT_W = jnp.array([1.0, -2.0, 0.5])


def _event_f(x, t):
    return jnp.sum((x + 1) ** 2 * EVENT_W) + t * x[0] * x[1] - x[2] * x[0]


def _event_dist(kind, t):
    if kind == "bernoulli":
        return nd.Bernoulli(logits=jnp.array([t, -t, 2 * t])).to_event(1)
    return nd.Categorical(logits=jnp.stack([jnp.array([t, 0.0, -t])] * 3) * jnp.arange(1.0, 4.0)[:, None]).to_event(1)


def _event_exact(kind, t):
    import itertools

    d = _event_dist(kind, t)
    K = 2 if kind == "bernoulli" else 3
    configs = jnp.array(list(itertools.product(range(K), repeat=3)), jnp.float32)
    return jnp.sum(jax.vmap(lambda c: jnp.exp(d.log_prob(c.astype(jnp.int32))) * _event_f(c, t))(configs))


@pytest.mark.parametrize("lanes", [False, True], ids=["plain", "vmap-lanes"])
@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
@pytest.mark.parametrize("est", ["enum", "mvd"])
def test_enum_and_mvd_on_to_event_choices_are_unbiased(est, kind, lanes):
    @pplvi.objective
    def obj(t):
        def one(_):
            x = pplvi.sample("x", _event_dist(kind, t), estimator=ESTIMATORS[est]).astype(jnp.float32)
            return pplvi.add_cost(_event_f(x, t) / 4)

        if lanes:  # four independent lanes, each emitting its own term: the lane-local evaluation path
            jax.vmap(one)(jnp.arange(4))
            return 0.0 * t
        x = pplvi.sample("x", _event_dist(kind, t), estimator=ESTIMATORS[est]).astype(jnp.float32)
        return _event_f(x, t)

    exact = jax.grad(lambda t: _event_exact(kind, t))(THETA)
    assert_unbiased(grad_samples(obj, n=2000), exact, f"{est}/{kind}/to_event/{'lanes' if lanes else 'plain'}")
