"""Bring programs written in other JAX PPLs to pplvi: :func:`from_numpyro` and :func:`from_genjax`.

Both return pplvi generative functions, usable as models (``assess``) and as guides (``simulate`` inside an
``@pplvi.objective``, where every random choice of the foreign program becomes a pplvi random choice).
"""

from pplvi.interop.genjax import from_genjax, from_genjax_choices, to_genjax_choices
from pplvi.interop.numpyro import from_numpyro

__all__ = ["from_genjax", "from_genjax_choices", "from_numpyro", "to_genjax_choices"]
