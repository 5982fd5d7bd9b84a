# pplvi: `make demo` trains a model with a user-written objective; `make test` runs lint + tests;
# `make docs` builds the documentation site into site/ (strict: warnings fail).
PYTHON ?= python3.12
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev-docs
export PPLVI_DATA ?= $(abspath ../shared/data)

.PHONY: demo test lint bench docs venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,docs]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pplvi demo

lint: $(STAMP)
	$(PY) -m ruff check pplvi tests benchmarks examples docs

# The tests compile far more XLA code than they run, so they compile with the CPU backend's LLVM optimization level 0:
# the whole suite took 786 s on 2 cores instead of 1040 s, and every test passes either way. Benchmarks and
# reproductions keep XLA's default.
test: lint
	XLA_FLAGS="--xla_backend_optimization_level=0 $$XLA_FLAGS" $(PY) -m pytest -n 2 --dist worksteal tests

# Every suite in --quick mode (a few minutes each on 2 cores); run a suite alone with `pplvi bench SUITE [--quick]`.
bench: $(STAMP)
	for suite in overhead training_loop rao_blackwell vs_numpyro vs_genjax discrete air scaling; do $(PY) benchmarks/$$suite.py --quick || exit 1; done
	$(PY) benchmarks/report.py

# The VAE family's full-size checks (PPCA exact; MNIST ELBO- vs IWAE-trained VAE, test log-likelihood by IWAE K=1000):
# about 15 minutes on 2 CPU cores; writes benchmarks/results/vae.json. Fast versions run in `make test`.
.PHONY: reproduce-vae
reproduce-vae: $(STAMP)
	$(PY) -m pplvi.models.vae reproduce

# The Koopman VAE on TimeGAN's sines/stocks/energy and 30/50/70%-irregular sines: about 18 minutes on 2 CPU cores;
# writes benchmarks/results/kvae.json. Fast versions run in `make test`.
.PHONY: reproduce-kvae
reproduce-kvae: $(STAMP)
	$(PY) -m pplvi.models.kvae reproduce

# SDEs driven by fractional noise: coefficient cost, fOU bridge, Hurst recovery (2 seeds), toy video; about 36
# minutes on 2 CPU cores; writes benchmarks/results/fbm_sde.json. Fast versions run in `make test`.
.PHONY: reproduce-fbm-sde
reproduce-fbm-sde: $(STAMP)
	$(PY) -m pplvi.models.fbm_sde reproduce

# The Hurst-recovery section alone (about 30 minutes), merged into the existing results file.
.PHONY: reproduce-fbm-sde-hurst
reproduce-fbm-sde-hurst: $(STAMP)
	$(PY) -m pplvi.models.fbm_sde reproduce --only hurst

# PV-RNN: meta-prior sweep (5 values x 3 seeds), Kalman tracking, error regression, Omniglot pen strokes; about 18
# minutes on 2 CPU cores; writes benchmarks/results/pvrnn.json. Fast versions run in `make test`.
.PHONY: reproduce-pvrnn
reproduce-pvrnn: $(STAMP)
	$(PY) -m pplvi.models.pvrnn reproduce

# NIW meta-learning: linear-regression exactness, Omniglot 5-way 1/5-shot vs ProtoNet and MAML at the CPU budget;
# writes out/niw_meta/reproduce.json (17-28 minutes on 2 shared CPU cores). benchmarks/results/niw_meta.json is
# `merge` of the GPU runs in benchmarks/results/niw_meta_runs (docs/models/niw_meta.md has the commands).
.PHONY: reproduce-niw-meta
reproduce-niw-meta: $(STAMP)
	$(PY) -m pplvi.models.niw_meta reproduce

# Distribution Transformers: inverse-gamma vs per-problem SVI, GMM posteriors and prior change, tracking vs EKF and a
# particle filter; about 15 minutes on 2 CPU cores; writes benchmarks/results/dist_transformer.json.
.PHONY: reproduce-dist-transformer
reproduce-dist-transformer: $(STAMP)
	$(PY) -m pplvi.models.dist_transformer reproduce

# Four small variational methods (ATE guided fine-tuning, kinetic-optimal paths, instance noise, binary continual
# learning); writes benchmarks/results/variational_seeds.json (about 12 minutes on 2 CPU cores).
.PHONY: reproduce-variational-seeds
reproduce-variational-seeds: $(STAMP)
	$(PY) -m pplvi.models.variational_seeds reproduce

# RED-Diff vs DPS vs the pseudo-inverse on 100 MNIST test images, the Gaussian fixed point and the samplers' energy
# distances; about 1 minute on an H200, hours on 2 CPU cores (--quick there); writes benchmarks/results/reddiff.json.
.PHONY: reproduce-reddiff
reproduce-reddiff: $(STAMP)
	$(PY) benchmarks/reddiff.py

# Guidance rules: the exact Gaussian-mixture checks on CPU (about 7 minutes); the MNIST part (made on a GPU) is
# kept. `python benchmarks/guidance.py` reruns both; writes benchmarks/results/guidance.json.
.PHONY: reproduce-guidance
reproduce-guidance: $(STAMP)
	$(PY) benchmarks/guidance.py --part exact

# Score distillation: SDS / VSD / DSD / PG-SB on an exact 2-D mixture, a VSD one-step MNIST generator and NASA;
# about 15 minutes on 2 CPU cores; writes benchmarks/results/distill.json.
.PHONY: reproduce-distill
reproduce-distill: $(STAMP)
	$(PY) benchmarks/distill.py

# The benchmarks page is generated from benchmarks/results/*.json during the build (hook docs/gen_benchmarks.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

clean:
	rm -rf $(VENV) out site
