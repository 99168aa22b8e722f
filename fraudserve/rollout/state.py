"""The traffic policy shared by every API worker: a JSON file with the current and previous policy.

Each API worker holds its own router, so an admin call reaches one worker only. That worker
writes the file (temp + ``os.replace``, via ``models.registry.write_json_atomic``); the others
``stat`` it at most every FRAUD_POLICY_REFRESH_S seconds and re-apply it when its revision
changed. All workers therefore converge within that interval.

A write is a compare-and-swap (``commit``): under an exclusive ``flock`` on ``<file>.lock`` the
file must still hold the revision the change was planned on. Two admin calls racing on two
workers therefore cannot both take revision N+1: the first wins, the second gets ``Conflict``
(409) and its worker adopts the winner's document, so every worker converges on the winner.
Refusing instead of stacking the loser on top is deliberate: the loser's change was warmed
up and judged against a policy that is no longer current, so its caller decides again.

Start-up order: the file when it exists (a restart keeps an admin's change, a rollback made
during an incident included), unless FRAUD_POLICY_FILE changed since it was last applied
(its SHA-256 is recorded), then that config file; else the single policy on FRAUD_MODEL_VERSION.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fraudserve.errors import Conflict, InvalidInput
from fraudserve.rollout.policy import Policy
from models.registry import rollout_dir, write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyDoc:
    """What the shared file holds; ``revision`` grows on every write (reloads included)."""

    current: Policy
    previous: Policy | None = None
    revision: int = 0
    config_sha256: str | None = None
    reason: str = "start"

    def to_json(self) -> dict[str, Any]:
        return {
            "current": self.current.model_dump(),
            "previous": self.previous.model_dump() if self.previous else None,
            "revision": self.revision,
            "config_sha256": self.config_sha256,
            "reason": self.reason,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PolicyDoc:
        previous = data.get("previous")
        return cls(
            current=Policy.model_validate(data["current"]),
            previous=Policy.model_validate(previous) if previous else None,
            revision=int(data.get("revision", 0)),
            config_sha256=data.get("config_sha256"),
            reason=str(data.get("reason", "")),
        )


def default_state_path(prefix: str) -> Path:
    return rollout_dir() / f"{prefix}-policy.json"


def load_policy_file(path: Path) -> tuple[Policy, str]:
    """A policy from a JSON or YAML file, and the file's SHA-256."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read policy file {path}: {exc}", field="FRAUD_POLICY_FILE") from exc
    try:
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
        return Policy.model_validate(data), hashlib.sha256(raw).hexdigest()
    except (ValueError, yaml.YAMLError, ValidationError) as exc:
        raise InvalidInput(f"policy file {path} is not a valid policy: {exc}", field="FRAUD_POLICY_FILE") from exc


class PolicyConflict(Conflict):
    """A lost compare-and-swap; ``current`` is the document that won."""

    def __init__(self, message: str, *, current: PolicyDoc | None) -> None:
        super().__init__(message, field="policy")
        self.current = current


class SharedPolicyFile:
    def __init__(self, path: Path, refresh_s: float) -> None:
        self.path = path
        self.refresh_s = refresh_s
        self._checked_at = 0.0
        self._stamp: tuple[int, int] | None = None

    def read(self) -> PolicyDoc | None:
        try:
            stat = self.path.stat()
            doc = PolicyDoc.from_json(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.error("shared policy file %s is unreadable, ignored: %s", self.path, exc)
            return None
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return doc

    def write(self, doc: PolicyDoc) -> None:
        write_json_atomic(self.path, doc.to_json())
        stat = self.path.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes and threads (``flock`` locks an open file description, not a process)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A lock file of its own: the state file is replaced on every write, a lock on it would go with it.
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def commit(self, doc: PolicyDoc, *, expected_revision: int | None) -> None:
        """Write ``doc`` if the file still holds ``expected_revision`` (None: no document yet).

        Otherwise raises ``PolicyConflict``, whose ``current`` is the winner's document to adopt.
        """
        with self.locked():
            current = self.read()
            found = current.revision if current is not None else None
            if found != expected_revision:
                raise PolicyConflict(
                    f"the traffic policy changed meanwhile (revision {found}, {current.reason if current else ''}); "
                    f"this change was planned on revision {expected_revision} and is not applied: check the"
                    " current policy and retry",
                    current=current,
                )
            self.write(doc)

    def changed(self) -> PolicyDoc | None:
        """The file's document when it changed since we last read or wrote it (checked at most every refresh_s)."""
        now = time.monotonic()
        if now - self._checked_at < self.refresh_s:
            return None
        self._checked_at = now
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        if (stat.st_mtime_ns, stat.st_size) == self._stamp:
            return None
        return self.read()
