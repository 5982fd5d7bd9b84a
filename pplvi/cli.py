"""The ``pplvi`` command line: ``pplvi demo`` trains a VAE with a user-written objective;
``pplvi bench <suite>`` runs ``benchmarks/<suite>.py``. Errors are one line, ``pplvi: error: ...``, with exit
status 2.

The demo is written entirely in pplvi's public language: a model and a guide (``@pplvi.gen``) and the training
objective itself (``@pplvi.objective``: IWAE with K particles, or the ELBO), whose gradient pplvi estimates.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax

import pplvi
from pplvi.core.errors import DataError, PPLVIError

DEFAULT_STEPS = 15_000
LATENT, HIDDEN, PIXELS = 10, 200, 784


# ------------------------------------------------------------------------------------------------------------
# The model, the guide and the objectives: this is the part a user writes.
# ------------------------------------------------------------------------------------------------------------
class VAE(eqx.Module):
    encoder: eqx.nn.MLP  # 784 -> 200 -> (loc, log_scale) of a 10-d Gaussian
    decoder: eqx.nn.MLP  # 10 -> 200 -> 784 Bernoulli logits

    def __init__(self, key):
        k_enc, k_dec = jax.random.split(key)
        self.encoder = eqx.nn.MLP(PIXELS, 2 * LATENT, HIDDEN, 1, activation=jnp.tanh, key=k_enc)
        self.decoder = eqx.nn.MLP(LATENT, PIXELS, HIDDEN, 1, activation=jnp.tanh, key=k_dec)


@pplvi.gen
def model(decoder, x):
    """p(z) p(x | z): a standard normal latent, Bernoulli pixels. Returns the pixel probabilities."""
    z = pplvi.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
    logits = decoder(z)
    pplvi.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
    return jax.nn.sigmoid(logits)


@pplvi.gen
def guide(encoder, x):
    """q(z | x): a diagonal Gaussian whose parameters the encoder computes from the image."""
    loc, log_scale = jnp.split(encoder(x), 2)
    pplvi.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))


def log_weight(vae, x):
    """One importance weight, log p(x, z) - log q(z | x) with z ~ q(. | x). Call it inside an objective."""
    trace = guide.simulate(vae.encoder, x)
    return model.assess(trace.choices, vae.decoder, x) - trace.score


def iwae_objective(k):
    """The IWAE bound with k particles, averaged over a batch: E[log (1/k) sum_i w_i] <= log p(x)."""

    @pplvi.objective
    def iwae(vae, images):
        def bound(x):
            log_w = jax.vmap(lambda _: log_weight(vae, x))(jnp.arange(k))  # k independent particles
            return jax.nn.logsumexp(log_w) - jnp.log(k)

        return jnp.mean(jax.vmap(bound)(images))

    return iwae


def elbo_objective(k):
    """The ELBO, E[log w], estimated with k samples per image, averaged over a batch."""

    @pplvi.objective
    def elbo(vae, images):
        def bound(x):
            return jnp.mean(jax.vmap(lambda _: log_weight(vae, x))(jnp.arange(k)))

        return jnp.mean(jax.vmap(bound)(images))

    return elbo


# ------------------------------------------------------------------------------------------------------------
# Data, training, evaluation, figures.
# ------------------------------------------------------------------------------------------------------------
def load_binary_images(say=print):
    """Binarized MNIST (train, test) as (N, 784) float32 arrays and a description; if MNIST is missing, the
    8x8 sklearn digits upsampled 3x and padded to 28x28."""
    from pplvi.data import load_digits, load_mnist

    try:
        train, _ = load_mnist("train", binarize="static")
        test, _ = load_mnist("test", binarize="static")
        name = "mnist (binarized at 0.5)"
    except DataError as mnist_error:
        try:
            digits, _ = load_digits()
        except DataError as digits_error:
            raise DataError(f"{mnist_error} The fallback dataset is missing too: {digits_error}") from None
        say(f"MNIST is not available ({mnist_error}); falling back to the sklearn 8x8 digits, upsampled to "
            "28x28.")
        big = np.pad(np.kron(digits, np.ones((3, 3), np.float32)), ((0, 0), (2, 2), (2, 2)))
        big = (big > 0.5).astype(np.float32)
        train, test = big[:1500], big[1500:]
        name = "sklearn-digits (8x8 upsampled to 28x28, binarized at 0.5)"
    return train.reshape(len(train), PIXELS), test.reshape(len(test), PIXELS), name


def make_train_chunk(objective, optimizer, batch):
    """A jitted function running ``len(keys)`` optimizer steps in one ``lax.scan``; it returns the new
    parameters, optimizer state and the per-step objective values."""

    @eqx.filter_jit
    def train_chunk(params, static, opt_state, keys, train):
        def step(carry, key):
            params, opt_state = carry
            k_batch, k_objective = jax.random.split(key)
            images = train[jax.random.randint(k_batch, (batch,), 0, train.shape[0])].astype(jnp.float32)
            value, grads = objective.value_and_grad(k_objective, eqx.combine(params, static), images)
            grads = jax.tree.map(jnp.negative, grads)  # objectives are maximized; optax minimizes
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (eqx.apply_updates(params, updates), opt_state), value

        (params, opt_state), values = jax.lax.scan(step, (params, opt_state), keys)
        return params, opt_state, values

    return train_chunk


def train(vae, train_images, *, objective, steps, batch, chunk, key, progress=True):
    """Maximize ``objective`` with Adam(1e-3) for ``steps`` steps; returns the VAE and the per-step values."""
    from tqdm.auto import tqdm

    optimizer = optax.adam(1e-3)
    params, static = eqx.partition(vae, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    run_chunk = make_train_chunk(objective, optimizer, batch)
    data = jnp.asarray(train_images, jnp.uint8)  # 0/1 pixels, stored compactly on the device
    values = []
    with tqdm(total=steps, unit="step", desc=f"training {objective.name}", disable=not progress) as bar:
        for start in range(0, steps, chunk):
            n = min(chunk, steps - start)
            key, sub = jax.random.split(key)
            params, opt_state, vals = run_chunk(params, static, opt_state, jax.random.split(sub, n), data)
            vals = np.asarray(vals)
            values.append(vals)
            bar.update(n)
            bar.set_postfix(objective=f"{vals.mean():.2f}")
    return eqx.combine(params, static), np.concatenate(values)


def estimate_in_chunks(objective, vae, images, key, chunk):
    """The mean over ``images`` of an objective that averages over its batch, ``chunk`` images at a time."""
    total = 0.0
    for i, start in enumerate(range(0, len(images), chunk)):
        part = jnp.asarray(images[start:start + chunk])
        total += float(objective.estimate(jax.random.fold_in(key, i), vae, part)) * len(part)
    return total / len(images)


def save_figures(out, values, vae, test_images, key, metrics):
    """loss_curve.png, samples.png, reconstructions.png in ``out``; returns their paths."""
    from matplotlib.figure import Figure

    paths = []
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(1, len(values) + 1)
    label = f"training objective ({metrics['objective']})"
    ax.plot(steps, values, lw=0.5, alpha=0.35, color="C0", label=label)
    window = max(1, min(200, len(values) // 10))
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1:], smooth, color="C0", label=f"moving average ({window} steps)")
    ax.axhline(metrics["test_elbo"], color="C1", ls="--", label=f"test ELBO {metrics['test_elbo']:.2f}")
    ax.axhline(metrics["test_iwae_k1000"], color="C2", ls="--",
               label=f"test IWAE K=1000 {metrics['test_iwae_k1000']:.2f}")
    lo = np.percentile(values, 5) if len(values) > 20 else values.min()
    ax.set_ylim(lo, max(values.max(), metrics["test_iwae_k1000"]) + 5)
    ax.set(xlabel="step", ylabel="nats per image (higher is better)", title=f"VAE on {metrics['dataset']}")
    ax.legend(loc="lower right", fontsize=8)
    paths.append(out / "loss_curve.png")
    fig.savefig(paths[-1], dpi=120)

    rows = max(1, min(4, len(test_images) // 8))
    originals = np.asarray(test_images[: 8 * rows])
    probs, recons = map(np.asarray, _samples_and_reconstructions(vae, key, jnp.asarray(originals)))
    paths.append(out / "samples.png")
    _grid(probs, 8, "samples: p(x | z), z ~ p(z)").savefig(paths[-1], dpi=120)

    pairs = np.stack([originals.reshape(rows, -1, PIXELS), recons.reshape(rows, -1, PIXELS)], 1)
    paths.append(out / "reconstructions.png")
    _grid(pairs.reshape(-1, PIXELS), 8, "test images (odd rows) and reconstructions (even rows)").savefig(
        paths[-1], dpi=120
    )
    return paths


@eqx.filter_jit
def _samples_and_reconstructions(vae, key, images):
    """64 draws of p(x | z) with z ~ p(z) (pixel probabilities), and reconstructions of ``images``."""
    k_prior, k_recon = jax.random.split(key)
    probs = jax.vmap(lambda k: model.simulate(k, vae.decoder, None).retval)(jax.random.split(k_prior, 64))
    keys = jax.random.split(k_recon, len(images))
    zs = jax.vmap(lambda k, x: guide.simulate(k, vae.encoder, x)["z"])(keys, images)
    return probs, jax.nn.sigmoid(jax.vmap(vae.decoder)(zs))


def _grid(images, cols, title):
    from matplotlib.figure import Figure

    n = len(images)
    rows = -(-n // cols)
    tiles = np.ones((rows * 29 + 1, cols * 29 + 1), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        tiles[1 + 29 * r: 29 * (r + 1), 1 + 29 * c: 29 * (c + 1)] = 1.0 - img.reshape(28, 28)
    fig = Figure(figsize=(cols * 0.75, rows * 0.75 + 0.4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(tiles, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    return fig


def run_demo(args) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PPLVIError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    train_images, test_images, dataset = load_binary_images()
    eval_images = test_images[: args.test_images]
    objective = iwae_objective(args.k) if args.objective == "iwae" else elbo_objective(args.k)
    label = f"{args.objective} (K={args.k})"
    print(f"pplvi demo: VAE 784-200-10 on {dataset}, objective {label}, batch {args.batch}, "
          f"{args.steps} steps ({jax.devices()[0].platform})")

    key = jax.random.key(args.seed)
    k_init, k_train, k_eval, k_fig = jax.random.split(key, 4)
    t0 = time.perf_counter()
    vae, values = train(VAE(k_init), train_images, objective=objective, steps=args.steps, batch=args.batch,
                        chunk=args.chunk, key=k_train)
    seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    k_elbo, k_iwae = jax.random.split(k_eval)
    test_elbo = estimate_in_chunks(elbo_objective(100), vae, eval_images, k_elbo, chunk=100)
    test_iwae = estimate_in_chunks(iwae_objective(1000), vae, eval_images, k_iwae, chunk=10)
    eval_seconds = time.perf_counter() - t0
    metrics = {
        "test_elbo": test_elbo,
        "test_iwae_k1000": test_iwae,
        "steps": args.steps,
        "seconds": round(seconds, 2),
        "objective": label,
        "dataset": dataset,
        "batch": args.batch,
        "k": args.k,
        "seed": args.seed,
        "latent_dim": LATENT,
        "test_images": len(eval_images),
        "train_objective_last_100_steps": float(values[-100:].mean()),
        "steps_per_second": round(args.steps / seconds, 1),
        "eval_seconds": round(eval_seconds, 2),
        "device": str(jax.devices()[0]),
    }
    figures = save_figures(out, values, vae, test_images, k_fig, metrics)
    metrics["total_seconds"] = round(time.perf_counter() - start, 2)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    n = len(eval_images)
    print(f"test ELBO (mean over {n} test images, 100 samples each): {test_elbo:.2f} nats")
    print(f"test IWAE bound, K=1000 (mean over {n} test images):     {test_iwae:.2f} nats")
    print(f"trained {args.steps} steps in {seconds:.1f} s ({args.steps / seconds:.0f} steps/s); "
          f"evaluation {eval_seconds:.1f} s; total {metrics['total_seconds']:.1f} s")
    print(f"wrote {out / 'metrics.json'}, " + ", ".join(str(p) for p in figures))
    return 0


# ------------------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------------------
def _bench_dirs() -> list[Path]:
    dirs = [Path.cwd() / "benchmarks", Path(pplvi.__file__).resolve().parents[1] / "benchmarks"]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def _suites() -> list[str]:
    dirs = [d for d in _bench_dirs() if d.is_dir()]
    return sorted({p.stem.removeprefix("vs_") for d in dirs for p in d.glob("*.py") if not p.name.startswith("_")})


def run_bench(args) -> int:
    available = ", ".join(_suites()) or "none"
    if args.suite is None:
        raise PPLVIError(f"bench: name a suite to run (available: {available})")
    if not args.suite.replace("_", "").replace("-", "").isalnum():
        raise PPLVIError(f"bench: {args.suite!r} is not a suite name (available: {available})")
    for d in _bench_dirs():
        for script in (d / f"{args.suite}.py", d / f"vs_{args.suite}.py"):  # vs_<library>.py: see benchmarks/README
            if script.is_file():
                return subprocess.call([sys.executable, str(script), *args.args], cwd=d.parent)
    where = " or ".join(str(d) for d in _bench_dirs())
    raise PPLVIError(
        f"bench: no suite {args.suite!r}: {args.suite}.py is not in {where} (available: {available})"
    )


# ------------------------------------------------------------------------------------------------------------
# argument parsing
# ------------------------------------------------------------------------------------------------------------
class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message; main() prints it
        prefix = "" if self.prog == "pplvi" else self.prog.removeprefix("pplvi ") + ": "
        raise _UsageError(f"{prefix}{message} (see '{self.prog} --help')")


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ------------------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------------------
MODELS = ("vae", "kvae")
DATASETS = {"vae": ("mnist", "fashion-mnist"), "kvae": None}  # kvae: the settings of pplvi.models.kvae.reproduce


def run_train(args) -> int:
    """Train a model of the model libraries with pplvi.fit and report its metrics (VAE: the test log-likelihood
    estimate; Koopman VAE: discriminative and predictive scores)."""

    from pplvi.models import vae

    if args.model not in MODELS:
        raise PPLVIError(f"train: unknown model {args.model!r} (available: {', '.join(MODELS)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.model == "kvae":
        return _train_kvae(args, out)
    args.dataset = args.dataset or "mnist"
    args.steps, args.batch, args.lr = args.steps or 2000, args.batch or 100, args.lr or 1e-3
    args.test_images = args.test_images or 1000
    if args.dataset not in DATASETS["vae"]:
        raise PPLVIError(f"train vae: unknown dataset {args.dataset!r} (available: {', '.join(DATASETS['vae'])})")
    key = jax.random.key(args.seed)
    train = vae.load_images(args.dataset, "train")
    test = vae.load_images(args.dataset, "test", binarize="sample", seed=args.seed)[: args.test_images]
    objective = vae.iwae(args.k, binarize=True) if args.objective == "iwae" else vae.elbo(binarize=True)
    start = time.perf_counter()
    result = pplvi.fit(objective, vae.GaussianVAE.mlp(key, latent=args.latent), data=train, batch_size=args.batch,
                       optimizer=optax.adam(args.lr), steps=args.steps, key=key, history_path=out / "history.csv",
                       desc=f"{args.model} {args.objective}")
    seconds = time.perf_counter() - start
    ll = vae.log_likelihood(result.params, test, jax.random.key(args.seed + 1), K=args.eval_k)
    metrics = {
        "model": args.model, "objective": args.objective, "k": args.k, "dataset": args.dataset, "steps": args.steps,
        "seconds": round(seconds, 2), "final_objective": float(result.history["objective"][-1]),
        f"test_ll_iwae_k{args.eval_k}": float(np.mean(ll)), "test_images": int(len(test)),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"test log-likelihood (IWAE, K={args.eval_k}, {len(test)} images): {np.mean(ll):.2f} nats")
    print(f"wrote {out / 'metrics.json'} and {out / 'history.csv'}")
    return 0


def _train_kvae(args, out: Path) -> int:
    from pplvi.models.kvae import reproduce

    name = args.dataset or "sines"
    if name not in reproduce.SETTINGS:
        raise PPLVIError(f"train kvae: unknown dataset {name!r} (available: {', '.join(reproduce.SETTINGS)})")
    disc_steps, pred_steps = (args.metric_steps, args.metric_steps) if args.metric_steps else (2000, 5000)
    row = reproduce.run_setting(name, steps=args.steps or reproduce.SETTINGS[name]["steps"],
                                score_windows=args.test_images or 3000, disc_steps=disc_steps, pred_steps=pred_steps,
                                repeats=1, seed=args.seed, batch_size=args.batch or 64, learning_rate=args.lr or 2e-3)
    metrics = {"model": "kvae", "dataset": name, **row}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out / 'metrics.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pplvi", description="pplvi: programmable variational inference in JAX.")
    parser.add_argument("--version", action="version", version=f"pplvi {pplvi.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,train,bench}", parser_class=_Parser)

    demo = sub.add_parser(
        "demo", help="train a VAE on binarized MNIST with a user-written objective",
        description="Train a VAE (784-200-10) on binarized MNIST with a user-written objective (IWAE with "
        "K particles, or the ELBO), then report the test ELBO and the IWAE K=1000 bound and write "
        "metrics.json, loss_curve.png, samples.png and reconstructions.png. Data comes from $PPLVI_DATA "
        "(default: the nearest shared/data folder); without MNIST it falls back to the sklearn 8x8 digits.",
    )
    demo.add_argument("--steps", type=_positive, default=DEFAULT_STEPS,
                      help=f"optimizer steps (default {DEFAULT_STEPS}, about 3 minutes on 2 CPU cores)")
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--objective", choices=("iwae", "elbo"), default="iwae", help="training objective")
    demo.add_argument("--k", type=_positive, default=5, help="particles per image (default 5)")
    demo.add_argument("--batch", type=_positive, default=128, help="images per step (default 128)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    # hidden: steps fused per lax.scan, and how many test images the evaluation uses
    demo.add_argument("--chunk", type=_positive, default=50, help=argparse.SUPPRESS)
    demo.add_argument("--test-images", type=_positive, default=1000, help=argparse.SUPPRESS)
    demo.set_defaults(run=run_demo)

    train = sub.add_parser(
        "train", help="train a model of the model libraries with pplvi.fit",
        description="Train a model library's model. vae: Gaussian-latent VAE, MLP 784-200-200-50, dynamically "
        "binarized images, trained with --objective, then the test log-likelihood by IWAE with --eval-k particles "
        "(writes metrics.json and history.csv). kvae: the Koopman VAE on --dataset sines, stocks, energy or "
        "sines_missing30/50/70, then its discriminative and predictive scores on --test-images windows (writes "
        "metrics.json).",
    )
    train.add_argument("model", help=f"model name ({', '.join(MODELS)})")
    train.add_argument("--objective", choices=("iwae", "elbo"), default="iwae", help="training objective")
    train.add_argument("--k", type=_positive, default=5, help="IWAE particles (default 5)")
    train.add_argument("--steps", type=_positive, default=None,
                       help="optimizer steps (default: vae 2000, kvae the dataset's setting)")
    train.add_argument("--batch", type=_positive, default=None, help="data per step (default: vae 100, kvae 64)")
    train.add_argument("--latent", type=_positive, default=50, help="latent dimensions (default 50)")
    train.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: vae 1e-3, kvae 2e-3)")
    train.add_argument("--dataset", default=None,
                       help="vae: mnist (default) or fashion-mnist; kvae: sines (default), stocks, energy, "
                       "sines_missing30/50/70")
    train.add_argument("--eval-k", type=_positive, default=1000, help="IWAE particles for the test estimate")
    train.add_argument("--test-images", type=_positive, default=None,
                       help="test images (vae, default 1000) or scored windows (kvae, default 3000)")
    train.add_argument("--out", default="out/train", help="output folder (default out/train)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    # hidden: training steps of the kvae scores' post-hoc classifier and predictor (default 2000 / 5000)
    train.add_argument("--metric-steps", type=_positive, default=None, help=argparse.SUPPRESS)
    train.set_defaults(run=run_train)

    bench = sub.add_parser(
        "bench", help="run a benchmark suite, benchmarks/<suite>.py",
        description="Run benchmarks/<suite>.py (from the current directory or the pplvi checkout) with the "
        "remaining arguments passed through, e.g. 'pplvi bench overhead --quick'.",
    )
    bench.add_argument("suite", nargs="?", help="suite name, e.g. overhead")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the suite")
    bench.set_defaults(run=run_bench)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``pplvi`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            where = f"{args.command}: " if args.command else ""
            raise _UsageError(f"{where}unrecognized arguments: {' '.join(extra)} "
                              f"(see '{' '.join(filter(None, ('pplvi', args.command)))} --help')")
        if args.command is None:
            raise _UsageError("choose a command: demo, train or bench (see 'pplvi --help')")
        return args.run(args)
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    except (_UsageError, PPLVIError) as e:
        print(f"pplvi: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pplvi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
