"""Train a Gaussian-latent VAE on dynamically binarized MNIST (or Fashion-MNIST) with the ELBO or the IWAE bound,
then estimate its test log-likelihood with IWAE (K=1000) and save samples and reconstructions.

    python examples/vae_iwae_mnist.py [--objective elbo|iwae] [--k 5] [--arch mlp|conv] [--steps 3000]
                                      [--dataset mnist|fashion-mnist] [--test-images 500] [--out out/vae]

Everything comes from ``pplvi.models.vae``: the model and guide are generative functions, the objectives are
``O.elbo`` / ``O.iwae`` averaged over a minibatch, and ``pplvi.fit`` trains them. ``make reproduce-vae`` runs the
full ELBO-vs-IWAE comparison.
"""

import argparse
from pathlib import Path

import jax
import numpy as np
import optax

import pplvi
from pplvi.models import vae


def save_grid(images, path, cols=8):
    from matplotlib.figure import Figure

    rows = -(-len(images) // cols)
    tiles = np.ones((rows * 29 + 1, cols * 29 + 1), np.float32)
    for i, img in enumerate(np.asarray(images)):
        r, c = divmod(i, cols)
        tiles[1 + 29 * r: 29 * (r + 1), 1 + 29 * c: 29 * (c + 1)] = 1.0 - img.reshape(28, 28)
    fig = Figure(figsize=(cols * 0.6, rows * 0.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(tiles, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", choices=("elbo", "iwae"), default="iwae")
    parser.add_argument("--k", type=int, default=5, help="IWAE particles (default 5)")
    parser.add_argument("--arch", choices=("mlp", "conv"), default="mlp")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist")
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--out", default="out/vae")
    args = parser.parse_args()

    train = vae.load_images(args.dataset, "train")  # intensities: binarized afresh at every step
    test = vae.load_images(args.dataset, "test", binarize="sample")[: args.test_images]  # binarized once
    key = jax.random.key(0)
    net = vae.GaussianVAE.mlp(key) if args.arch == "mlp" else vae.GaussianVAE.conv(key, latent=16)
    objective = vae.elbo(binarize=True) if args.objective == "elbo" else vae.iwae(args.k, binarize=True)
    result = pplvi.fit(objective, net, data=train, batch_size=args.batch, steps=args.steps, key=1,
                       optimizer=optax.adam(optax.exponential_decay(1e-3, args.steps, 0.1)))
    print(result)

    ll = vae.log_likelihood(result.params, test, jax.random.key(2), K=1000)
    print(f"{args.dataset} test log-likelihood (IWAE K=1000, {len(test)} images): {ll.mean():.2f} "
          f"+- {ll.std(ddof=1) / np.sqrt(len(ll)):.2f} nats")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_grid(vae.sample_images(result.params, jax.random.key(3), 64), out / "samples.png")
    shown = test[:32]  # each test image followed by a reconstruction
    pairs = np.stack([shown, vae.reconstruct(result.params, jax.random.key(4), shown)], 1)
    save_grid(pairs.reshape(2 * len(shown), -1), out / "reconstructions.png")
    print(f"wrote {out / 'samples.png'} and {out / 'reconstructions.png'}")


if __name__ == "__main__":
    main()
