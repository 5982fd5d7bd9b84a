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
