"""Shared fixtures: a temporary BentoML home with small seeded models, and a real server."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

TEST_ROWS = 20_000
TEST_SEED = 11
_HOME_ENV = "BENTOML_HOME"


def pytest_configure(config: pytest.Config) -> None:
    # BentoML reads BENTOML_HOME when it is first imported, so it must be set before any test
    # module imports it. Every test run gets its own store; the user's store is never touched.
    if not hasattr(config, "workerinput"):
        home = tempfile.mkdtemp(prefix="fraud-test-bentoml-")
        os.environ[_HOME_ENV] = home
        # Rate limits, response caches and policy refresh are per API worker, so what a test sees would depend
        # on which of two workers answers: servers under test run one unless a test asks for two.
        os.environ.setdefault("FRAUD_API_WORKERS", "1")
        config._fraud_bentoml_home = home  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    home = getattr(config, "_fraud_bentoml_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return Path(os.environ[_HOME_ENV])


@pytest.fixture(scope="session")
def trained(bentoml_home: Path) -> str:
    """Trains the default ensemble (small, seeded) once per session; returns its version."""
    from models.train import train
    from models.transactions import TRANSACTION_SCHEMA, generate_transactions

    frame = generate_transactions(TEST_ROWS, seed=TEST_SEED)
    return train(frame, TRANSACTION_SCHEMA, seed=TEST_SEED, version="vtest1").version
