"""Prometheus metrics of staged rollouts (``bentoml.metrics``, aggregated over workers like fraudserve/metrics.py).

Traffic share of a variant = its ``fraud_variant_requests_total`` over the sum; shadow agreement
rate = ``agree`` over ``agree + disagree`` of ``fraud_shadow_comparisons_total`` (counted per row);
cache hit rate = ``hit`` of both levels over the ``memory`` rows of ``fraud_cache_requests_total`` (per row).
"""

from __future__ import annotations

import bentoml

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
_DIFF_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

VARIANT_REQUESTS = bentoml.metrics.Counter(
    name="fraud_variant_requests",
    documentation="Scoring requests served, by variant of the traffic policy and model version.",
    labelnames=["variant", "version"],
)
VARIANT_LATENCY = bentoml.metrics.Histogram(
    name="fraud_variant_latency_seconds",
    documentation="Server-side scoring time of a request, by variant.",
    labelnames=["variant"],
    buckets=_LATENCY_BUCKETS,
)
VARIANT_SCORE = bentoml.metrics.Histogram(
    name="fraud_variant_score",
    documentation="Fraud probabilities returned, by variant (shadow: the shadow's, never returned).",
    labelnames=["variant"],
    buckets=_SCORE_BUCKETS,
)
SHADOW_COMPARISONS = bentoml.metrics.Counter(
    name="fraud_shadow_comparisons",
    documentation="Rows scored by the shadow: decision agrees / disagrees with the served one, or error / timeout.",
    labelnames=["outcome"],
)
SHADOW_ABS_DIFF = bentoml.metrics.Histogram(
    name="fraud_shadow_probability_abs_diff",
    documentation="|served - shadow| fraud probability per compared row.",
    buckets=_DIFF_BUCKETS,
)
SHADOW_SKIPPED = bentoml.metrics.Counter(
    name="fraud_shadow_skipped_requests",
    documentation="Requests not mirrored because FRAUD_SHADOW_MAX_INFLIGHT shadow calls were running.",
)
CACHE_REQUESTS = bentoml.metrics.Counter(
    name="fraud_cache_requests",
    documentation=(
        "Rows looked up in the response cache, by level (memory: every row; redis: memory's misses) and result"
        " (hit, miss; a Redis error is a miss)."
    ),
    labelnames=["level", "result"],
)
CACHE_ERRORS = bentoml.metrics.Counter(
    name="fraud_cache_errors",
    documentation="Response cache round trips that failed (down, slow, refused), by level and op (get, set).",
    labelnames=["level", "op"],
)
POLICY_CHANGES = bentoml.metrics.Counter(
    name="fraud_policy_changes",
    documentation="Traffic policies applied by this worker, by kind (start, admin change, rollback, reload).",
    labelnames=["kind"],
)
