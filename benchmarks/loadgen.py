"""The pure parts of the online benchmark: wrk scripts and their output, pidstat output, ratios, the table.

Nothing here starts a process or opens a socket, so tests/unit/test_bench_online.py covers it all.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

WRK_MARKER = "WRK_RESULT "

# wrk's Lua API: `init` runs once per thread, `request` once per request, `done` once at the end
# with the merged statistics (latencies in microseconds). Bodies cycle so that a response cache,
# if one were on, would not answer every request from memory.
_WRK_LUA = """\
local bodies = {
%(bodies)s
}
local requests = {}
local i = 0

init = function(args)
  for k, body in ipairs(bodies) do
    requests[k] = wrk.format("POST", %(path)s, {["Content-Type"] = "application/json"}, body)
  end
end

request = function()
  i = (i %% #requests) + 1
  return requests[i]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class Point:
    """One measured point: a target, a transport, a load (connections or an offered rate)."""

    target: str
    transport: str
    connections: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    duration_s: float
    offered_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lua_long_string(text: str) -> str:
    """``text`` as a Lua long bracket string, with a level of ``=`` the text itself never contains."""
    level = 0
    # A trailing "]=" would join the closing bracket too.
    while f"]{'=' * level}]" in text or text.endswith(f"]{'=' * level}"):
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def wrk_script(path: str, bodies: Sequence[str]) -> str:
    """A wrk Lua script POSTing ``bodies`` (JSON strings) in turn to ``path`` and printing a JSON summary."""
    if not bodies:
        raise ValueError("wrk_script needs at least one body")
    return _WRK_LUA % {
        "bodies": ",\n".join(f"  {lua_long_string(b)}" for b in bodies),
        "path": lua_long_string(path),
        "marker": WRK_MARKER,
    }


def parse_wrk(output: str, *, target: str, transport: str, connections: int) -> Point:
    """The summary line the script's ``done`` printed -> a Point; ``errors`` counts non-2xx/3xx and socket errors.

    wrk counts a non-2xx answer as a request (and in its latency); req/s here counts only the good ones.
    """
    line = next((ln for ln in output.splitlines() if ln.startswith(WRK_MARKER)), None)
    if line is None:
        raise ValueError(f"no {WRK_MARKER.strip()} line in wrk output:\n{output[-2000:]}")
    raw = json.loads(line[len(WRK_MARKER) :])
    duration_s = raw["duration_us"] / 1e6
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    good = max(0, raw["requests"] - raw["status"])
    return Point(
        target=target,
        transport=transport,
        connections=connections,
        req_per_s=good / duration_s if duration_s > 0 else 0.0,
        p50_ms=raw["p50_us"] / 1000.0,
        p99_ms=raw["p99_us"] / 1000.0,
        errors=raw["status"] + socket_errors,
        requests=raw["requests"],
        duration_s=duration_s,
        extra={"wrk": raw},
    )


def percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of latencies in seconds, in ms; NaN when there are none."""
    if not latencies_s:
        return math.nan
    ordered = sorted(latencies_s)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return 1000.0 * ordered[rank - 1]


def parse_pidstat(output: str, roles: Mapping[int, str]) -> list[dict[str, Any]]:
    """The ``Average:`` lines of ``pidstat -u`` (run with LC_ALL=C) -> per-process %CPU, labelled by ``roles``."""
    rows: list[dict[str, Any]] = []
    header: list[str] | None = None
    for line in output.splitlines():
        if not line.startswith("Average:"):
            continue
        cells = line.split()[1:]
        if "PID" in cells:
            header = cells
            continue
        if header is None or len(cells) < len(header):
            continue
        last = len(header) - 1
        record = dict(zip(header, [*cells[:last], " ".join(cells[last:])], strict=True))
        pid = int(record["PID"])
        rows.append(
            {
                "pid": pid,
                "role": roles.get(pid, record.get("Command", "?")),
                "usr_pct": float(record["%usr"]),
                "system_pct": float(record["%system"]),
                "cpu_pct": float(record["%CPU"]),
                # Runnable but not running: how much the machine's other load held the process back.
                "wait_pct": float(record.get("%wait", "nan")),
            }
        )
    rows.sort(key=lambda r: -r["cpu_pct"])
    return rows


def client_warnings(point: Point, *, max_client_cpu_pct: float = 80.0, min_sent_share: float = 0.95) -> list[str]:
    """Signs that the load client, not the server, limited a point: a busy client, or a missed send schedule."""
    warnings = []
    cpu = point.extra.get("client_cpu_pct")
    if cpu is not None and cpu > max_client_cpu_pct:
        warnings.append(f"the load client used {cpu:.0f} % of a core: it may have been the bottleneck")
    sent = point.extra.get("sent_rate")
    if point.offered_rate and sent is not None and sent < min_sent_share * point.offered_rate:
        warnings.append(f"the client sent {sent:.0f} req/s of the {point.offered_rate:.0f} offered (starved of CPU)")
    return warnings


def ratio(numerator: float, denominator: float | None) -> float | None:
    if denominator is None or denominator <= 0 or math.isnan(denominator) or math.isnan(numerator):
        return None
    return round(numerator / denominator, 3)


def _find(points: Iterable[Point], target: str, transport: str, connections: int) -> Point | None:
    return next(
        (
            p
            for p in points
            if p.target == target and p.transport == transport and p.connections == connections and not p.offered_rate
        ),
        None,
    )


# Which MLServer transport a bundle transport is compared with: like with like.
PEER_TRANSPORT = {"REST /predict": "REST", "OIP REST": "REST", "OIP gRPC": "gRPC"}


def with_ratios(points: Sequence[Point], *, bundle: str, mlserver: str, trivial: str) -> list[dict[str, Any]]:
    """Each point as a dict plus ``ratio_vs_mlserver`` (like transport), ``ratio_vs_mlserver_rest`` (gRPC
    rows) and ``ratio_vs_trivial`` (the trivial BentoML endpoint, same connections); None where not measured."""
    out = []
    for p in points:
        row = p.as_dict()
        if not p.offered_rate:
            ceiling = _find(points, trivial, "REST", p.connections)
            if p.target != trivial:
                row["ratio_vs_trivial"] = ratio(p.req_per_s, ceiling.req_per_s if ceiling else None)
            if p.target == bundle:
                peer = _find(points, mlserver, PEER_TRANSPORT.get(p.transport, p.transport), p.connections)
                row["ratio_vs_mlserver"] = ratio(p.req_per_s, peer.req_per_s if peer else None)
                if PEER_TRANSPORT.get(p.transport) == "gRPC":
                    rest = _find(points, mlserver, "REST", p.connections)
                    row["ratio_vs_mlserver_rest"] = ratio(p.req_per_s, rest.req_per_s if rest else None)
        out.append(row)
    return out


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of ``with_ratios`` rows (the README's layout)."""
    lines = [
        "| target | transport | connections | req/s | p50 ms | p99 ms | errors | vs MLServer | vs trivial |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        load = f"{r['offered_rate']:.0f} req/s offered" if r.get("offered_rate") else str(r["connections"])
        versus = _fmt(r.get("ratio_vs_mlserver"), ".2f")
        if r.get("ratio_vs_mlserver_rest") is not None:
            versus += f" (REST {_fmt(r['ratio_vs_mlserver_rest'], '.2f')})"
        lines.append(
            f"| {r['target']} | {r['transport']} | {load} | {_fmt(r['req_per_s'], '.1f')} | {_fmt(r['p50_ms'], '.1f')}"
            f" | {_fmt(r['p99_ms'], '.1f')} | {r['errors']} | {versus} | {_fmt(r.get('ratio_vs_trivial'), '.2f')} |"
        )
    return "\n".join(lines)
