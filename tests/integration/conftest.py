from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fraudserve.launcher import BundleServer


@pytest.fixture(scope="session")
def server(trained: str, bentoml_home: Path) -> Iterator[BundleServer]:
    """The bundle served for real (`bentoml serve`), default settings, shared by a session."""
    with BundleServer(bentoml_home=bentoml_home) as running:
        yield running
