"""Writing one second of aggregated events to Redis (SPEC §4), in one atomic script.

events_flush.lua applies a flush payload (aggregate/events.py) to every interval: the
trig, trig:nhit and trig:charge hashes, the last run/subrun/gtid, the worker heartbeat,
the exact nhit histogram and the compat nhit samples. Each flush carries an id; the
script records it, so a flush retried after a timeout (applied, but the answer lost) is
never counted twice. The receipt time of the last event behind a bucket's
run/subrun/gtid is kept in `minard:last:<I>:<b>` (outside the `ts:` namespace that other
programs scan), so that with N workers the last event wins, whichever worker flushes
last. Occupancy is per-channel data: the pull worker writes it through
store/channels.py, not here.
"""
from minard.constants import (EXPIRE, HASH_EXPIRE, HASH_INTERVALS, INTERVALS, NHIT_SAMPLES,
                              NHIT_SAMPLES_TTL)
from minard.store.scripts import Script

#: How long the record of an applied flush id is kept (longer than any retry).
FLUSH_MARK_TTL = 6 * 3600

FLUSH_SCRIPT = Script(
    "events_flush.lua", mark_ttl=FLUSH_MARK_TTL, intervals=INTERVALS,
    hash_intervals=HASH_INTERVALS, expire=EXPIRE, hash_expire=HASH_EXPIRE,
    n_samples=NHIT_SAMPLES, samples_ttl=NHIT_SAMPLES_TTL)


class EventStore:
    """Applies flush payloads. flush() -> Deferred firing 1 (applied) or 0 (a repeat)."""

    def __init__(self, redis):
        self.redis = redis

    def flush(self, payload):
        return FLUSH_SCRIPT(self.redis, [], [payload])
