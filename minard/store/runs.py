"""Run history, per-run occupancy by event type, clock jumps and per-type nhit histograms:
their writes that are not a flush (store/analyses.py) and every read of them (issue 13;
key layout in store/keys.py).

Per-run occupancy partials (`minard:runocc:<run>:<field>`, one field per pull worker,
overwritten with the worker's cumulative partial: aggregate/runs.py) are packed:
`PART_HEADER` (magic b"MRO1", item size u4: 4 or 8, events u8), then the hits of the
N_CHANNELS channels as little-endian unsigned integers of that size (u4 unless a count
needs more). A reader adds the partials.
"""
import json
import math

import numpy as np
from twisted.internet import defer

from minard.aggregate.runs import run_type_names
from minard.constants import (EVENT_TYPES, HASH_INTERVALS, N_CHANNELS, N_TRIGGER_BITS,
                              RUN_OCCUPANCY_KEEP)
from minard.store import keys
from minard.store.channels import as_bytes, gather
from minard.store.scripts import Script

PART_MAGIC = b"MRO1"
PART_HEADER = np.dtype([("magic", "S4"), ("itemsize", "<u4"), ("events", "<u8")])
#: Partials written per call (~41 KB each: a call stays ~1 ms).
PARTS_PER_CALL = 4
#: Runs one /runs answer lists at most, and hours of one run whose seconds are counted.
RUNS_PER_ANSWER = 500
RUN_HOURS_COUNTED = 24 * 62

RUNOCC_WRITE = Script("runocc_write.lua")
RUNS_READ = Script("runs_read.lua")


def type_field(index):
    """The field of an event type index (trigger bit, then polling, NONE)."""
    return str(index) if index < N_TRIGGER_BITS else EVENT_TYPES[index]


#: Event type name (100L ... MISS, polling, NONE) -> its field; TOTAL -> TOTAL.
FIELD_OF_TYPE = {name: type_field(i) for i, name in enumerate(EVENT_TYPES)}
TYPE_OF_FIELD = {field: name for name, field in FIELD_OF_TYPE.items()}
TYPE_OF_FIELD["TOTAL"] = "TOTAL"


# -- per-run occupancy partials ----------------------------------------------------------

def encode_part(hits, events):
    hits = np.asarray(hits, dtype=np.int64)
    itemsize = 4 if (not len(hits) or int(hits.max()) < 2 ** 32) else 8
    header = np.zeros(1, PART_HEADER)
    header["magic"] = PART_MAGIC
    header["itemsize"] = itemsize
    header["events"] = int(events)
    return header.tobytes() + hits.astype("<u%d" % itemsize).tobytes()


def decode_part(blob):
    """(hits int64[N_CHANNELS], events); ValueError when it is not a partial."""
    blob = as_bytes(blob)
    h = PART_HEADER.itemsize
    if len(blob) < h or blob[:4] != PART_MAGIC:
        raise ValueError("not a run occupancy partial")
    header = np.frombuffer(blob, PART_HEADER, count=1)[0]
    itemsize = int(header["itemsize"])
    if itemsize not in (4, 8) or len(blob) != h + itemsize * N_CHANNELS:
        raise ValueError("not a run occupancy partial (%d bytes)" % len(blob))
    hits = np.frombuffer(blob, "<u%d" % itemsize, count=N_CHANNELS, offset=h)
    return hits.astype(np.int64), int(header["events"])


def write_run_occupancy(redis, parts, ttl=RUN_OCCUPANCY_KEEP):
    """Overwrite each worker's partials: parts [(run, type index, field, hits, events)]
    (aggregate/runs.py RunFollower.collect). Deferred firing when all are written."""
    calls = []
    for i in range(0, len(parts), PARTS_PER_CALL):
        script_keys, args = [], [str(int(ttl))]
        for run, t, field, hits, events in parts[i:i + PARTS_PER_CALL]:
            script_keys.append(keys.run_occupancy(run, type_field(t)))
            args += [field, encode_part(hits, events)]
        calls.append(RUNOCC_WRITE(redis, script_keys, args))
    return gather(calls) if calls else defer.succeed([])


# -- reads ---------------------------------------------------------------------------------

def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def run_summary(number, record, seconds_with_data):
    """A run's JSON from its record hash (text fields) and the seconds with events."""
    start, stop = _int(record.get("start")), _int(record.get("stop"))
    events = {}
    nhit = {}
    for key, value in record.items():
        kind, _, field = key.partition(":")
        if kind == "events" and field in TYPE_OF_FIELD:
            events[TYPE_OF_FIELD[field]] = _int(value) or 0
        elif kind == "nhit" and field in TYPE_OF_FIELD:
            nhit[TYPE_OF_FIELD[field]] = _int(value) or 0
    total = events.get("TOTAL", 0)
    duration = (stop - start) / 1e6 if start is not None and stop is not None else None
    header = None
    if "run_mask" in record:
        header = {f: _int(record.get(f)) for f in (
            "date", "time", "subfile", "calibration_trial", "source_mask", "run_mask",
            "crate_mask", "first_gtid", "valid_gtid")}
        header["received"] = (_int(record.get("header_time")) or 0) / 1e6
    run_mask = header["run_mask"] if header else None
    span = None
    if start is not None and stop is not None:
        span = stop // 1_000_000 - start // 1_000_000 + 1
    return {
        "run": number,
        "start": None if start is None else start / 1e6,
        "stop": None if stop is None else stop / 1e6,
        "duration": duration,
        "run_mask": run_mask,
        "run_type": run_type_names(run_mask) if run_mask is not None else None,
        "header": header,
        "events": events,
        "nhit_sums": nhit,
        "mean_nhit": (nhit.get("TOTAL", 0) / total) if total else None,
        "mean_rate": (total / duration) if total and duration else None,
        "seconds": span,
        "seconds_with_events": seconds_with_data if span is not None else None,
        "seconds_without_data": (span - seconds_with_data) if span is not None else None,
    }


class HistoryReads:
    """Reads of run history, run occupancy, clock jumps and per-type nhit histograms.
    `reads`: the site's store.reads.Reads (its batch reads)."""

    def __init__(self, redis, reads):
        self.redis = redis
        self.reads = reads

    @defer.inlineCallbacks
    def runs(self, limit=100, start=None, stop=None, before=None):
        """Newest first. With start/stop (unix s): the runs overlapping the window; with
        before: runs that started before that run. {"runs": [...], "current": run}."""
        limit = max(1, min(int(limit), RUNS_PER_ANSWER))
        high = "+inf" if stop is None else repr(float(stop))
        if before is not None:
            score = yield self.redis.execute_command("ZSCORE", keys.RUNS, str(before))
            if score is None:
                return {"runs": [], "current": None}
            high = "(" + str(score)
        # runs overlapping a window: started before its end; some more are read, as runs
        # that ended before its start are dropped below
        extra = limit if start is not None else 0
        flat = yield self.redis.execute_command(
            "ZREVRANGEBYSCORE", keys.RUNS, high, "-inf", "LIMIT", 0, limit + extra)
        current = yield self.current_run()
        numbers = [int(n) for n in (flat or [])]
        records = yield self._read(numbers)
        out = []
        for number, (record, seconds) in zip(numbers, records):
            summary = run_summary(number, record, seconds)
            if start is not None and summary["stop"] is not None and summary["stop"] < start:
                continue
            out.append(summary)
            if len(out) >= limit:
                break
        return {"runs": out, "current": current}

    @defer.inlineCallbacks
    def _read(self, numbers):
        """[(record dict, seconds with events)] of each run (runs_read.lua)."""
        if not numbers:
            return []
        calls = []
        for i in range(0, len(numbers), 50):
            part = numbers[i:i + 50]
            calls.append(RUNS_READ(self.redis, [keys.run(n) for n in part],
                                   [str(RUN_HOURS_COUNTED)] +
                                   [keys.run_seconds_prefix(n) for n in part]))
        replies = yield gather(calls)
        out = []
        for reply in replies:
            for record, seconds in json.loads(reply):
                record = dict(zip(record[::2], record[1::2])) if isinstance(record, list) \
                    else {}
                out.append((record, int(seconds)))
        return out

    @defer.inlineCallbacks
    def run(self, number):
        """One run's summary, or None when minard has no record of it."""
        (record, seconds), = yield self._read([number])
        if not record:
            return None
        return run_summary(number, record, seconds)

    @defer.inlineCallbacks
    def run_occupancy_types(self, number):
        """The event types with a per-run occupancy for the run."""
        fields = [type_field(i) for i in range(len(EVENT_TYPES))]
        (exists,) = yield self.reads.batch([("EXISTS", [keys.run_occupancy(number, f)
                                                        for f in fields], ())])
        return [TYPE_OF_FIELD[f] for f, e in zip(fields, exists) if e and int(e)]

    @defer.inlineCallbacks
    def run_occupancy(self, number, type_name):
        """{"events", "hits": [N_CHANNELS], "values": [hits / events, None without hits],
        "partials"} of one event type in one run (the workers' partials added)."""
        blobs = yield self.redis.hgetall(keys.run_occupancy(number, FIELD_OF_TYPE[type_name]))
        hits = np.zeros(N_CHANNELS, dtype=np.int64)
        events, used, bad = 0, 0, 0
        for blob in dict(blobs or {}).values():
            try:
                h, e = decode_part(blob)
            except ValueError:
                bad += 1
                continue
            hits += h
            events += e
            used += 1
        values = [None if h == 0 or not events else float("%.7g" % (h / events))
                  for h in hits.tolist()]
        return {"events": events, "hits": hits.tolist(), "values": values,
                "partials": used, "unreadable_partials": bad}

    @defer.inlineCallbacks
    def clock_jumps(self, limit):
        """The newest clock jumps (their JSON), newest first."""
        (lists,) = yield self.reads.batch([("LRANGE", [keys.CLOCK_JUMP_LIST], ())])
        out = []
        for text in (lists[0] or [])[:limit]:
            try:
                jump = json.loads(text)
            except ValueError:
                continue
            if isinstance(jump, dict):
                out.append(jump)
        return out

    @defer.inlineCallbacks
    def current_run(self):
        """The newest run (by start), or None."""
        newest = yield self.redis.execute_command("ZREVRANGE", keys.RUNS, 0, 0)
        return int(newest[0]) if newest else None

    @defer.inlineCallbacks
    def nhit_hist(self, type_name, start, stop, now, max_buckets):
        """The exact nhit histogram of one event type (a trigger name, polling, NONE, or
        TOTAL: all events, the compat `ts:<H>:<b>:nhit:hist`) over [start, stop): the
        complete buckets of the finest hash interval that has at most max_buckets of
        them in the window and still keeps them, summed. {"nhit": [...], "events": [...],
        "interval", "start", "stop", "seconds"}."""
        from minard.store.analyses import nhit_type_ttl
        if type_name == "TOTAL":
            def key(H, b):
                return keys.nhit_hist(H, b)

            def ttl(H):
                return keys.hash_ttl(H)
        else:
            field = FIELD_OF_TYPE[type_name]

            def key(H, b):
                return keys.nhit_type(H, b, field)

            ttl = nhit_type_ttl
        interval = HASH_INTERVALS[-1]
        for H in HASH_INTERVALS:
            if math.ceil((stop - start) / H) <= max_buckets and start >= now - ttl(H):
                interval = H
                break
        first, last = -(-start // interval), stop // interval - 1  # complete buckets
        if last < first:  # a window shorter than a bucket: the one around it
            first = last = start // interval
        bs = list(range(first, last + 1))[-max_buckets:]
        (hashes,) = yield self.reads.batch([("HGETALL", [key(interval, b) for b in bs], ())])
        out = self.reads.sum_hists(hashes)
        out.update({"interval": interval, "start": bs[0] * interval,
                    "stop": (bs[-1] + 1) * interval, "seconds": len(bs) * interval})
        return out
