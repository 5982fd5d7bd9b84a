"""NIW meta-learning (Kim & Hospedales, ICLR 2024) on Omniglot 5-way few-shot: train, then predict a new episode.

    python examples/niw_meta_omniglot.py [steps] [shot] [K]

Meta-trains a diagonal-NIW posterior over the weights of a small conv embedding (ProtoNet likelihood) on
``background_small1`` (with rotations), then forms the one-time local posterior of test episodes
from the held-out alphabets of
``background_small2`` and reports the accuracy and the calibration (ECE) of the posterior predictive. Each query
is scored in training by the log of the K-draw posterior predictive (``predictive_samples=K``; K = 1 is the paper's
ELBO; the reproduction uses K = 32). A few minutes on 2 CPU cores for the default 100 steps, 1 shot, K = 8.
"""

import sys

import jax
import numpy as np

import pplvi
from pplvi.models import niw_meta as N
from pplvi.models.niw_meta.reproduce import niw_optimizer, omniglot_splits

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100
shot = int(sys.argv[2]) if len(sys.argv) > 2 else 1
draws = int(sys.argv[3]) if len(sys.argv) > 3 else 8

(x_train, y_train), (x_test, y_test) = omniglot_splits()              # 28x28 ink images, character labels
train = N.EpisodeSampler(x_train, y_train, way=5, shot=shot, query=3, rotations=True)
test = N.EpisodeSampler(x_test, y_test, way=5, shot=shot, query=3)
rng = np.random.default_rng(0)
batches = [train.sample(rng, 4) for _ in range(steps)]                # (sx, sy, qx, qy), 4 episodes per step

# q(phi) = diagonal NIW over the weights of a 4x16 conv embedding; p(D_i | theta_i) = ProtoNet's query likelihood
q, prior, unravel = N.init_niw(jax.random.key(0), way=None, channels=16)
elbo = N.niw_protonet_elbo(unravel, prior, num_episodes=4 * steps, steps=1, lr=0.4, predictive_samples=draws)
# Adam at 3e-3 for the NIW mean, 0.1 for its log-scale parameters (they must move by several units)
result = pplvi.fit(elbo, q, data=batches, optimizer=niw_optimizer(3e-3, 0.1), steps=steps, key=1)
print(result)

sx, sy, qx, qy = test.sample(np.random.default_rng(1), 50)
probs = np.concatenate([N.niw_predict(jax.random.key(i), result.params, unravel, sx[i], sy[i], qx[i], steps=1,
                                      head="protonet", samples=32)
                        for i in range(50)])
labels = qy.reshape(-1)
print(f"5-way {shot}-shot on held-out alphabets: accuracy {(probs.argmax(1) == labels).mean():.3f}, "
      f"ECE {N.expected_calibration_error(probs, labels):.3f}")
