"""Per-chunk statistics, kept in the manifest so that a resumed run reports the whole run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HIST_BINS = 1000


@dataclass
class ChunkStats:
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    flagged: int = 0
    probability_sum: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    # Sparse 1000-bin histogram of fraud_probability (bin index -> count): 0.001 resolution.
    histogram: Counter[int] = field(default_factory=Counter)

    @classmethod
    def of(cls, probabilities: np.ndarray, decisions: np.ndarray, reasons: dict[int, str], rows_in: int) -> ChunkStats:
        bins = np.clip((probabilities * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)
        dense = np.bincount(bins, minlength=HIST_BINS)  # O(n), where np.unique sorts
        idx = np.flatnonzero(dense)
        counts = dense[idx]
        return cls(
            rows_in=rows_in,
            rows_out=len(probabilities),
            rejected=len(reasons),
            flagged=int(np.count_nonzero(decisions)),
            probability_sum=float(probabilities.sum()),
            reasons=Counter(reason_fields(r) for r in reasons.values()),
            histogram=Counter(dict(zip(idx.tolist(), counts.tolist(), strict=True))),
        )

    def __iadd__(self, other: ChunkStats) -> ChunkStats:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.rejected += other.rejected
        self.flagged += other.flagged
        self.probability_sum += other.probability_sum
        self.reasons.update(other.reasons)
        self.histogram.update(other.histogram)
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rejected": self.rejected,
            "flagged": self.flagged,
            "probability_sum": self.probability_sum,
            "reasons": dict(self.reasons),
            "histogram": {str(k): v for k, v in sorted(self.histogram.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkStats:
        return cls(
            rows_in=int(data["rows_in"]),
            rows_out=int(data["rows_out"]),
            rejected=int(data["rejected"]),
            flagged=int(data["flagged"]),
            probability_sum=float(data["probability_sum"]),
            reasons=Counter({str(k): int(v) for k, v in data["reasons"].items()}),
            histogram=Counter({int(k): int(v) for k, v in data["histogram"].items()}),
        )

    def score_distribution(self) -> dict[str, Any]:
        """Mean, quantiles (to the histogram's 0.001 resolution) and a 10-bin histogram."""
        if not self.rows_out:
            return {"mean": None, "quantiles": {}, "histogram": []}
        counts = np.zeros(HIST_BINS, dtype=np.int64)
        for k, v in self.histogram.items():
            counts[k] = v
        cumulative = np.cumsum(counts)
        quantiles = {}
        for q in (0.5, 0.9, 0.99, 0.999):
            b = int(np.searchsorted(cumulative, q * self.rows_out))
            quantiles[f"p{q * 100:g}"] = round((b + 1) / HIST_BINS, 3)
        coarse = counts.reshape(10, -1).sum(axis=1)
        return {
            "mean": self.probability_sum / self.rows_out,
            "quantiles": quantiles,
            "histogram": [{"from": i / 10, "to": (i + 1) / 10, "count": int(c)} for i, c in enumerate(coarse.tolist())],
        }


def reason_fields(reason: str) -> str:
    """ "amount: invalid float 'x'; hour: ..." -> "amount,hour" (the summary counts by field)."""
    return ",".join(part.split(":", 1)[0].strip() for part in reason.split("; "))
