# One command per task; CI runs `make test`. See README.md.
PY := .venv/bin/python
BENTOML := .venv/bin/bentoml
export PYTHONDONTWRITEBYTECODE := 1
export BENTOML_DO_NOT_TRACK := true

.PHONY: venv venv-runtime models serve test test-slow lint format bench bench-batching mlserver-venv spark bench-batch edge edge-web bench-edge protos bench-oip redis redis-stop stream-worker bench-stream promote versions test-faults fuzz image image-batch image-run airflow-venv loadtest

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

bench: models mlserver-venv  ## the online path side by side: bundle (REST, OIP REST, OIP gRPC) vs MLServer vs trivial BentoML; writes benchmarks/results/online.json
	bash scripts/system-deps.sh bench
	$(PY) -m benchmarks.online $(BENCH_ARGS)

bench-batching: models  ## REST throughput batched vs unbatched vs raw model; writes benchmarks/results/rest_batching.json
	$(PY) -m benchmarks.rest_batching

mlserver-venv:  ## Seldon MLServer 1.7.1 in its own venv (build/venv-mlserver), the peer of `make bench`
	bash scripts/mlserver.sh

spark: venv  ## optional Spark engine of fraud-batch: pyspark + Java 17
	bash scripts/system-deps.sh java
	.venv/bin/pip install -r requirements-spark.txt

bench-batch: models  ## fraud-batch local engine vs raw model rate, 1M and 10M rows; writes benchmarks/results/batch.json
	$(PY) -m benchmarks.batch

edge: venv models  ## export the served models as an offline ONNX bundle (dist/edge) and verify it
	.venv/bin/fraud-edge export --out dist/edge --overwrite
	.venv/bin/fraud-edge verify dist/edge

edge-web: venv models  ## dist/edge with its browser page (onnxruntime-web from npm), served on http://127.0.0.1:8000/
	bash scripts/system-deps.sh node
	bash scripts/web-deps.sh
	.venv/bin/fraud-edge export --out dist/edge --web --overwrite
	$(PY) -m http.server 8000 --bind 127.0.0.1 --directory dist/edge

bench-edge: venv models  ## scikit-learn vs ONNX runners (rows/s, size, max diff); writes benchmarks/results/edge.json
	$(PY) -m benchmarks.edge

protos: venv  ## regenerate the OIP gRPC stubs (a unit test fails when they drift)
	bash scripts/gen_protos.sh

bench-oip: venv models  ## single-row throughput: REST /predict vs OIP gRPC
	$(PY) -m benchmarks.oip --requests 1500 --concurrency 64

redis:  ## a project-local redis-server on 127.0.0.1:$${REDIS_PORT:-6379} (AOF, data/redis/); stop: make redis-stop
	bash scripts/redis.sh start

redis-stop:
	bash scripts/redis.sh stop

stream-worker: models redis  ## one fraud-stream consumer (run several to share the load)
	.venv/bin/fraud-stream worker

bench-stream: models  ## fraud-stream at a fixed rate + from a backlog (1 and 2 workers) next to a bare Redis loop; writes benchmarks/results/stream.json
	bash scripts/system-deps.sh redis
	$(PY) -m benchmarks.stream

promote: venv-runtime  ## make promote VERSION=v... TO=stable|canary
	$(PY) -m models.registry promote $(VERSION) --to $(TO)

versions: venv-runtime  ## model versions with ROC-AUC / PR-AUC and their aliases
	$(PY) -m models.registry list

test-faults: venv  ## kill a model runner under load (slow, ~90 s): clean 503/504s, not-ready, recovery
	$(PY) -m pytest -m slow tests/integration/test_faults_runner.py -s

fuzz: venv  ## longer schema-driven fuzz of REST (OpenAPI) and OIP gRPC tensors
	FUZZ_EXAMPLES=1000 $(PY) -m pytest tests/integration/test_fuzz_rest.py tests/integration/test_fuzz_grpc.py

image: venv  ## OCI image without a Docker daemon (buildah): bento + cached Python 3.11 base + image; prints its size
	bash scripts/image.sh build

image-batch: venv  ## the batch image of the deploy/k8s CronJob: the serving image (built if missing) + pyarrow + fraud-batch
	bash scripts/image.sh build-batch

airflow-venv:  ## Airflow's own venv for deploy/airflow (build/airflow-venv, exact pins, cached by a stamp)
	bash scripts/airflow-venv.sh

image-run:  ## run the image with podman (REST :3000, gRPC :8001), wait for /readyz; Ctrl-C stops it cleanly
	bash scripts/image.sh run

loadtest: venv  ## headless Locust (REST) against FRAUD_URL (default :3000); CSV + HTML in build/loadtests/, exit 1 on a missed SLO
	.venv/bin/locust -f loadtests/locustfile.py --config loadtests/headless.conf --host $${FRAUD_URL:-http://127.0.0.1:3000} RestUser
