"""Distribution Transformer: train once on random mixture priors, then change the prior at test time.

    python examples/dist_transformer_prior_adaptation.py [steps]

A network is trained (pplvi.fit on the expected forward KL) to map a 1-D Gaussian-mixture prior and two noisy
observations y ~ N(x, 1) to the posterior mixture. Then one data set is combined with three different priors that the
network never saw; each time the posterior is one forward pass, and its KL to the closed-form posterior is printed.
About a minute on 2 CPU cores.
"""

import sys

import jax
import jax.numpy as jnp

from pplvi.models import dist_transformer as D

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
family = D.gmm_1d()                                                     # meta-prior over 4-component priors
net = D.DistributionTransformer(1, 1, key=jax.random.key(0), width=32, depth=2, hidden=64,
                                location_scale=3.0, observation_scale=3.0)
result = D.train(net, family, steps=steps, batch=128, learning_rate=3e-3, key=1)
net = result.params
print(result)

y = jnp.array([[1.2], [2.0]])                                            # one data set
priors = {
    "broad, centred":   D.GaussianMixture(jnp.zeros(4), jnp.array([[-3.0], [-1.0], [1.0], [3.0]]),
                                          jnp.full((4, 1, 1), 1.5)),
    "bimodal at +-4":   D.GaussianMixture(jnp.log(jnp.array([0.5, 0.5, 1e-3, 1e-3])),
                                          jnp.array([[-4.0], [4.0], [0.0], [0.0]]), jnp.full((4, 1, 1), 0.6)),
    "confident at -1":  D.GaussianMixture(jnp.log(jnp.array([0.7, 0.1, 0.1, 0.1])),
                                          jnp.array([[-1.0], [-2.0], [0.0], [5.0]]), jnp.full((4, 1, 1), 0.4)),
}
for name, prior in priors.items():
    q = net(prior, y)                                                    # no retraining: the prior is an input
    exact = family.exact_posterior(prior, y)
    kl, se = D.kl_monte_carlo(exact.log_prob, exact.sample(jax.random.key(2), 20_000), q.log_prob)
    print(f"{name:16s} posterior mean {float(q.mean()[0]):+.3f} (exact {float(exact.mean()[0]):+.3f}), "
          f"sd {float(jnp.sqrt(q.variance()[0])):.3f} (exact {float(jnp.sqrt(exact.variance()[0])):.3f}), "
          f"KL(exact || q) = {float(kl):.4f} +- {float(se):.4f}")
