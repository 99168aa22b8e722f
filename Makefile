# One command per task; CI runs `make test`. See README.md.
PY := .venv/bin/python
BENTOML := .venv/bin/bentoml
export PYTHONDONTWRITEBYTECODE := 1
export BENTOML_DO_NOT_TRACK := true

.PHONY: venv models serve test test-slow lint format bench

venv:
	@bash scripts/bootstrap.sh

models: venv  ## train the default ensemble into the BentoML store unless one is there
	$(PY) -m models.train --if-missing

serve: models  ## train if needed, then serve REST :3000 (and OIP gRPC :8001)
	$(BENTOML) serve service:FraudDetection --port $${FRAUD_HTTP_PORT:-3000}

test:  ## the whole default suite (lint, unit, integration); CI runs this
	@bash scripts/test.sh

test-slow: venv  ## the slow suite (image build, Spark, soak)
	@bash scripts/test.sh -m slow

lint: venv
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

format: venv
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

bench: models  ## REST throughput batched vs unbatched vs raw model; writes benchmarks/results/
	$(PY) -m benchmarks.rest_batching
