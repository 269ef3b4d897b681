# Two commands on a fresh machine: `make quickstart` and `make test` (see README.md).
# Both create .venv when it is absent. torch==2.13.0 is installed before anything else:
# on the project machines it resolves to a local CPU build; any other torch spec would
# pull several GB of CUDA packages.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv quickstart test lint bench thesis serve serve-demo feedback feedback-demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,inference,kaggle,postgresql,serving,feedback]"
	touch $(STAMP)

# The main job: the thesis pipeline at quick scale (params/quickstart.yaml), through the
# notebooks: 01 trains a masked DQN and a MaskablePPO (2 seeds each, resumable run dirs), 02
# evaluates them next to every baseline and the hindsight bound on held-out test days, 03 writes
# the Chapter 7 figures (thesis_figures/) and tables (latex/generated/), 04 runs a small Optuna study
# and its re-training check (results/quickstart/tuning/). Then the KPI table.
QUICKSTART := results/quickstart
PAPERMILL  := $(BIN)/papermill --no-progress-bar -f params/quickstart.yaml

quickstart: venv
	mkdir -p $(QUICKSTART)/notebooks
	$(PAPERMILL) notebooks/01_train.ipynb $(QUICKSTART)/notebooks/01_train.ipynb
	$(PAPERMILL) notebooks/02_evaluate.ipynb $(QUICKSTART)/notebooks/02_evaluate.ipynb
	$(PAPERMILL) notebooks/03_chapter7_figures.ipynb $(QUICKSTART)/notebooks/03_chapter7_figures.ipynb
	$(PAPERMILL) notebooks/04_tune.ipynb $(QUICKSTART)/notebooks/04_tune.ipynb
	$(BIN)/rl-lib report $(QUICKSTART)

test: venv lint
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Regenerate the Chapter 7 figures and tables from a results folder (default: the thesis-scale
# results; `make thesis RESULTS=results/quickstart`), then compile the chapter (TeX Live:
# texlive-latex-base texlive-latex-recommended texlive-pictures latexmk lmodern).
RESULTS ?= results/thesis

# TUNING=results/tune/dqn adds a study run by `rl-lib tune` outside the results folder; TUNING_STORAGE=URL
# when that study is not in its folder's SQLite file (`rl-lib tune --storage`, e.g. PostgreSQL).
thesis: venv
	$(BIN)/rl-lib thesis --results $(RESULTS) $(if $(TUNING),--tuning $(TUNING)) \
	    $(if $(TUNING_STORAGE),--tuning-storage '$(TUNING_STORAGE)')
	cd latex && latexmk
	@echo "chapter: latex/build/main.pdf"

bench: venv
	$(BIN)/rl-lib bench env
	$(BIN)/rl-lib bench train

# The dispatch service on 127.0.0.1:8000 with a local redis-server (unless RL_LIB_REDIS_URL is set) and
# a token file under results/serve/ (unless RL_LIB_SERVICE_TOKEN is set). MODEL: a DQN run dir;
# the default is trained first when absent (configs/dqn.yaml, 30 000 steps: a few minutes here).
MODEL ?= results/serve/model
EXPERIMENT ?= experiments/ab.yaml
# WORKERS: uvicorn worker processes, about one per core (BENCHMARKS.md: 2 here).
WORKERS ?= 1

$(MODEL)/best_model/best_model.zip:
	$(BIN)/rl-lib train --config configs/dqn.yaml --total-timesteps 30000 --run-dir $(MODEL)
	$(BIN)/rl-lib export $(MODEL)

serve: venv $(MODEL)/best_model/best_model.zip
	$(BIN)/rl-lib serve --model $(MODEL) --experiment $(EXPERIMENT) --start-redis --workers $(WORKERS)

# Redis, the service and the production simulator on 5 test days (agent vs insertion, switchback by
# day), then the A/B report.
serve-demo: venv $(MODEL)/best_model/best_model.zip
	$(BIN)/rl-lib serve demo --model $(MODEL) --experiment $(EXPERIMENT) --days 5

# The feedback loop (rl_lib/feedback/): a local redis-server on the settings' 127.0.0.1 port, a Celery
# worker and beat (collect hourly, retrain daily, promote on the gate's evidence). Serve the loop's
# registry with `rl-lib serve --model results/feedback/registry --feedback-settings $(FEEDBACK_SETTINGS)`.
FEEDBACK_SETTINGS ?= configs/feedback.yaml

feedback: venv
	$(BIN)/rl-lib feedback run --settings $(FEEDBACK_SETTINGS) --start-redis

# The loop end to end on a compressed clock (7 service days of 30 s each): redis, worker, beat, the
# service following the registry and its simulator; then the reward per day, the retrain runs, each
# gate decision with its CIs and the lineage (results/feedback-demo/, continued by the next run).
feedback-demo: venv $(MODEL)/best_model/best_model.zip
	$(BIN)/rl-lib feedback demo --model $(MODEL) --days 7

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
