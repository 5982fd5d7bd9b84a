"""``python -m pplvi.diffusion train NAME [--steps N] [--seed S] [--out PATH]`` and
``python -m pplvi.diffusion samples NAME [--guidance W] [--out PNG]``: see
:mod:`pplvi.diffusion.pretrained`."""

import argparse
import sys

from pplvi.diffusion import pretrained


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pplvi.diffusion")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one of the small diffusion models")
    t.add_argument("name", choices=sorted(pretrained.CONFIGS))
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None)
    g = sub.add_parser("samples", help="a grid of class-conditional samples (one row per class) as a PNG")
    g.add_argument("name", choices=sorted(pretrained.CONFIGS))
    g.add_argument("--weights", default=None)
    g.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale w (1: conditional)")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--out", default="out/diffusion_samples.png")
    a = p.parse_args(argv)
    if a.cmd == "train":
        pretrained.train(a.name, a.steps, a.seed, a.out)
        print(pretrained.describe(a.name, a.out))
    else:
        print(pretrained.sample_grid(a.name, a.out, a.weights, a.guidance, a.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
