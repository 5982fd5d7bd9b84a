"""A linear-Gaussian VAE is probabilistic PCA: trained by the ELBO, it reaches PPCA's exact maximum likelihood.

    python examples/vae_ppca.py [--steps 2000] [--covariance full|diagonal] [--seed 0]

Draws 2000 points from a random PPCA model (D=10, L=3), trains ``pplvi.models.vae.LinearGaussianVAE`` with
``pplvi.fit`` on the ELBO, and compares the trained ELBO (in closed form) with the closed-form maximum
log-likelihood of Tipping & Bishop (1999).
"""

import argparse

from pplvi.models import vae


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--covariance", choices=("full", "diagonal"), default="full")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    r = vae.ppca_check(steps=args.steps, covariance=args.covariance, seed=args.seed)
    print(f"exact maximum log-likelihood per datum: {r['ppca_max_log_likelihood']:.5f}")
    print(f"trained ELBO per datum (closed form):   {r['ppca_trained_elbo']:.5f}   "
          f"(pplvi's estimate {r['ppca_elbo_mc']:.5f} +- {r['ppca_elbo_mc_se']:.5f})")
    print(f"gap: {r['ppca_elbo_gap']:.2e} nats per datum; log-likelihood of the trained decoder is "
          f"{r['ppca_ll_gap']:.2e} below the maximum; noise variance {r['ppca_noise_var_trained']:.4f} "
          f"(maximum likelihood {r['ppca_noise_var_ml']:.4f}); {r['ppca_seconds']:.1f} s")


if __name__ == "__main__":
    main()
