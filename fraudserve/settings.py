"""The one settings class. Read once at start-up (``get_settings``), never per request."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the bundle. Environment variables use the ``FRAUD_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", extra="ignore")

    model_version: str = Field(
        "latest",
        description="Version shared by the ensemble and its member models in the BentoML store.",
    )
    model_prefix: str = Field("fraud", description="Name prefix of the models in the store.")
    batching_enabled: bool = Field(True, description="Adaptive micro-batching in the runners.")
    max_batch_size_rows: int = Field(512, ge=1, description="Largest batch a runner scores at once.")
    max_latency_ms: int = Field(
        10_000,
        ge=1,
        description=(
            "Latency budget of a batched runner call. BentoML sheds (503) requests that would"
            " exceed it, so this is a deadline, not a batching window."
        ),
    )
    bulk_rows_threshold: int = Field(
        64,
        ge=1,
        description="Requests with more rows than this skip the batcher and use the bulk path.",
    )
    max_rows_per_request: int = Field(10_000, ge=1, description="Row cap of one request.")
    decision_threshold: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Fraud decision threshold; default is the one chosen at training time.",
    )
    runner_timeout_s: float = Field(60.0, gt=0, description="Timeout of one runner call.")
    api_workers: int = Field(1, ge=1, description="Worker processes of the entry service.")
    runner_workers: int = Field(1, ge=1, description="Worker processes of each model runner.")
    runner_threads: int = Field(
        1,
        ge=1,
        description="BLAS/OpenMP threads per runner process (several runners share the cores).",
    )
    ready_probe_timeout_s: float = Field(5.0, gt=0, description="Deadline of the /readyz probe.")
    grpc_port: int = Field(8001, ge=0, le=65535, description="Port of the OIP gRPC server.")
    grpc_enabled: bool = Field(True, description="Start the OIP gRPC server in each API worker.")
    data_dir: Path = Field(Path("data"), description="Where generated data sets are written.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def markdown_table() -> str:
    """The settings as the README's table (`python -m fraudserve.settings`)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        lines.append(f"| `FRAUD_{name.upper()}` | `{field.default}` | {field.description or ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
