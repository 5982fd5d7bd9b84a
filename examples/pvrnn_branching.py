"""PV-RNN on a probabilistic finite-state machine: train at a meta-prior w, generate, and check the branching.

    python examples/pvrnn_branching.py [w] [steps]

The data branch C -> a with probability 0.3 and C -> b with 0.7. At an intermediate meta-prior (w = 0.1) the
sequences generated from one initial state reproduce those frequencies; at w = 1 generation becomes (near)
deterministic. Then error regression (network frozen, adaptive vectors fitted to a window of recent observations)
predicts the next steps of held-out sequences. About a minute on 2 CPU cores.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from pplvi.models import pvrnn as P

w = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-1
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000

fsm = P.branching_fsm(p=0.3)
x, _ = P.fsm_sequences(0, 32, 80, fsm, noise=0.05)                     # (32, 80, 2)
net = P.PVRNN.init(jax.random.key(0), 2, hidden=(24, 12), latent=(2, 1), tau=(2.0, 8.0))
result = P.train(net, x, steps=steps, key=1, w=w, w1=1.0)               # network + adaptive vectors
net = result.params["network"]
print(result)

first = tuple(jnp.zeros(z) for z in net.latents)                       # one initial state for every generation
gens = np.asarray(jax.vmap(lambda k: P.generate(net, k, net.initial_state(), 200, first=first)[0])(
    jax.random.split(jax.random.key(2), 64)))
print("P(C->a), P(C->b) generated:", np.round(P.branching_frequencies(gens, fsm)[0, 1:], 3), "true: [0.3 0.7]")
print(f"branching error {P.branching_error(gens, fsm):.3f}, determinism {P.determinism(gens, float(x.var())):.3f}")

held_out, _ = P.fsm_sequences(7, 8, 60, fsm)
er = P.error_regression(net, held_out[:, 20:40], steps=150, key=3, w=w)  # only the adaptive vectors move
pred = np.asarray(P.predict(net, er.params["adaptive"], jax.random.key(4), 10))
print(f"error-regression prediction MSE over the next 10 steps: {((pred - held_out[:, 40:50]) ** 2).mean():.4f}")
