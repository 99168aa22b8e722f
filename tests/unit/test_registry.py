from __future__ import annotations

import json

import pytest

from fraudserve.errors import InvalidInput, ModelStoreError, NotFound
from models import registry, store
from tests.unit.test_rollout_core import PREFIX, clean_registry, versions  # noqa: F401 - fixtures used below

pytestmark = pytest.mark.usefixtures("clean_registry")


def test_promote_rollback_and_history() -> None:
    with pytest.raises(ModelStoreError, match="alias 'canary' is not set"):
        store.resolve_version(PREFIX, "canary")
    assert registry.promote(PREFIX, "r1", "stable") is None
    assert registry.promote(PREFIX, "r2", "canary") is None
    assert registry.promote(PREFIX, "r2", "stable") == "r1"
    assert (store.resolve_version(PREFIX, "stable"), store.resolve_version(PREFIX, "canary")) == ("r2", "r2")
    assert registry.rollback(PREFIX, "stable") == "r1"
    assert store.load_ensemble(PREFIX, "stable").version == "r1"
    with pytest.raises(InvalidInput, match="no earlier version"):
        registry.rollback(PREFIX, "stable")
    saved = json.loads(registry.registry_path(PREFIX).read_text())
    assert [(h["action"], h["alias"], h["version"]) for h in saved["history"]] == [
        ("promote", "stable", "r1"),
        ("promote", "canary", "r2"),
        ("promote", "stable", "r2"),
        ("rollback", "stable", "r1"),
    ]
    assert not list(registry.registry_path(PREFIX).parent.glob(".*"))  # no temp file left behind


def test_promotion_refuses_another_schema_and_unknown_versions() -> None:
    registry.promote(PREFIX, "r1", "stable")
    with pytest.raises(InvalidInput, match="different feature schema than stable"):
        registry.promote(PREFIX, "rschema", "canary")
    with pytest.raises(NotFound, match="no ensemble roll_ensemble:v404"):
        registry.promote(PREFIX, "v404", "canary")
    with pytest.raises(InvalidInput, match="unknown alias"):
        registry.promote(PREFIX, "r2", "prod")
    assert registry.Registry.load(PREFIX).aliases == {"stable": "r1"}


def test_cli_list_and_promote(capsys: pytest.CaptureFixture[str]) -> None:
    assert registry.main(["--prefix", PREFIX, "promote", "r2", "--to", "stable"]) == 0
    assert "stable: - -> r2" in capsys.readouterr().out
    assert registry.main(["--prefix", PREFIX, "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) >= {"r1", "r2", "rbroken", "rschema"}
    assert lines["r2"].rstrip().endswith("stable") and not lines["r1"].rstrip().endswith("stable")
    roc = store.load_ensemble(PREFIX, "r2").metrics["ensemble"]["roc_auc"]
    assert f"{roc:.4f}" in lines["r2"]
    assert registry.main(["--prefix", PREFIX, "promote", "rschema", "--to", "canary"]) == 2
    assert "different feature schema" in capsys.readouterr().err
