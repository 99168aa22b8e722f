"""The broker on Redis Streams: consumer groups, XAUTOCLAIM, and one atomic write-and-ack script."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import redis

from fraudserve.errors import Unavailable
from fraudserve.settings import Settings

from .broker import CommitResult, DeadLetter, Delivery, GroupStats, Outcome, Reclaimed, Scored, Trimmed

# Writing the outputs and the XACK in one atomic step is what docs/architecture.md records as "0 duplicates
# after a kill mid-batch". A script (rather than MULTI/EXEC) can also check, inside that step,
# that the source message is still pending: a message no longer pending was already written and
# acknowledged by someone (a slow consumer whose batch was reclaimed), so the pending entries
# list itself is the dedup set and costs no extra memory.
# On Redis Cluster all four keys must share a slot: name them with a hash tag, e.g. {fraud}:scores.
_COMMIT = """
local group, maxlen = ARGV[1], tonumber(ARGV[2])
local function add(key, fields)
  return redis.call('XADD', key, '*', unpack(fields))
end
local ncols = tonumber(ARGV[3])
local cols = {}
for j = 1, ncols do cols[j] = ARGV[3 + j] end
local i = 4 + ncols
local shared = {}
for j = 1, 2 * tonumber(ARGV[i]) do shared[j] = ARGV[i + j] end
i = i + 1 + #shared
local written, duplicates = 0, 0
while i <= #ARGV do
  local sid, kind, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local fields
  if kind == 'd' then
    fields = {}
    for j = 1, n do fields[j] = ARGV[i + 2 + j] end
  else
    fields = {'source_id', sid}
    local skip = ncols - n
    for j = 1, n do
      fields[2 * j + 1] = cols[skip + j]
      fields[2 * j + 2] = ARGV[i + 2 + j]
    end
    for j = 1, #shared do fields[2 * n + 2 + j] = shared[j] end
  end
  i = i + 3 + n
  if #redis.call('XPENDING', KEYS[1], group, sid, sid, 1) == 1 then
    if kind == 'd' then
      add(KEYS[4], fields)
    else
      add(KEYS[2], fields)
      if kind == 'a' then add(KEYS[3], fields) end
    end
    redis.call('XACK', KEYS[1], group, sid)
    written = written + 1
  else
    duplicates = duplicates + 1
  end
end
-- One approximate trim per stream and call rather than a MAXLEN on every XADD: the same cap, fewer arguments.
if maxlen > 0 then
  for k = 2, 4 do redis.call('XTRIM', KEYS[k], 'MAXLEN', '~', maxlen) end
end
return {written, duplicates}
"""


# Trimming the input must never drop a message a consumer group still needs: neither one it was
# not delivered yet (after its last-delivered id) nor one delivered but not acknowledged (pending;
# XAUTOCLAIM would then report it deleted, unscored). So the cut is the oldest such id over all
# groups, and only entries strictly older than it go, at most as many as exceed ARGV[1]. In one
# script, so that no consumer (or new group) can move between the look and the cut. No group at
# all: nothing was delivered yet, nothing is trimmed. Returns {removed, kept beyond maxlen}.
_TRIM_INPUT = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function older(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
local function after(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms .. '-' .. string.format('%d', tonumber(seq) + 1)
end
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return {0, 0} end
local cut = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for j = 1, #group, 2 do info[group[j]] = group[j + 1] end
  local needed = after(info['last-delivered-id'])
  if info['pending'] > 0 then
    needed = redis.call('XPENDING', KEYS[1], info['name'])[2]
  end
  if cut == nil or older(needed, cut) then cut = needed end
end
if cut == nil then return {0, excess} end
local old = redis.call('XRANGE', KEYS[1], '-', '(' .. cut, 'COUNT', excess)
if #old == 0 then return {0, excess} end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', after(old[#old][1]))
return {removed, excess - removed}
"""


@dataclass(frozen=True)
class StreamNames:
    input: str
    output: str
    alerts: str
    dead_letter: str

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamNames:
        return cls(settings.stream_input, settings.stream_output, settings.stream_alerts, settings.stream_dead_letter)


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unavailable(f"redis: {exc}") from exc


class RedisStreams:
    """``Broker`` over one Redis input stream read by one consumer group."""

    def __init__(self, client: redis.Redis, names: StreamNames, *, group: str, consumer: str, maxlen: int = 0) -> None:
        self.client = client
        self.names = names
        self.group = group
        self.consumer = consumer
        self.maxlen = maxlen
        self._commit = client.register_script(_COMMIT)
        self._trim_input = client.register_script(_TRIM_INPUT)
        self._claim_cursor = "0-0"

    @classmethod
    def connect(cls, settings: Settings, consumer: str, *, url: str | None = None) -> RedisStreams:
        client = redis.Redis.from_url(url or settings.redis_url, decode_responses=True)
        return cls(
            client,
            StreamNames.from_settings(settings),
            group=settings.stream_group,
            consumer=consumer,
            maxlen=settings.stream_maxlen,
        )

    def ensure_group(self) -> None:
        with _unavailable():
            try:
                # From "0": messages produced before the first worker started are scored too.
                self.client.xgroup_create(self.names.input, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        with _unavailable():
            # redis-py types replies as a union of its sync and async shapes; this client is sync.
            reply: Any = self.client.xreadgroup(
                self.group, self.consumer, {self.names.input: ">"}, count=count, block=block_ms
            )
        if not reply:
            return []
        _, entries = reply[0]
        return [Delivery(mid, fields or {}, 1, _appended_s(mid)) for mid, fields in entries]

    def reclaim(self, min_idle_ms: int, count: int) -> Reclaimed:
        with _unavailable():
            reply = self.client.xautoclaim(
                self.names.input, self.group, self.consumer, min_idle_ms, start_id=self._claim_cursor, count=count
            )
            self._claim_cursor, entries = reply[0], reply[1]
            trimmed = list(reply[2]) if len(reply) > 2 else []
            if not entries:
                return Reclaimed([], trimmed)
            # XAUTOCLAIM does not say how often a message was delivered; XPENDING does.
            pending = self.client.xpending_range(
                self.names.input,
                self.group,
                min=entries[0][0],
                max=entries[-1][0],
                count=len(entries) + 1_000,
                consumername=self.consumer,
            )
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        deliveries = [Delivery(mid, fields or {}, counts.get(mid, 2), _appended_s(mid)) for mid, fields in entries]
        return Reclaimed(deliveries, trimmed)

    def commit(self, outcomes: Sequence[Outcome]) -> CommitResult:
        if not outcomes:
            return CommitResult(0)
        layouts = {id(o.layout): o.layout for o in outcomes if isinstance(o, Scored)}
        if len(layouts) > 1:
            # One script per layout (never the case within one batch; kept correct rather than assumed away).
            first, *rest = layouts.values()
            parts = [[o for o in outcomes if not isinstance(o, Scored) or o.layout is first]]
            parts += [[o for o in outcomes if isinstance(o, Scored) and o.layout is layout] for layout in rest]
            results = [self.commit(part) for part in parts]
            return CommitResult(sum(r.written for r in results), sum(r.duplicates for r in results))
        # Columns and shared fields go once per script call, not once per message: the arguments were most
        # of a commit's cost (redis-py packs each one in Python).
        args: list[Any] = [self.group, self.maxlen]
        layout = next(iter(layouts.values()), None)
        if layout is None:
            args += [0, 0]
        else:
            args += [len(layout.columns), *layout.columns, len(layout.shared)]
            args += [x for pair in layout.shared for x in pair]
        for o in outcomes:
            if isinstance(o, DeadLetter):
                flat = [x for pair in o.fields.items() for x in pair]
                args += [o.source_id, "d", len(flat), *flat]
            else:
                args += [o.source_id, "a" if o.alert else "s", len(o.values), *o.values]
        keys = [self.names.input, self.names.output, self.names.alerts, self.names.dead_letter]
        with _unavailable():
            written, duplicates = self._commit(keys=keys, args=args)
        return CommitResult(int(written), int(duplicates))

    def publish(self, payloads: Sequence[Mapping[str, str]]) -> list[str]:
        with _unavailable():
            pipe = self.client.pipeline(transaction=False)
            for fields in payloads:
                pipe.xadd(self.names.input, cast(Any, dict(fields)))
            return [str(i) for i in pipe.execute()]

    def trim_input(self, maxlen: int) -> Trimmed:
        with _unavailable():
            removed, kept = self._trim_input(keys=[self.names.input], args=[maxlen])
        return Trimmed(int(removed), int(kept))

    def stats(self) -> GroupStats:
        with _unavailable():
            pipe = self.client.pipeline(transaction=False)
            for name in (self.names.input, self.names.output, self.names.alerts, self.names.dead_letter):
                pipe.xlen(name)
            length, *outputs = pipe.execute()
            groups = self.client.xinfo_groups(self.names.input) if length or self._exists() else []
            group = next((g for g in groups if g["name"] == self.group), None)
            consumers: dict[str, int] = {}
            if group is not None:
                consumers = {
                    c["name"]: int(c["pending"]) for c in self.client.xinfo_consumers(self.names.input, self.group)
                }
        lag = group.get("lag") if group else None
        return GroupStats(
            length=int(length),
            lag=None if lag is None else int(lag),
            pending=int(group["pending"]) if group else 0,
            consumers=consumers,
            outputs=dict(zip(("output", "alerts", "dead_letter"), (int(n) for n in outputs), strict=True)),
        )

    def _exists(self) -> bool:
        return bool(self.client.exists(self.names.input))

    def close(self) -> None:
        self.client.close()


def _appended_s(message_id: str) -> float | None:
    """Auto-generated Redis ids begin with the append time in milliseconds."""
    head = message_id.split("-", 1)[0]
    return int(head) / 1000.0 if head.isdigit() else None
