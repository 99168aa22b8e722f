"""Model registry: the aliases ``stable`` and ``canary`` over the versions in the model store.

    python -m models.registry list                        # versions, ROC-AUC / PR-AUC, aliases
    python -m models.registry promote v2 --to canary      # schema must equal stable's
    python -m models.registry promote v2 --to stable
    python -m models.registry rollback --alias stable     # back to what stable pointed at before

The registry is a JSON file in $BENTOML_HOME (``fraud-rollout/<prefix>-registry.json``), written
atomically (temp file + ``os.replace``), so a server reading it never sees half a file. Each alias
keeps the stack of versions it pointed at: ``promote`` pushes, ``rollback`` pops. A running service
resolves the aliases at start and on ``POST /admin/reload``; ``models.store.resolve_version`` is the
one resolver and reads this file for alias names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bentoml

from fraudserve.errors import InvalidInput, ModelStoreError, NotFound

ALIASES = ("stable", "canary")
ENSEMBLE = "ensemble"


def rollout_dir() -> Path:
    """Where the registry and the shared rollout policy live: inside the BentoML home."""
    home = os.environ.get("BENTOML_HOME") or str(Path.home() / "bentoml")
    return Path(home) / "fraud-rollout"


def registry_path(prefix: str) -> Path:
    return rollout_dir() / f"{prefix}-registry.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Temp file in the same folder + ``os.replace``: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Registry:
    prefix: str
    stacks: dict[str, list[str]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, prefix: str) -> Registry:
        path = registry_path(prefix)
        if not path.is_file():
            return cls(prefix)
        try:
            data = json.loads(path.read_text())
            stacks = {str(k): [str(v) for v in vs] for k, vs in data.get("stacks", {}).items()}
            return cls(prefix, stacks, list(data.get("history", [])))
        except (ValueError, AttributeError, TypeError) as exc:
            raise ModelStoreError(f"registry {path} is unreadable: {exc}") from exc

    def save(self) -> None:
        write_json_atomic(registry_path(self.prefix), {"stacks": self.stacks, "history": self.history})

    def alias(self, name: str) -> str | None:
        stack = self.stacks.get(name)
        return stack[-1] if stack else None

    @property
    def aliases(self) -> dict[str, str]:
        return {name: stack[-1] for name, stack in self.stacks.items() if stack}

    def promote(self, version: str, alias: str) -> str | None:
        """Point ``alias`` at ``version``; returns what it pointed at before."""
        _check_alias(alias)
        concrete = _ensemble(self.prefix, version).tag.version
        stable = self.alias("stable")
        if stable is not None and stable != concrete:
            _check_same_schema(self.prefix, str(stable), str(concrete))
        previous = self.alias(alias)
        if previous != concrete:
            self.stacks.setdefault(alias, []).append(str(concrete))
            self._log("promote", alias, str(concrete), previous)
        return previous

    def rollback(self, alias: str) -> str:
        """Pop ``alias`` back to the version it pointed at before its last promotion."""
        _check_alias(alias)
        stack = self.stacks.get(alias, [])
        if len(stack) < 2:
            raise InvalidInput(f"alias {alias!r} has no earlier version to roll back to", field="alias")
        undone = stack.pop()
        self._log("rollback", alias, stack[-1], undone)
        return stack[-1]

    def _log(self, action: str, alias: str, version: str, previous: str | None) -> None:
        at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.history.append({"at": at, "action": action, "alias": alias, "version": version, "previous": previous})


def resolve_alias(prefix: str, name: str) -> str | None:
    """The version an alias points at, or None when the registry does not define it."""
    return Registry.load(prefix).alias(name) if name in ALIASES else None


def promote(prefix: str, version: str, alias: str) -> str | None:
    registry = Registry.load(prefix)
    previous = registry.promote(version, alias)
    registry.save()
    return previous


def rollback(prefix: str, alias: str) -> str:
    registry = Registry.load(prefix)
    version = registry.rollback(alias)
    registry.save()
    return version


def list_versions(prefix: str) -> list[dict[str, Any]]:
    """Every stored ensemble, newest first, with its test metrics and the aliases on it."""
    aliases = Registry.load(prefix).aliases
    rows = []
    for model in bentoml.models.list(f"{prefix}_{ENSEMBLE}"):
        version = str(model.tag.version)
        metrics = model.info.metadata.get("metrics", {})
        found = metrics.get(ENSEMBLE) if isinstance(metrics, dict) else None
        ensemble: dict[str, Any] = found if isinstance(found, dict) else {}
        rows.append(
            {
                "version": version,
                "created": model.info.creation_time.strftime("%Y-%m-%d %H:%M:%S"),
                "roc_auc": ensemble.get("roc_auc"),
                "pr_auc": ensemble.get("pr_auc"),
                "aliases": sorted(a for a, v in aliases.items() if v == version),
            }
        )
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def _check_alias(alias: str) -> None:
    if alias not in ALIASES:
        raise InvalidInput(f"unknown alias {alias!r}; aliases are {list(ALIASES)}", field="alias")


def _ensemble(prefix: str, version: str) -> bentoml.Model:
    try:
        return bentoml.models.get(f"{prefix}_{ENSEMBLE}:{version}")
    except bentoml.exceptions.NotFound:
        raise NotFound(f"no ensemble {prefix}_{ENSEMBLE}:{version} in the model store", field="version") from None


def _check_same_schema(prefix: str, stable: str, candidate: str) -> None:
    ours = _ensemble(prefix, candidate).info.metadata.get("schema")
    theirs = _ensemble(prefix, stable).info.metadata.get("schema")
    if json.loads(str(ours)) != json.loads(str(theirs)):
        raise InvalidInput(
            f"version {candidate} has a different feature schema than stable ({stable}); it cannot share its traffic",
            field="version",
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.registry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default="fraud", help="model name prefix in the store (default: fraud)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="versions with ROC-AUC / PR-AUC and their aliases")
    p = sub.add_parser("promote", help="point an alias at a version")
    p.add_argument("version")
    p.add_argument("--to", dest="alias", choices=ALIASES, required=True)
    r = sub.add_parser("rollback", help="point an alias back at its previous version")
    r.add_argument("--alias", choices=ALIASES, default="stable")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(f"{'version':<32} {'created':<19} {'roc_auc':>8} {'pr_auc':>8}  aliases")
            for row in list_versions(args.prefix):
                created, roc, pr = row["created"], _fmt(row["roc_auc"]), _fmt(row["pr_auc"])
                print(f"{row['version']:<32} {created:<19} {roc:>8} {pr:>8}  {','.join(row['aliases'])}")
        elif args.command == "promote":
            previous = promote(args.prefix, args.version, args.alias)
            print(f"{args.alias}: {previous or '-'} -> {args.version}")
        else:
            print(f"{args.alias}: rolled back to {rollback(args.prefix, args.alias)}")
    except (InvalidInput, NotFound, ModelStoreError) as exc:
        print(f"registry: error: {exc.message}", file=sys.stderr)
        return 2
    if args.command != "list":
        print("running services pick this up on POST /admin/reload (or at their next start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
