"""A VAE with discrete latents on dynamically binarized MNIST: Bernoulli latents (or Categorical ones with
``--categories K``), the guide's gradient estimated by enumeration, measure-valued derivatives, REINFORCE, or
REINFORCE with a learned input-dependent baseline (NVIL).

    python examples/vae_discrete.py [--estimator baseline|reinforce|mvd|enum] [--latent 30] [--categories K]
                                    [--steps 3000] [--batch 100] [--dataset mnist|fashion-mnist]

``enum`` and ``mvd`` evaluate the rest of the batch objective once per latent component of the batch (cost
quadratic in the batch size in pplvi 0.1): use them with small batches, e.g. ``--batch 10``.
"""

import argparse

import jax
import numpy as np
import optax

import pplvi
from pplvi.models import vae


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimator", choices=vae.ESTIMATORS, default="baseline")
    parser.add_argument("--latent", type=int, default=30)
    parser.add_argument("--categories", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist")
    parser.add_argument("--test-images", type=int, default=500)
    args = parser.parse_args()

    train = vae.load_images(args.dataset, "train")
    test = vae.load_images(args.dataset, "test", binarize="sample")[: args.test_images]
    net = vae.DiscreteVAE.mlp(jax.random.key(0), latent=args.latent, categories=args.categories)
    objective = vae.discrete_elbo(args.estimator, binarize=True)
    result = pplvi.fit(objective, net, data=train, batch_size=args.batch, steps=args.steps, key=1,
                       optimizer=optax.adam(optax.exponential_decay(1e-3, args.steps, 0.1)))
    print(result)
    test_elbo = vae.discrete_log_likelihood(result.params, test, jax.random.key(2), K=1)
    ll = vae.discrete_log_likelihood(result.params, test, jax.random.key(3), K=1000)
    print(f"{args.dataset}, {args.latent} {'Bernoulli' if args.categories is None else f'{args.categories}-way'} "
          f"latents, estimator {args.estimator}: test ELBO {test_elbo.mean():.2f}, test log-likelihood (IWAE "
          f"K=1000) {ll.mean():.2f} +- {ll.std(ddof=1) / np.sqrt(len(ll)):.2f} nats ({len(test)} images)")


if __name__ == "__main__":
    main()
