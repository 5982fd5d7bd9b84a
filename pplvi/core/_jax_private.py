"""The only place pplvi reads JAX's internal equation formats. A JAX upgrade that changes them touches this file."""

from __future__ import annotations


def scan_arity(eqn) -> tuple[int, int]:
    """(number of constants, number of carries) of a ``scan`` equation.

    jax >= 0.11 describes a scan's inputs with flat-tree parameters ``ft_in = (consts, carry, xs)``; older versions
    used ``num_consts`` / ``num_carry``."""
    p = eqn.params
    if "num_consts" in p:
        return p["num_consts"], p["num_carry"]
    consts, carry, _ = p["ft_in"].unpack()
    return len(list(consts.vals)), len(list(carry.vals))


def bind_equation(eqn, *args):
    """Evaluate one jaxpr equation on ``args`` the way ``jax.core.eval_jaxpr`` does."""
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = ()
    if isinstance(params, tuple):  # jax < 0.10 returned (subfuns, params)
        subfuns, params = params
    with eqn.ctx.manager:
        return eqn.primitive.bind(*subfuns, *args, **params)


_LEVEL_IDS = __import__("itertools").count(1)


def vmap_lane_tokens() -> tuple[list, tuple[int, ...]]:
    """One batched token per ``jax.vmap`` enclosing the current trace, outermost first.

    A random choice inside ``jax.vmap`` must be an independent draw per lane even when none of its operands depends on
    the mapped input (e.g. particles ``jax.vmap(lambda _: guide.simulate(params))(jnp.arange(K))``). JAX only batches
    a primitive whose operands are batched, so ``bind_sample`` adds these tokens as extra operands: the choice is then
    batched along every enclosing ``vmap`` and the interpreter draws one value per lane.

    Also returns an id per enclosing ``vmap`` (outermost first), stable for the duration of that ``vmap``: choices
    and costs with the same outermost id were batched by the same ``vmap`` (used for Rao-Blackwellization)."""
    import jax.numpy as jnp
    from jax._src import core as jcore
    from jax._src.interpreters import batching as jbatching

    levels = []
    trace = jcore.trace_ctx.trace
    while isinstance(trace, jbatching.BatchTrace):
        levels.append(trace)
        trace = trace.parent_trace
    tokens, ids = [], []
    for level in reversed(levels):
        if not hasattr(level, "_pplvi_id"):
            level._pplvi_id = next(_LEVEL_IDS)
        ids.append(level._pplvi_id)
        with jcore.set_current_trace(level.parent_trace):
            value = jnp.zeros((level.axis_data.size,), jnp.int8)
        tokens.append(jbatching.BatchTracer(level, value, 0))
    return tokens, tuple(ids)
