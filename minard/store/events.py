"""Writing one second of aggregated events to Redis (SPEC §4), in one atomic script.

events_flush.lua applies a flush payload (aggregate/events.py) to every interval: the
trig, trig:nhit and trig:charge hashes, the last run/subrun/gtid, the worker heartbeat,
the exact nhit histogram and the compat nhit samples, in chunks of a bounded number of
commands (no script holds Redis for long; all chunks go out at once, one round trip).
Each flush carries an id; the script records it per chunk, so a flush retried after a timeout (applied, but the answer lost) is
never counted twice. The receipt time of the last event behind a bucket's
run/subrun/gtid is kept in `minard:last:<I>:<b>` (outside the `ts:` namespace that other
programs scan), so that with N workers the last event wins, whichever worker flushes
last. Occupancy is per-channel data: the pull worker writes it through
store/channels.py, not here.

`mark_link` (link_mark.lua) is dispatch-push's part: the buckets in which its dispatcher
link was up, so that a bucket without events reads 0 only when events could have come.
"""
import json

from minard.constants import (EXPIRE, HASH_EXPIRE, HASH_INTERVALS, INTERVALS, NHIT_SAMPLES,
                              NHIT_SAMPLES_TTL)
from minard.store import analyses, keys
from minard.store.channels import gather
from minard.store.scripts import Script

#: How long the record of an applied flush id is kept: longer than any retry (a flush
#: waits at most MAX_PENDING = 900 s in a pull worker), short enough that the markers
#: (one per chunk, several a second per worker) stay a few MB.
FLUSH_MARK_TTL = 3600

FLUSH_SCRIPT = Script(
    "events_flush.lua", mark_ttl=FLUSH_MARK_TTL, expire=EXPIRE, hash_expire=HASH_EXPIRE,
    n_samples=NHIT_SAMPLES, samples_ttl=NHIT_SAMPLES_TTL)

#: Redis commands one chunk of a flush may run at most: 2-5 µs each inside a script, so a
#: chunk holds Redis ~1 ms, well under 5 ms even on a loaded machine
#: (bench/bench_store_scripts.py, bench/bench_store.py).
CHUNK_COMMANDS = 200


def chunks(doc, limit=CHUNK_COMMANDS):
    """Split one second's flush into chunks of at most ~`limit` Redis commands: lists of
    {"k", "i": intervals, "h": [[hash interval, first, last]] (a 1-based range of the
    flat nhit histogram), "s": samples?}. An interval costs 3 commands per trig field (+ a
    few), a histogram one per nhit value; a long histogram is split over chunks."""
    fields = len(doc.get("trig") or ()) if doc["events"] else 0
    work = [("i", I, 3 * fields + 6) for I in INTERVALS]
    if doc["events"]:
        n_hist = len(doc.get("hist") or ()) // 2
        step = max(1, limit - 1)
        for H in HASH_INTERVALS:
            for first in range(0, max(n_hist, 1), step):
                last = min(n_hist, first + step)
                work.append(("h", [H, 2 * first + 1, 2 * last], last - first + 1))
    out, current, cost = [], {"i": [], "h": [], "s": 0}, 0
    for kind, item, n in work:
        if current["i"] or current["h"]:
            if cost + n > limit:
                out.append(current)
                current, cost = {"i": [], "h": [], "s": 0}, 0
        current[kind].append(item)
        cost += n
    out.append(current)
    out[-1]["s"] = 1
    for k, c in enumerate(out):
        c["k"] = k
    return out


LINK_SCRIPT = Script("link_mark.lua")

#: Seconds of link marks per script call at most (~2 keys a second: a call stays ~1 ms).
LINK_SECONDS_PER_CALL = 64


def mark_link(redis, seconds, since):
    """Record that the dispatcher link was up in each of `seconds` (unix seconds): the
    mark `keys.link_up(I, s // I)` of every interval I, TTL I × EXPIRE (the same buckets,
    TTLs and "any second of the bucket" roll-up as the pull-worker heartbeat), and
    `keys.LINK_SINCE` = `since` unless one is set. Without a mark a bucket's event rates
    are unknown (null), with one and a pull-worker heartbeat they are counts (0 included).
    Deferred firing the number of marks written."""
    marks = {}
    for second in seconds:
        for interval in INTERVALS:
            marks[keys.link_up(interval, int(second) // interval)] = keys.ts_ttl(interval)
    return LINK_SCRIPT(redis, [keys.LINK_SINCE] + list(marks),
                       [str(int(since))] + [str(ttl) for ttl in marks.values()])


class EventStore:
    """Applies flush payloads. flush() -> Deferred firing 1 (applied) or 0 (a repeat).

    What the payload's "x" holds (FEC/D, orphans, per-type nhit, runs, clock jumps: issue
    13) goes to store/analyses.py's chunks, in the same round trip; on_clock_burst (if
    set) is called with the first jump of a burst of clock jumps."""

    on_clock_burst = None

    def __init__(self, redis):
        self.redis = redis

    def flush(self, payload):
        doc = json.loads(payload)
        extra = doc.pop("x", None)
        if extra is not None:  # events_flush.lua need not decode it in every chunk
            payload = json.dumps(doc, separators=(",", ":"))
        calls = [FLUSH_SCRIPT(self.redis, [], [payload, json.dumps(c, separators=(",", ":"))])
                 for c in chunks(doc)]
        if extra is not None:
            doc["x"] = extra
            calls += analyses.flush_calls(self.redis, doc, self.on_clock_burst)
        d = gather(calls)
        d.addCallback(lambda results: 1 if any(int(r) for r in results) else 0)
        return d
