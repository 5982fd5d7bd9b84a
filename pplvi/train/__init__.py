"""Training: :func:`fit` maximizes a pplvi objective with an optax optimizer (chunked, jit-compiled loop with a
progress bar; minibatching; evaluations; a non-finite guard; safe atomic checkpoints and bit-identical resume;
scale-out over a device mesh with ``mesh=``).

See ``docs/training.md``."""

from pplvi.train.checkpoint import load_tree, save_tree
from pplvi.train.loop import FitResult, fit
from pplvi.train.sharding import shard

__all__ = ["FitResult", "fit", "load_tree", "save_tree", "shard"]
