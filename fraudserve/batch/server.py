"""The server engine: score chunks through a deployed service's ``POST /predict``.

For users who only have the service, not the model store. Rows are validated locally with the
served schema (from ``POST /model``) so a bad row is rejected on its own instead of failing its
whole request; valid rows are sent as at most ``request_rows`` per call (requests above the
service's bulk threshold take its unbatched runner path), a few calls at a time, retrying
503s after their Retry-After.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pandas as pd

from fraudserve.errors import FraudServeError, InvalidInput, Unavailable
from fraudserve.schema import FeatureSchema

from .scoring import OutputLayout, ScoredChunk, encode_chunk
from .source import Chunk
from .stats import ChunkStats

_RETRY_STATUSES = {429, 503}


class ServerInfo:
    def __init__(self, body: dict[str, Any]) -> None:
        self.version = str(body["version"])
        self.model_versions = {str(k): str(v) for k, v in body["model_versions"].items()}
        self.threshold = float(body["threshold"])
        self.schema = FeatureSchema.model_validate(body["schema"])
        self.members = tuple(m for m in self.model_versions if m != "ensemble")


class ServerChunkScorer:
    def __init__(
        self,
        url: str,
        *,
        id_column: str | None,
        request_rows: int,
        concurrency: int,
        retries: int,
        timeout_s: float,
        api_key: str | None = None,
    ) -> None:
        self.request_rows = request_rows
        self.concurrency = concurrency
        self.retries = retries
        self.client = httpx.Client(
            base_url=url.rstrip("/"),
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"authorization": f"Bearer {api_key}"} if api_key else None,
        )
        # BentoML APIs answer POST only, /model included.
        try:
            self.info = ServerInfo(self._request("POST", "/model", {}))
        except BaseException:
            self.client.close()
            raise
        self.layout = OutputLayout(self.info.schema, self.info.members, id_column)
        self.threshold = self.info.threshold

    def close(self) -> None:
        self.client.close()

    def __call__(self, chunk: Chunk) -> ScoredChunk:
        schema = self.info.schema
        encoded = encode_chunk(schema, chunk)
        records = decode_records(schema, encoded.matrix)
        slices = [records[i : i + self.request_rows] for i in range(0, len(records), self.request_rows)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            bodies = list(pool.map(lambda rows: self._request("POST", "/predict", {"transactions": rows}), slices))
        predictions = [p for body in bodies for p in body["predictions"]]
        if len(predictions) != len(records):
            raise Unavailable(f"server answered {len(predictions)} predictions for {len(records)} rows")
        probabilities = np.fromiter((p["fraud_probability"] for p in predictions), np.float64, len(predictions))
        decisions = np.fromiter((p["is_fraud"] for p in predictions), bool, len(predictions))
        member_scores = {
            m: np.fromiter((p["scores"][m] for p in predictions), np.float64, len(predictions))
            for m in self.info.members
        }
        versions = {p["model_version"] for p in predictions} or {self.info.version}
        if len(versions) > 1:
            # A staged rollout can serve two versions at once; keep each row's own version.
            raise Unavailable(f"server answered with several model versions {sorted(versions)} within one chunk")
        return ScoredChunk(
            chunk_id=chunk.id,
            scored=self.layout.scored_table(
                chunk, encoded.valid, probabilities, decisions, member_scores, versions.pop()
            ),
            rejected=self.layout.rejected_table(chunk, encoded.reasons),
            stats=ChunkStats.of(probabilities, decisions, encoded.reasons, chunk.table.num_rows),
            model_versions=bodies[0]["model_versions"] if bodies else self.info.model_versions,
        )

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        delay_s = 0.5
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.client.request(method, path, json=body)
            except httpx.TransportError as exc:
                if last:
                    raise Unavailable(f"{method} {self.client.base_url}{path} failed: {exc!r}") from None
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 30.0)
                continue
            if response.status_code in _RETRY_STATUSES and not last:
                time.sleep(_retry_after_s(response, delay_s))
                delay_s = min(delay_s * 2, 30.0)
                continue
            if response.status_code != 200:
                error: type[FraudServeError] = InvalidInput if response.status_code < 500 else Unavailable
                raise error(f"{method} {path} answered {response.status_code}: {response.text[:500]}", field="server")
            result: dict[str, Any] = response.json()
            return result
        raise AssertionError("unreachable")


def decode_records(schema: FeatureSchema, matrix: np.ndarray) -> list[dict[str, Any]]:
    """Encoded valid rows back to JSON values (the exact floats encode_frame produced)."""
    columns: dict[str, Any] = {}
    for c, f in enumerate(schema.features):
        col = matrix[:, c]
        if f.kind == "category":
            columns[f.name] = np.asarray(f.categories, dtype=object)[col.astype(np.int64)]
        elif f.kind == "bool":
            columns[f.name] = col.astype(bool)
        elif f.kind == "int":
            columns[f.name] = col.astype(np.int64)
        else:
            columns[f.name] = col
    records: list[dict[str, Any]] = pd.DataFrame(columns).to_dict("records")
    return records


def _retry_after_s(response: httpx.Response, default_s: float) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", default_s)), 0.0), 60.0)
    except ValueError:
        return default_s
