# memefly: `make run` serves the gateway on the embedded backend, `make test` runs the tests.
# Both create the virtual environment from nothing on first use.

PYTHON ?= python3
# VENV=<folder> runs the targets with an existing virtual environment (the lone-clone test does).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_NAME ?= memefly-gru
MODEL_BASE_PATH ?= models
MODEL_DIR := $(MODEL_BASE_PATH)/$(MODEL_NAME)
PRESET ?= slice
BUNDLE ?= model
# The attention captioner, served beside the GRU when its bundle is in the checkout (README, "Two models").
TRANSFORMER_BUNDLE ?= model-transformer
TRANSFORMER_MODEL_NAME ?= memefly-transformer
MORE_MODELS := $(if $(wildcard $(TRANSFORMER_BUNDLE)/config.json),$(TRANSFORMER_MODEL_NAME))
# What `make run`, compose and `make deploy` answer a request naming no model with: the transformer when its
# bundle is here (it meets every evaluation target the GRU meets, and two more: README, "Two models"), else
# the GRU, which `make model` always builds.
SERVED_DEFAULT := $(if $(MORE_MODELS),$(TRANSFORMER_MODEL_NAME),$(MODEL_NAME))
SERVED_OTHERS := $(if $(MORE_MODELS),["$(MODEL_NAME)"],[])
HOST ?= 127.0.0.1
PORT ?= 8000
GRPC_PORT ?= 8500
REST_PORT ?= 8501
SAGEMAKER_PORT ?= 8080
SERVE_LOCAL = $(BIN)/python -m serving --port $(GRPC_PORT) --rest_api_port $(REST_PORT) \
	--sagemaker_port $(SAGEMAKER_PORT) --model_name $(MODEL_NAME) --model_base_path $(abspath $(MODEL_DIR)) \
	--enable_serialization_as_tensor_content=true

# Each target's TF Serving release, declared once: COMPOSE_TFSERVING_VERSION, SAGEMAKER_TFS_VERSION and the
# export's EXPORT_TENSORFLOW_VERSION. One environment with that TensorFlow release per distinct version.
include serving/versions.env
SERVING_TF_VERSIONS := $(sort $(COMPOSE_TFSERVING_VERSION) $(SAGEMAKER_TFS_VERSION))
SERVING_VENVS := $(foreach version,$(SERVING_TF_VERSIONS),.venv-tf$(version)/.installed)

export TF_CPP_MIN_LOG_LEVEL ?= 2
export MEMEFLY_MODEL_NAME := $(MODEL_NAME)
export MEMEFLY_MODEL_BASE_PATH := $(abspath $(MODEL_BASE_PATH))

.PHONY: venv data model train evaluate run serve-local run-two-tier test soak bench lint format clean deploy-plan deploy destroy model-archive \
	serving-venvs serving-check compose-up

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,serving,train,aws,deploy,dev,bench]'
	touch $@

venv: $(STAMP)

# TF Serving X.Y.Z is built on TensorFlow X.Y.Z: the check loads the model with that release from PyPI.
.venv-tf%/.installed:
	$(PYTHON) -m venv .venv-tf$*
	.venv-tf$*/bin/pip install --quiet tensorflow-cpu==$*
	touch $@

serving-venvs: $(SERVING_VENVS)

# Loads the newest model version with each target's TensorFlow, TF Serving's way, calls every signature on
# real photos and compares with the export's TensorFlow; `make deploy` and `make compose-up` need its record.
# SERVING_CHECK_ARGS='--version 3' for another version.
serving-check: model $(SERVING_VENVS)
	@for name in $(MODEL_NAME) $(MORE_MODELS); do \
		$(BIN)/python -m export.serving_check --model-base-path $(MODEL_BASE_PATH) --model-name $$name \
			$(SERVING_CHECK_ARGS) || exit 1; \
	done

# Builds the model only when no version exists yet: assembled from the committed bundle in model/
# when there is one (seconds), else trained from the slice preset (minutes).
model: $(STAMP)
	@for pair in $(BUNDLE):$(MODEL_NAME) $(if $(MORE_MODELS),$(TRANSFORMER_BUNDLE):$(TRANSFORMER_MODEL_NAME)); do \
		bundle=$${pair%%:*}; dir=$(MODEL_BASE_PATH)/$${pair##*:}; \
		latest=$$(ls $$dir 2>/dev/null | grep -E '^[0-9]+$$' | sort -n | tail -n 1); \
		if [ -n "$$latest" ] && [ -z "$$(find $$bundle export -newer $$dir/$$latest/saved_model.pb -type f \( -path "$$bundle/*" -o -name '*.py' \) 2>/dev/null | head -n 1)" ]; then \
			echo "model present: $$dir/$$latest (newer than $$bundle/ and export/)"; \
		elif [ -f $$bundle/config.json ]; then \
			$(BIN)/memefly build-model --bundle $$bundle --model-base-path $(MODEL_BASE_PATH) || exit 1; \
		else \
			$(BIN)/memefly build-model --preset $(PRESET) --model-base-path $(MODEL_BASE_PATH) || exit 1; \
		fi; \
	done

# The meme data set for training and evaluation: ../shared/data/memes (or $$MEMEFLY_DATA_DIR) when it is
# there, else built into data/memes from its pinned public sources (export/sources.json); offline, it says
# which files are missing and where to put them. `make run` and `make test` do not need it.
data: $(STAMP)
	$(BIN)/memefly data

# Trains the default model (about 30 minutes on 2 CPU cores) into the bundle folder.
train: $(STAMP)
	$(BIN)/memefly train --preset full --bundle-dir $(BUNDLE)

# Writes $(BUNDLE)/evaluation.json and $(BUNDLE)/EVALUATION.md.
evaluate: $(STAMP)
	$(BIN)/memefly evaluate --bundle-dir $(BUNDLE)

# Serves the transformer beside the GRU, and as the default, when its bundle is there; MEMEFLY_MODELS set by
# you wins (with MODEL_NAME as the default).
run: model
	$(if $(MEMEFLY_MODELS),,MEMEFLY_MODEL_NAME=$(SERVED_DEFAULT) MEMEFLY_MODELS='$(SERVED_OTHERS)') \
		$(BIN)/memefly serve --backend embedded --host $(HOST) --port $(PORT)

# The local stand-in for tensorflow_model_server (see README); with Docker, use docker compose instead.
serve-local: model
	$(SERVE_LOCAL)

# The real TensorFlow Serving (docker-compose.yml) at the declared tag, once the model passed the check for it.
compose-up: model
	$(BIN)/python -m export.serving_check --verify compose --model-base-path $(MODEL_BASE_PATH) --model-name $(MODEL_NAME)
	docker compose --env-file serving/versions.env up

run-two-tier: model
	@$(SERVE_LOCAL) & \
	serving=$$!; trap "kill $$serving 2>/dev/null" EXIT INT TERM; \
	MEMEFLY_TFSERVING_TARGET=127.0.0.1:$(GRPC_PORT) $(BIN)/memefly serve --backend tfserving --host $(HOST) --port $(PORT)

test: $(STAMP) $(SERVING_VENVS)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Both tiers measured on this machine (README, "Benchmark"): a table, var/bench/report.{json,md,png}.
# BENCH_ARGS=--quick for a short smoke run.
bench: model
	$(BIN)/python -m bench --out var/bench --model-base-path $(MODEL_BASE_PATH) --profile $(BENCH_ARGS)

# A long mixed load (photos, the hostile-upload corpus, templates) against a gateway it starts on the
# embedded backend; fails on a 500, a wrong status, a slow meme or growing memory (tests/soak.py).
# Not part of `make test`. SOAK_SECONDS=1800 for longer; SOAK_ARGS=--url=http://host:port for a running gateway.
SOAK_SECONDS ?= 300
SOAK_CONCURRENCY ?= 8
soak: model
	$(BIN)/python -m tests.soak --duration $(SOAK_SECONDS) --concurrency $(SOAK_CONCURRENCY) $(SOAK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# AWS (infra/README.md): settings from MEMEFLY_DEPLOY_* or .env; AWS credentials from boto3's usual chain.
# Both refuse a model version that has not passed `make serving-check` for SAGEMAKER_TFS_VERSION. One endpoint
# serves the transformer beside the GRU, as the default, when its bundle is there; MEMEFLY_DEPLOY_MORE_MODELS
# set by you wins.
DEPLOY_MODELS = $(if $(MEMEFLY_DEPLOY_MORE_MODELS),,MEMEFLY_DEPLOY_MODEL_NAME=$(SERVED_DEFAULT) \
	MEMEFLY_DEPLOY_MORE_MODELS='$(SERVED_OTHERS)')

deploy-plan: $(STAMP)
	$(DEPLOY_MODELS) $(BIN)/python -m infra plan

deploy: $(STAMP)
	$(DEPLOY_MODELS) $(BIN)/python -m infra deploy

destroy: $(STAMP)
	$(BIN)/python -m infra destroy $(if $(YES),--yes)

model-archive: model
	$(DEPLOY_MODELS) $(BIN)/python -m infra package --output build/model.tar.gz

clean:
	rm -rf $(VENV) .venv-tf*/ .pytest_cache .ruff_cache
