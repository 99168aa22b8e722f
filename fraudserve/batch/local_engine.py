"""The local engine's pieces: the in-process scorer and how its threads share the cores."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits

from fraudserve.local import load_local
from fraudserve.settings import Settings

from .scoring import LocalChunkScorer, OutputLayout


def load_local_scorer(settings: Settings, version: str, id_column: str | None) -> LocalChunkScorer:
    spec, scorer = load_local(settings, version)
    return LocalChunkScorer(
        spec, scorer, OutputLayout(spec.schema, spec.members, id_column), settings.decision_threshold
    )


@contextlib.contextmanager
def scoring_threads(workers: int) -> Iterator[None]:
    """With several worker threads, each scores with one BLAS/OpenMP thread.

    Measured here (2 cores): two chunks scored at once with single-threaded kernels beat one
    chunk with OpenMP/BLAS fanning out (HistGradientBoosting ~225k vs ~170k rows/s), and
    nested pools would oversubscribe the cores.
    """
    if workers <= 1:
        yield
        return
    with threadpool_limits(limits=1):
        yield
