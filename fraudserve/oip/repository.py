"""The models this server exposes over the Open Inference Protocol: the ensemble and each member.

Names come from the model store's naming (``models.store.model_name``), so an OIP client sees
the same identities as ``GET /model``. Names, platforms and tensors are the same for every
version this service can serve (a policy only takes versions of the same schema and members);
which versions are served is the traffic policy's business, so the data plane puts the
version on an entry (``at``) when it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fraudserve.ensemble import EnsembleSpec
from fraudserve.errors import NotFound
from fraudserve.oip.codec import TensorSpec, input_specs
from models.store import ENSEMBLE, model_name

PROBABILITY = "fraud_probability"
DECISION = "is_fraud"
ENSEMBLE_PLATFORM = "sklearn_ensemble"
MEMBER_PLATFORM = "sklearn"


def score_output(member: str) -> str:
    return f"{member}_score"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    platform: str
    member: str | None  # None for the ensemble
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class ModelRepository:
    def __init__(self, spec: EnsembleSpec) -> None:
        inputs = input_specs(spec.schema)
        scores = tuple(TensorSpec(score_output(m), "FP64", (-1,)) for m in spec.members)
        ensemble = ModelEntry(
            name=model_name(spec.prefix, ENSEMBLE),
            version=spec.version,
            platform=ENSEMBLE_PLATFORM,
            member=None,
            inputs=inputs,
            outputs=(TensorSpec(PROBABILITY, "FP64", (-1,)), TensorSpec(DECISION, "BOOL", (-1,)), *scores),
        )
        members = [
            ModelEntry(model_name(spec.prefix, m), spec.version, MEMBER_PLATFORM, m, inputs, (score,))
            for m, score in zip(spec.members, scores, strict=True)
        ]
        self.models: dict[str, ModelEntry] = {e.name: e for e in (ensemble, *members)}

    def entry(self, name: str) -> ModelEntry:
        """The model ``name``; NotFound otherwise."""
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"unknown model {name!r}; this server has {list(self.models)}", field="model_name")
        return entry

    def at(self, name: str, version: str) -> ModelEntry:
        return replace(self.entry(name), version=version)
