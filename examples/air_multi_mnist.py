"""Train Attend-Infer-Repeat on multi-MNIST with a chosen estimator at the present bits; plot inferred windows.

    python examples/air_multi_mnist.py --estimator mvd --steps 2000      # writes out/air_<estimator>.png

Estimators: reinforce, baseline (learned NVIL baseline), enum, mvd; ``--iwae K`` trains the K-particle bound.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import pplvi
from pplvi.models import air as A

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def boxes(air, x, key):
    """Inferred windows of one image: ``[(present, (left, top, size)), ...]`` in canvas pixels."""
    trace = A.air_guide.simulate(key, air, jnp.asarray(x))
    out, present = [], 1.0
    for t in range(air.steps):
        present *= float(trace.choices[f"pres_{t}"])
        s, tx, ty = (float(v) for v in A.geometry(trace.choices[f"where_{t}"]))
        size = s * 50
        out.append((present, ((tx + 1) * 25 - size / 2, (ty + 1) * 25 - size / 2, size)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", default="mvd", choices=list(A.ESTIMATORS))
    parser.add_argument("--iwae", type=int, default=0, help="K > 0: train the K-particle IWAE bound")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n", type=int, default=10000, help="training canvases")
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args(argv)

    images, _ = A.multi_mnist(args.n, "train", seed=0)
    test, counts = A.multi_mnist(500, "test", seed=1)
    objective = A.air_iwae(args.iwae, args.estimator) if args.iwae else A.air_elbo(args.estimator)
    result = pplvi.fit(objective, A.AIR.init(jax.random.key(0)), data=images, batch_size=32,
                       optimizer=optax.adam(3e-4), steps=args.steps, key=jax.random.key(1), desc=objective.name)
    accuracy = A.count_accuracy(result.params, jnp.asarray(test), counts, jax.random.key(2))
    print(f"{objective.name}: final objective {result.history['objective'][-1]:.1f}, count accuracy {accuracy:.3f}")

    fig, axes = plt.subplots(2, 6, figsize=(12, 4.4))
    for i, ax in enumerate(axes.ravel()):
        ax.imshow(np.asarray(test[i]).reshape(50, 50), cmap="gray", vmin=0, vmax=1)
        for present, (left, top, size) in boxes(result.params, test[i], jax.random.key(i)):
            if present:
                ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), size, size, fill=False, color="tab:red"))
        ax.set_title(f"true {counts[i]}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"AIR, {objective.name}: count accuracy {accuracy:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"air_{args.estimator}{f'_iwae{args.iwae}' if args.iwae else ''}.png"
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
