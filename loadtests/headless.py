"""The headless locust command line, for tests and scripted runs (same options as loadtests/headless.conf)."""

from __future__ import annotations

import sys
from pathlib import Path

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def locust_command(
    host: str,
    report_prefix: Path,
    *,
    users: int = 4,
    run_time: str = "10s",
    user_classes: tuple[str, ...] = ("RestUser",),
    extra: tuple[str, ...] = (),
) -> list[str]:
    """``locust --headless`` writing ``<report_prefix>_stats.csv`` (and friends) and ``<report_prefix>.html``."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        run_time,
        "--stop-timeout",
        "10",
        "--csv",
        str(report_prefix),
        "--html",
        f"{report_prefix}.html",
        "--only-summary",
        *extra,
        *user_classes,
    ]
