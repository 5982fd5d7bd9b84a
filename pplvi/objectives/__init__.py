"""The objective library: every entry is a short program in pplvi's public language."""

from pplvi.objectives.terms import Terms, log_mean_exp, particles, terms
from pplvi.objectives.variational import (
    analytic_kl_term,
    cubo,
    cubo_bound,
    dreg,
    elbo,
    iwae,
    renyi,
    stl,
    tail_adaptive,
    vimco,
)
from pplvi.objectives.wake_sleep import forward_kl, p_wake, q_wake, sleep

__all__ = [
    "Terms", "analytic_kl_term", "cubo", "cubo_bound", "dreg", "elbo", "forward_kl", "iwae", "log_mean_exp",
    "p_wake", "particles", "q_wake", "renyi", "sleep", "stl", "tail_adaptive", "terms", "vimco",
]
