# One command per task; CI runs `make test`. See README.md.
PY := .venv/bin/python
BENTOML := .venv/bin/bentoml
export PYTHONDONTWRITEBYTECODE := 1
export BENTOML_DO_NOT_TRACK := true

.PHONY: venv venv-runtime models serve test test-slow lint format bench spark bench-batch

venv:  ## everything for tests, load tests and benchmarks
	@bash scripts/bootstrap.sh dev

venv-runtime:  ## only what serving needs
	@bash scripts/bootstrap.sh runtime

models: venv-runtime  ## train the default ensemble into the BentoML store unless one is there
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

spark: venv  ## optional Spark engine of fraud-batch: pyspark + Java 17
	bash scripts/system-deps.sh java
	.venv/bin/pip install -r requirements-spark.txt

bench-batch: models  ## fraud-batch local engine vs raw model rate, 1M and 10M rows; writes benchmarks/results/batch.json
	$(PY) -m benchmarks.batch
