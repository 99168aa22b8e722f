from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fraudserve.settings import Settings, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_env_prefix_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_MAX_BATCH_SIZE_ROWS", "32")
    monkeypatch.setenv("FRAUD_BATCHING_ENABLED", "false")
    settings = Settings()
    assert settings.max_batch_size_rows == 32
    assert settings.batching_enabled is False
    monkeypatch.setenv("FRAUD_DECISION_THRESHOLD", "1.5")
    with pytest.raises(ValidationError):
        Settings()


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [f"FRAUD_{name.upper()}" for name in Settings.model_fields if f"FRAUD_{name.upper()}" not in text]
    assert not missing, f"README.md lacks {missing}; regenerate with `python -m fraudserve.settings`"
    assert markdown_table() in text, (
        "README.md's settings table is stale; regenerate with `python -m fraudserve.settings`"
    )
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} needs a description"
