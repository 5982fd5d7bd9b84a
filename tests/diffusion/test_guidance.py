"""pplvi.diffusion.guidance: exact checks on a labelled 2-D Gaussian mixture with its analytic denoiser, NFE
accounting, errors, and the committed benchmark results (benchmarks/results/guidance.json).

Tolerances. The energy distance between two independent 1,000-point samples of the conditional target has mean
0.0094 and standard deviation 0.0076 (20 seed pairs, recorded in guidance.json as ``cfg_w1_energy_null``); CFG at
w = 1 passes below mean + 4 sd = 0.04, and the unconditional sampler (w = 0, the negative control, measured 0.18)
must fail it. Mode frequencies from 2,000 samples have standard errors below 0.011; "within noise" is 4 standard
errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pplvi.diffusion as D
from pplvi import PPLVIError
from pplvi.diffusion import guidance as G

SCHED = D.CosineSchedule()
MEANS = jnp.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
COVS = jnp.tile(0.3 * jnp.eye(2), (4, 1, 1))
WEIGHTS = jnp.array([0.4, 0.3, 0.2, 0.1])
GMM = D.GaussianMixture(WEIGHTS, MEANS, COVS, labels=jnp.array([0, 0, 1, 1]))
ENERGY_THRESHOLD = 0.04
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "guidance.json"


def run(pred, n=128, steps=15, sampler="ddim", seed=3):
    return jax.jit(lambda k: D.sample(sampler, k, pred, SCHED, (n, 2), steps))(jax.random.key(seed))


def test_cfg_at_w1_samples_the_conditional_and_w0_the_marginal():
    n = 1000
    target = GMM.sample(jax.random.key(2), n, label=0)
    out = run(G.CFG(GMM, 0, 1.0, schedule=SCHED), n=n, steps=40)
    assert int(out.nfe) == 2 * 40
    assert float(D.energy_distance(out.x, target)) < ENERGY_THRESHOLD
    unguided = run(G.CFG(GMM, 0, 0.0, schedule=SCHED), n=n, steps=40)
    assert float(D.energy_distance(unguided.x, target)) > ENERGY_THRESHOLD  # the check can fail


def test_cfg_matches_the_core_cfg_and_is_the_same_in_every_space():
    core = run(D.predictor(lambda x, t: (lambda u, c: u + 3.0 * (c - u))(GMM.eps(x, t, SCHED),
                                                                       GMM.eps(x, t, SCHED, 0)), 2))
    ours = run(G.CFG(GMM, 0, 3.0, schedule=SCHED))
    assert bool(jnp.all(core.x == ours.x)) and int(ours.nfe) == int(core.nfe) == 2 * 15
    with jax.enable_x64(True):
        gmm = D.GaussianMixture(WEIGHTS.astype(jnp.float64), MEANS.astype(jnp.float64),
                                COVS.astype(jnp.float64), labels=jnp.array([0, 0, 1, 1]))
        x = {s: run(G.CFG(gmm, 0, 3.0, space=s, schedule=SCHED), n=64, steps=10).x for s in ("eps", "x0", "v")}
        assert float(jnp.max(jnp.abs(x["x0"] - x["eps"]))) < 1e-9
        # the v round trip multiplies eps by a^2 + s^2, which the schedule computes to float32 rounding
        assert float(jnp.max(jnp.abs(x["v"] - x["eps"]))) < 1e-5


def test_apg_without_projection_rescale_or_momentum_is_cfg_to_machine_precision():
    with jax.enable_x64(True):
        gmm = D.GaussianMixture(WEIGHTS.astype(jnp.float64), MEANS.astype(jnp.float64),
                                COVS.astype(jnp.float64), labels=jnp.array([0, 0, 1, 1]))
        cfg = run(G.CFG(gmm, 0, 3.0, schedule=SCHED), n=64, steps=10)
        apg = run(G.APG(gmm, 0, 3.0, eta=1.0, schedule=SCHED), n=64, steps=10)
        assert cfg.x.dtype == jnp.float64
        assert float(jnp.max(jnp.abs(apg.x - cfg.x))) < 1e-9 and int(apg.nfe) == int(cfg.nfe)
        projected = run(G.APG(gmm, 0, 3.0, eta=0.0, schedule=SCHED), n=64, steps=10)
        assert float(jnp.max(jnp.abs(projected.x - cfg.x))) > 1e-2  # the projection does something


def test_apg_rescale_bounds_the_update_and_momentum_is_state():
    x = jax.random.normal(jax.random.key(0), (16, 2)) * 2
    t, r, w = 0.5, 0.05, 4.0
    rule = G.APG(GMM, 0, w, eta=1.0, rescale=r, schedule=SCHED)
    eps, state, nfe = jax.jit(rule)(x, t, rule.init(x))
    a, s = SCHED.signal_noise(t)
    x0_c = (x - s * jax.jit(lambda x: GMM.eps(x, t, SCHED, 0))(x)) / a
    x0 = (x - s * eps) / a
    assert float(jnp.max(jnp.linalg.norm(x0 - x0_c, axis=1))) <= (w - 1) * r * (1 + 1e-4)
    assert int(nfe) == 2
    mom = G.APG(GMM, 0, w, momentum=-0.5, schedule=SCHED)
    mom_step = jax.jit(mom)
    _, buf1, _ = mom_step(x, t, mom.init(x))
    assert float(jnp.max(jnp.abs(buf1))) > 0  # the first update is remembered
    e2, buf2, _ = mom_step(x, t, buf1)
    assert jnp.allclose(buf2, 0.5 * buf1, atol=1e-5)  # delta + beta * delta at the same point


@pytest.mark.parametrize("sampler, steps, calls", [("ddim", 10, 10), ("heun", 4, 9), ("dpm_solver_pp", 6, 7)])
def test_adaptive_guidance_with_threshold_one_is_cfg_bitwise(sampler, steps, calls):
    cfg = run(G.CFG(GMM, 0, 3.0, schedule=SCHED), n=64, steps=steps, sampler=sampler)
    ag = run(G.AdaptiveGuidance(GMM, 0, 3.0, threshold=1.0, schedule=SCHED), n=64, steps=steps, sampler=sampler)
    assert bool(jnp.all(ag.x == cfg.x))
    assert int(ag.nfe) == int(cfg.nfe) == 2 * calls


def test_adaptive_guidance_counts_the_evaluations_it_skips():
    # threshold -1: every sample switches at the first call, so the rest cost one evaluation each
    steps = 20
    ag = run(G.AdaptiveGuidance(GMM, 0, 3.0, threshold=-1.0, schedule=SCHED), steps=steps)
    assert int(ag.nfe) == 2 + (steps - 1)
    cfg = G.CFG(GMM, 0, 3.0, schedule=SCHED)
    x = jax.random.normal(jax.random.key(1), (8, 2))
    rule = G.AdaptiveGuidance(GMM, 0, 3.0, threshold=-1.0, schedule=SCHED)
    step = jax.jit(rule)
    e1, st, n1 = step(x, 1.0, rule.init(x))  # the first call is a CFG step that sets every switch
    assert bool(jnp.allclose(e1, jax.jit(cfg)(x, 1.0, None)[0], atol=1e-5)) and int(n1) == 2 and bool(jnp.all(st))
    e2, st, n2 = step(x, 0.5, st)  # then conditional steps at one evaluation
    assert bool(jnp.allclose(e2, jax.jit(lambda x: GMM.eps(x, 0.5, SCHED, 0))(x), atol=1e-5)) and int(n2) == 1
    # a realistic threshold switches part way and saves evaluations
    mid = run(G.AdaptiveGuidance(GMM, 0, 3.0, threshold=0.99, schedule=SCHED), steps=steps)
    assert steps + 1 <= int(mid.nfe) < 2 * steps


def test_linear_ag_accounting_and_fit():
    steps = 10
    coef, replace = G.fit_linear_ag(GMM, 0, 3.0, (256, 2), jax.random.key(7), steps=steps, history=1,
                                    schedule=SCHED)
    assert coef.shape == (steps, 4) and int(replace.sum()) == len(range(1, steps // 2, 2))
    out = run(G.LinearAG(GMM, 0, 3.0, coef, replace, schedule=SCHED), steps=steps)
    assert int(out.nfe) == 2 * steps - int(replace.sum())
    none = run(G.LinearAG(GMM, 0, 3.0, coef, jnp.zeros(steps, bool), schedule=SCHED), steps=steps)
    cfg = run(G.CFG(GMM, 0, 3.0, schedule=SCHED), steps=steps)
    assert bool(jnp.all(none.x == cfg.x)) and int(none.nfe) == 2 * steps
    # the fitted maps stay close to CFG's samples (energy distance far below CFG vs. the unguided model)
    unguided = run(GMM.predictor(SCHED), steps=steps)
    assert float(D.energy_distance(out.x, cfg.x)) < 0.2 * float(D.energy_distance(unguided.x, cfg.x))


@pytest.mark.parametrize("w", [0.5, 2.0])
def test_rlg_mode_frequencies(w):
    rewards, beta, n = jnp.array([0.0, 1.0, 0.0, 2.0]), 1.0, 2000
    reference = D.GaussianMixture(WEIGHTS, MEANS, COVS)
    fine_tuned = G.tilted_mixture(reference, rewards, 1.0 / beta)  # the KL-regularized optimum, exactly
    out = run(G.RLG(reference.predictor(SCHED), fine_tuned.predictor(SCHED), w), n=n, steps=50)
    assert int(out.nfe) == 2 * 50
    comp = jnp.argmin(jnp.sum((out.x[:, None] - MEANS[None]) ** 2, -1), 1)
    freq = np.bincount(np.asarray(comp), minlength=4) / n
    target = np.asarray(jax.nn.softmax(jnp.log(WEIGHTS) + w * rewards / beta))
    se = np.sqrt(target * (1 - target) / n)
    if w == 0.5:
        assert np.all(np.abs(freq - target) < 4 * se)
    else:
        # extrapolation (w = 2): the geometric mix of the *noised* marginals is not the noised tilted target, so
        # the frequencies are biased (measured max error 0.12, recorded in guidance.json); they still move the
        # right way from the reference: the highest-reward mode gains, the zero-reward modes lose.
        assert freq[3] > WEIGHTS[3] + 0.3 and freq[0] < WEIGHTS[0] - 0.2 and freq[2] < WEIGHTS[2] - 0.1


def test_reward_weighted_objective_with_constant_reward_is_the_denoising_objective():
    model = D.Diffusion(D.MLPDenoiser(2, 0, key=jax.random.key(0)), SCHED, "eps", 0)
    x0 = GMM.sample(jax.random.key(1), 64)
    rwr = G.reward_weighted_objective(lambda x: jnp.zeros(x.shape[0]), beta=0.5)
    base = D.denoising_objective()
    v1, _ = rwr.value_and_grad(jax.random.key(2), model, x0)
    v2, _ = base.value_and_grad(jax.random.key(2), model, x0)
    assert float(v1) == pytest.approx(float(v2), rel=1e-5)
    tilted = G.reward_weighted_objective(lambda x: -jnp.sum(x**2, 1), beta=0.5)
    v3, _ = tilted.value_and_grad(jax.random.key(2), model, x0)
    assert abs(float(v3) - float(v1)) > 1e-3 * abs(float(v1))


def test_errors_say_what_is_wrong():
    with pytest.raises(PPLVIError, match="no component labels"):
        G.CFG(D.GaussianMixture(WEIGHTS, MEANS, COVS), 0, 2.0, schedule=SCHED)
    with pytest.raises(PPLVIError, match="needs the schedule"):
        G.CFG(GMM, 0, 2.0)
    with pytest.raises(PPLVIError, match="not class-conditional"):
        G.CFG(D.Diffusion(D.MLPDenoiser(2, 0, key=jax.random.key(0)), SCHED), 0, 2.0)
    with pytest.raises(PPLVIError, match="space must be one of"):
        G.CFG(GMM, 0, 2.0, space="score", schedule=SCHED)
    with pytest.raises(PPLVIError, match="rescale"):
        G.APG(GMM, 0, 2.0, rescale=0.0, schedule=SCHED)
    with pytest.raises(PPLVIError, match="coefficients must be"):
        G.LinearAG(GMM, 0, 2.0, jnp.zeros((5, 3)), jnp.zeros(5, bool), schedule=SCHED)
    with pytest.raises(PPLVIError, match="one label per batch"):
        G.CFG(GMM, jnp.zeros(4, jnp.int32), 2.0, schedule=SCHED)(jnp.zeros((4, 2)), 0.5, None)
    with pytest.raises(PPLVIError, match="beta must be positive"):
        G.reward_weighted_objective(lambda x: x, beta=0.0)
    with pytest.raises(PPLVIError, match="expected a predictor"):
        G.RLG(3, 4, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# the committed benchmark results
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results():
    assert RESULTS.exists(), f"missing {RESULTS}; run `python benchmarks/guidance.py`"
    return json.loads(RESULTS.read_text())


def test_results_contract(results):
    assert {"cfg_w1_energy", "apg_cfg_maxdiff", "ag_cfg_maxdiff", "rlg_freq_err"} <= set(results["exact"])
    assert "device" in results and results["methods"]
    for row in results["methods"]:
        assert {"method", "accuracy", "frechet", "saturation", "nfe_per_sample", "seconds_per_sample"} <= set(row)


def test_results_exact_claims(results):
    ex = results["exact"]
    assert ex["cfg_w1_energy"] < ex["cfg_w1_energy_threshold"] < ex["cfg_w0_energy"]
    assert ex["apg_cfg_maxdiff"] < 1e-9 and ex["ag_cfg_maxdiff"] == 0.0
    errs = ex["rlg_freq_err_by_w"]
    assert ex["rlg_freq_err"] == pytest.approx(max(errs.values()))
    assert errs["0.5"] < 4 * ex["rlg_freq_se"]


def _row(results, name):
    rows = [r for r in results["methods"] if r["method"] == name]
    assert rows, f"no method {name!r} in guidance.json"
    return rows[0]


def _accuracy_se(results, p=0.99):
    return float(np.sqrt(p * (1 - p) / results["samples_per_method"]))


def test_results_apg_lowers_saturation_at_equal_accuracy(results):
    se = _accuracy_se(results)
    for w in (5, 7):
        cfg = _row(results, f"cfg w={w}")
        for tag in ("eta=0", "eta=0, r=4, beta=-0.5"):
            apg = _row(results, f"apg w={w} {tag}")
            assert apg["saturation"] < cfg["saturation"] - 0.03
            assert apg["accuracy"] >= cfg["accuracy"] - 2 * se
            assert apg["nfe_per_sample"] == cfg["nfe_per_sample"] == 2 * results["steps"]


def test_results_adaptive_guidance_saves_evaluations_but_misses_cfg_quality(results):
    # recorded miss (docs/diffusion/guidance.md): the eps-space cosine passes the threshold at the first step on this
    # model, so the samples are close to conditional sampling, not to CFG's
    steps = results["steps"]
    cfg = _row(results, "cfg w=3 (per-sample noise)")
    noise = abs(_row(results, "cfg w=3")["frechet"] - _row(results, "cfg w=3 (second seed)")["frechet"])
    for thr in ("0.9999", "0.99995"):
        ag = _row(results, f"adaptive guidance w=3 threshold={thr}")
        assert steps + 1 <= ag["nfe_per_sample"] <= 0.8 * cfg["nfe_per_sample"]
        assert ag["nfe_batched"] >= ag["nfe_per_sample"]
        assert abs(ag["frechet"] - cfg["frechet"]) > 3 * noise  # the miss the docs state
        assert ag["accuracy"] < cfg["accuracy"]


def test_results_linear_ag_and_baselines(results):
    steps = results["steps"]
    lin = _row(results, "linear AG w=3")
    assert lin["nfe_per_sample"] == 2 * steps - lin["replaced_calls"]
    assert lin["accuracy"] >= _row(results, "cfg w=3")["accuracy"] - 2 * _accuracy_se(results)
    cond, uncond = _row(results, "conditional (w=1)"), _row(results, "unconditional")
    assert cond["accuracy"] > 0.9 > 0.2 > uncond["accuracy"]  # chance is 0.1
    floor = results["real_test_images"]
    assert cond["frechet"] < floor["frechet_mean"] + 3 * floor["frechet_sd"]


def test_results_adaptive_guidance_with_the_x0_cosine(results):
    # the x0-space criterion (CPU, 100 samples, same per-sample noise as its CFG row): >= 20% fewer evaluations, CFG's
    # accuracy, and samples far closer to CFG's than the conditional sampler's are
    part = results["adaptive_guidance_x0_cpu"]
    rows = {r["method"]: r for r in part["rows"]}
    cfg = rows["cfg w=3"]
    for thr in ("0.999", "0.9995"):
        ag = rows[f"adaptive guidance w=3 x0-cosine threshold={thr}"]
        assert part["steps"] + 1 <= ag["nfe_per_sample"] <= 0.8 * cfg["nfe_per_sample"]
        assert ag["accuracy"] >= cfg["accuracy"] - 2 * float(np.sqrt(0.99 * 0.01 / part["samples"]))
        assert ag["distance_to_cfg_relative_to_conditional"] < 0.25


def test_results_adaptive_guidance_x0_cosine_at_500_samples(results):
    # the bar, measured with the x0-space cosine (docs/diffusion/guidance.md): >= 20% fewer evaluations,
    # accuracy within 2 se of CFG's and Frechet distance within noise of CFG's on the same per-sample noise. Noise:
    # sqrt(2) x the sd of the Frechet distance of 500 real images (5 subsets), or the seed-to-seed CFG difference
    cfg = _row(results, "cfg w=3 (per-sample noise)")
    seeds = abs(_row(results, "cfg w=3")["frechet"] - _row(results, "cfg w=3 (second seed)")["frechet"])
    noise = max(np.sqrt(2) * results["real_test_images"]["frechet_sd"], seeds)
    for thr in ("0.999", "0.9995"):
        ag = _row(results, f"adaptive guidance w=3 x0-cosine threshold={thr}")
        assert results["steps"] + 1 <= ag["nfe_per_sample"] <= 0.8 * cfg["nfe_per_sample"]
        assert ag["accuracy"] >= cfg["accuracy"] - 2 * _accuracy_se(results)
        assert abs(ag["frechet"] - cfg["frechet"]) < 1.5 * noise
