"""A VAE on binarized MNIST, trained with an IWAE objective written by hand in pplvi.

    python examples/vae_mnist.py [steps]

The model and the guide are generative functions; the objective is a program that simulates the guide and
scores the model. pplvi turns it into an unbiased gradient estimator (reparameterization at ``z``).
``pplvi demo`` is the same VAE with a fused training loop, evaluation and plots.
"""

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax

import pplvi
from pplvi.data import load_mnist

K, BATCH, LATENT = 5, 128, 10


class VAE(eqx.Module):
    encoder: eqx.nn.MLP
    decoder: eqx.nn.MLP

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.encoder = eqx.nn.MLP(784, 2 * LATENT, 200, 1, activation=jnp.tanh, key=k1)  # -> loc, log_scale
        self.decoder = eqx.nn.MLP(LATENT, 784, 200, 1, activation=jnp.tanh, key=k2)  # -> Bernoulli logits


@pplvi.gen
def model(decoder, x):
    z = pplvi.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
    pplvi.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)


@pplvi.gen
def guide(encoder, x):
    loc, log_scale = jnp.split(encoder(x), 2)
    pplvi.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))


@pplvi.objective
def iwae(vae, images):
    """log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(. | x), averaged over the batch (maximized)."""

    def bound(x):
        def log_weight(_):
            trace = guide.simulate(vae.encoder, x)  # no key: the objective's key drives every choice
            return model.assess(trace.choices, vae.decoder, x) - trace.score

        log_w = jax.vmap(log_weight)(jnp.arange(K))  # K independent particles
        return jax.nn.logsumexp(log_w) - jnp.log(K)

    return jnp.mean(jax.vmap(bound)(images))


optimizer = optax.adam(1e-3)


@eqx.filter_jit
def step(vae, opt_state, key, train):
    k_batch, k_grad = jax.random.split(key)
    images = train[jax.random.randint(k_batch, (BATCH,), 0, len(train))]
    value, grads = iwae.value_and_grad(k_grad, vae, images)  # unbiased estimates of the bound and gradient
    updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grads), opt_state)  # ascend
    return eqx.apply_updates(vae, updates), opt_state, value


def main(steps=2000):
    train, _ = load_mnist("train", binarize="static")
    test, _ = load_mnist("test", binarize="static")
    train, test = jnp.asarray(train.reshape(-1, 784)), jnp.asarray(test[:1000].reshape(-1, 784))

    vae = VAE(jax.random.key(0))
    opt_state = optimizer.init(eqx.filter(vae, eqx.is_inexact_array))
    key = jax.random.key(1)
    for i in range(1, steps + 1):
        key, sub = jax.random.split(key)
        vae, opt_state, value = step(vae, opt_state, sub, train)
        if i % 250 == 0 or i == steps:
            print(f"step {i:5d}  IWAE-{K} bound on a training batch: {float(value):8.2f}")
    print(f"IWAE-{K} bound on 1000 test images: {float(iwae.estimate(key, vae, test)):.2f} nats")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
