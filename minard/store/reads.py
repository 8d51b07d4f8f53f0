"""Every Redis read of the main web site (SPEC §4, §5.1).

One request = one round trip: the reads of a whole time series (900 points × a few
hashes) go to Redis as ONE read-only Lua script whose reply is a single JSON string, so
neither Redis nor the reactor pays per point (no Deferred, no reply parsing per command).

Semantics follow the original site (reference §3 "Read helpers", §4):
* a series at step s samples one bucket of interval I = largest INTERVALS <= s per point
  (`ts:<I>:<i // I>:<name>` for i in range(start, stop, step)); it does not sum buckets;
* per-channel series use H = largest HASH_INTERVALS <= s (5 if s < 5) and read the
  finalised buckets of the per-channel store (store/channels.py): 4 bytes (GETRANGE) of
  each bucket's packed array per point.
"""
import json
import math

import numpy as np

from twisted.internet import defer

from minard.constants import FECD_CHANNELS, NO_TRIGGER, POLLING
from minard.constants import (ALARMS_DEFAULT_BACK, ALARMS_PER_ANSWER, L2_MAX_FILES,
                              METRIC_CALLS_IN_FLIGHT, N_CHANNELS, NHIT_HIST_INTERVAL,
                              OWL_CHANNELS, STALE_LOOKBACK, TRIGGERS, TRIGGER_BIT)
from minard.errors import BadRequest
from minard.store import channels, keys
from minard.store.keys import hash_interval_for, interval_for
from minard.store.scripts import Script

BATCH_SCRIPT = Script("read_batch.lua")

ALARMS_SCRIPT = Script("read_alarms.lua")

#: Expressions whose value is the raw string (SPEC §5.1).
RAW_TRIG_FIELDS = ("gtid", "run", "subrun")
RAW_KEYS = ("heartbeat", "l2-heartbeat", "L2:gtid", "L2:run")
#: Rates the L2 client writes (counts per bucket, SPEC §4) beside its own heartbeat
#: `l2-heartbeat`: 0 in a bucket where it was alive and wrote no count, null where it was
#: not (before it existed, while it was down): unknown is not zero.
L2_RATE_KEYS = ("L1", "L2", "ORPHANS", "BURSTS")
L2_HEARTBEAT = "l2-heartbeat"
#: The read name of dispatch-push's per-bucket link mark (keys.link_up); "~" is not in
#: EXPR_ALPHABET, so no expression can ask for it by name.
LINK = "~link"
MEAN_KINDS = {"nhit": "trig:nhit", "charge": "trig:charge"}
EXPR_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:.+-/")
#: Event types counted beside the trigger bits (SPEC §3), fields of the trig hashes.
EXTRA_TYPES = (POLLING, NO_TRIGGER)
#: Counts the pull workers write as plain keys, and FEC/D channels (`FECD/<x>`): rates,
#: 0 where the pull workers were counting and none came, null where nobody was.
PULL_COUNT_KEYS = ("DISPATCH_ORPHANS", "CLOCK_JUMPS")
FECD_FIELDS = tuple(name for name, _ in FECD_CHANNELS)
HASH_NAMES = ("occupancy", "cmos", "base")
#: What one HGETALL or LRANGE counts for against READ_CHUNK (an hour of nhit histograms
#: was one 0.2 s script: now ~20 keys a call).
WHOLE_READ_WEIGHT = 50
#: /query?name=occupancy|cmos|base looks this far back (s) for a finalised bucket.
LATEST_LOOKBACK = 180
#: Reads (keys × fields) per script call at most: ~1-2 µs each inside Redis, so one call
#: holds Redis about a millisecond (bench/bench_store_scripts.py).
READ_CHUNK = 1000
METHODS = ("avg", "max")


def _list(value):
    """cjson encodes an empty Lua table as {}: make it the empty list it is."""
    return value if isinstance(value, list) else []


def _str(value):
    return value if isinstance(value, str) else None


def _number(value):
    """A stored number (str) -> float, None when missing or not a number."""
    if not isinstance(value, str):
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def finite_number(text):
    """Any stored value (str, bytes, number) as a finite float, None when it is not one."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _pairs(flat):
    flat = _list(flat)
    return dict(zip(flat[::2], flat[1::2]))


def field_of(trigger):
    """The trig-hash field of a trigger name, polling, NONE or TOTAL."""
    if trigger == "TOTAL" or trigger in EXTRA_TYPES:
        return trigger
    return str(TRIGGER_BIT[trigger])


class Expression:
    """One /metric expression: what it reads and how a point's value is made."""

    def __init__(self, text):
        if not text or len(text) > 64 or not set(text) <= EXPR_ALPHABET:
            raise BadRequest("bad expression %r" % (text,))
        self.text = text
        self.reads = []  # (op, name, field or None)
        if text in TRIGGER_BIT or text == "TOTAL" or text in EXTRA_TYPES:
            # a bucket with a pull-worker heartbeat and the dispatcher link up but no
            # count had no such events (0); without either nobody was counting, or
            # nothing could arrive: unknown, not zero (SPEC §5.1)
            self.kind = "counted"
            self.reads = [("HMGET", "trig", field_of(text)), ("HMGET", "trig", "TOTAL"),
                          ("GET", "heartbeat", None), ("GET", LINK, None)]
        elif text.startswith("FECD/") or text in PULL_COUNT_KEYS:
            # counted like the trigger rates: 0 only where the pull workers counted
            if text in PULL_COUNT_KEYS:
                first = ("GET", text, None)
            elif text[5:] in FECD_FIELDS:
                first = ("HMGET", "trig:fecd", text[5:])
            else:
                raise BadRequest("unknown FEC/D channel %r in %r (%s)"
                                 % (text[5:], text, ", ".join(FECD_FIELDS)))
            self.kind = "counted"
            self.reads = [first, ("HMGET", "trig", "TOTAL"), ("GET", "heartbeat", None),
                          ("GET", LINK, None)]
        elif text in L2_RATE_KEYS:
            self.kind = "l2counted"
            self.reads = [("GET", text, None), ("GET", L2_HEARTBEAT, None)]
        elif text in RAW_TRIG_FIELDS:
            self.kind = "raw"
            self.reads = [("HMGET", "trig", text)]
        elif text in RAW_KEYS:
            self.kind = "raw"
            self.reads = [("GET", text, None)]
        elif "-" in text:
            trigger, _, what = text.partition("-")
            if "-" in what:
                raise BadRequest("bad expression %r: more than one '-'" % (text,))
            if trigger not in TRIGGER_BIT and trigger != "TOTAL" and trigger not in EXTRA_TYPES:
                raise BadRequest("unknown trigger %r in %r" % (trigger, text))
            if what in MEAN_KINDS:
                self.kind = "mean"
                self.reads = [("HMGET", MEAN_KINDS[what], field_of(trigger)),
                              ("HMGET", "trig", field_of(trigger))]
            elif what == "Baseline":
                self.kind = "mean"
                self.reads = [("GET", text, None), ("GET", "baseline-count", None)]
            else:
                raise BadRequest("unknown quantity %r in %r (nhit, charge or Baseline)"
                                 % (what, text))
        else:
            self.kind = "rate"
            self.reads = [("GET", text, None)]

    def values(self, columns, interval, buckets=None, link_since=None):
        """The values of a run of points; columns: what each of self.reads read, one list
        (per point) per read; buckets: the points' bucket numbers; link_since: the first
        second dispatch-push marked its link (keys.LINK_SINCE), None if it never did.

        Kinds: raw (the stored string), rate (count / I, null when missing), counted
        (trigger rates and TOTAL: count / I; with no count, 0 where the pull workers'
        heartbeat and — from link_since on — the dispatcher link's mark say events would
        have been counted, else null), l2counted (L1, L2, ORPHANS, BURSTS: count / I; 0
        where the L2 client's heartbeat is, else null), mean (sum / count, null without
        events)."""
        if self.kind == "raw":
            return [_str(v) for v in columns[0]]
        if self.kind == "rate":
            return [None if x is None else x / interval for x in map(_number, columns[0])]
        if self.kind == "l2counted":
            return [x / interval if x is not None else (0.0 if beat is not None else None)
                    for x, beat in zip(map(_number, columns[0]), columns[1])]
        if self.kind == "counted":
            if buckets is None or link_since is None:
                needs_link = [False] * len(columns[0])
            else:  # buckets that end before dispatch-push marked anything: heartbeat only
                needs_link = [(b + 1) * interval > link_since for b in buckets]
            return [x / interval if x is not None else
                    (0.0 if total is not None or (beat is not None and
                                                  (link is not None or not needed))
                     else None)
                    for x, total, beat, link, needed in zip(
                        map(_number, columns[0]), columns[1], columns[2], columns[3],
                        needs_link)]
        return [None if num is None or not den else num / den
                for num, den in zip(map(_number, columns[0]), map(_number, columns[1]))]


def bucket_key(interval, b, name):
    """The key a /metric read `name` of bucket b of interval I reads: `ts:<I>:<b>:<name>`,
    or dispatch-push's link mark for LINK."""
    if name == LINK:
        return keys.link_up(interval, b)
    return keys.ts(interval, b, name)


def parse_expressions(text):
    if text is None or not text.strip():
        raise BadRequest("missing expr")
    from minard.constants import MAX_EXPRESSIONS
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > MAX_EXPRESSIONS:
        raise BadRequest("too many expressions (at most %d)" % MAX_EXPRESSIONS)
    return [Expression(p) for p in parts]


class Reads:
    """The site's reads, each one round trip. `redis` is a txredisapi connection."""

    def __init__(self, redis):
        self.redis = redis

    # -- the one-round-trip primitives ------------------------------------------------------

    def batch(self, groups):
        """groups: [(op, keys, args)] -> Deferred [per group: [per key: reply]].

        Missing values are None; an empty hash or list is []. The reads go out as one
        script call per READ_CHUNK reads (a key × its fields), all at once: one round trip,
        and no call holds Redis for long (a 10,000-point series is ~10 calls)."""
        if not any(group_keys for _, group_keys, _ in groups):
            return defer.succeed([[] for _ in groups])
        calls, current, weight = [], [], 0
        for g, (op, group_keys, args) in enumerate(groups):
            # a whole hash or list (an nhit histogram: hundreds of fields) weighs more
            per_key = WHOLE_READ_WEIGHT if op in ("HGETALL", "LRANGE") else max(1, len(args))
            step = max(1, READ_CHUNK // per_key)
            for first in range(0, len(group_keys), step):
                piece = group_keys[first:first + step]
                if current and weight + per_key * len(piece) > READ_CHUNK:
                    calls.append(current)
                    current, weight = [], 0
                current.append((g, (op, piece, args)))
                weight += per_key * len(piece)
        if current:
            calls.append(current)
        ds = []
        for call in calls:
            spec, all_keys = [], []
            for g, (op, piece, args) in call:
                spec.append([op, len(piece), [str(a) for a in args]])
                all_keys.extend(piece)
            d = BATCH_SCRIPT(self.redis, all_keys, [json.dumps(spec)])
            d.addCallback(self._decode_batch, [group for _, group in call])
            ds.append(d)
        d = channels.gather(ds)

        def merge(results):
            out = [[] for _ in groups]
            for call, result in zip(calls, results):
                for (g, _), values in zip(call, result):
                    out[g].extend(values)
            return out

        d.addCallback(merge)
        return d

    @staticmethod
    def _decode_batch(reply, groups):
        out = []
        decoded = _list(json.loads(reply))
        for (op, group_keys, args), result in zip(groups, decoded):
            result = _list(result)
            values = []
            for v in result:
                if v is False:
                    v = None
                elif op == "HMGET":
                    v = [None if x is False else x for x in _list(v)]
                elif op in ("HGETALL", "LRANGE"):
                    v = _list(v)
                values.append(v)
            values.extend([None] * (len(group_keys) - len(values)))
            out.append(values)
        out.extend([[] for _ in range(len(groups) - len(out))])
        return out

    def _eval_json(self, script, script_keys, args=()):
        d = script(self.redis, script_keys, args)
        d.addCallback(json.loads)
        return d

    # -- time series -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def metric(self, expressions, start, stop, step, in_flight=METRIC_CALLS_IN_FLIGHT):
        """{expr text: [value per point]} for range(start, stop, step).

        The points are read a slice at a time, each slice one script call of at most
        READ_CHUNK reads, with at most `in_flight` calls waiting in Redis: a command of
        another request sent meanwhile waits behind a couple of milliseconds of this one,
        not behind all of it. Each slice's values are made as it arrives, so the reactor
        is not held long either."""
        interval = interval_for(step)
        buckets = [i // interval for i in range(start, stop, step)]
        link_since = None
        if any(e.kind == "counted" for e in expressions):
            link_since = _number((yield self.redis.get(keys.LINK_SINCE)))
        hash_fields, plain = {}, []
        for e in expressions:
            for op, name, field in e.reads:
                if op == "HMGET":
                    fields = hash_fields.setdefault(name, [])
                    if field not in fields:
                        fields.append(field)
                elif name not in plain:
                    plain.append(name)
        # (op, key suffix, fields) per group; a point costs `weight` reads
        shapes, where = [], {}
        for name, fields in hash_fields.items():
            for j, field in enumerate(fields):
                where[("HMGET", name, field)] = (len(shapes), j)
            shapes.append(("HMGET", name, fields))
        for name in plain:
            where[("GET", name, None)] = (len(shapes), None)
            shapes.append(("GET", name, ()))
        weight = sum(max(1, len(fields)) for _, _, fields in shapes)
        per_call = max(1, READ_CHUNK // weight)
        series = {e.text: [] for e in expressions}

        def read(first):
            part = buckets[first:first + per_call]
            return self.batch([(op, [bucket_key(interval, b, name) for b in part], fields)
                               for op, name, fields in shapes])

        def compute(results, first):
            part = buckets[first:first + per_call]
            columns = {}
            for source, (g, j) in where.items():
                replies = results[g]
                columns[source] = replies if j is None else \
                    [None if v is None else v[j] for v in replies]
            for e in expressions:
                series[e.text].extend(e.values([columns[r] for r in e.reads], interval,
                                               part, link_since))

        pending = []
        try:
            for first in range(0, len(buckets), per_call):
                pending.append((first, read(first)))
                if len(pending) >= in_flight:
                    at, d = pending.pop(0)
                    compute((yield d), at)
            while pending:
                at, d = pending.pop(0)
                compute((yield d), at)
        except BaseException:
            for _, d in pending:  # failed or cancelled: the calls still out end unobserved
                d.addErrback(lambda _: None)
            raise
        return series

    @defer.inlineCallbacks
    def _point_reads(self, name, start, stop, step, now, offset, length):
        """Per point, the bytes at offset of the bucket keys.kept_hash_buckets chooses
        (b'' where it is not finalised): one read per interval used."""
        now = stop if now is None else now
        points = keys.kept_hash_buckets(start, stop, step, now)
        out = [b""] * len(points)
        for interval in sorted({h for h, _ in points}):
            where = [p for p, (h, _) in enumerate(points) if h == interval]
            raws = yield channels.read_series(self.redis, name, interval,
                                              [points[p][1] for p in where], offset, length)
            for p, raw in zip(where, raws):
                out[p] = raw
        return out

    @defer.inlineCallbacks
    def hash_series(self, name, start, stop, step, crate, card=None, channel=None,
                    method="avg", now=None):
        """Per point: a channel's value, or a card's / crate's avg or max (floats or None);
        older points from coarser buckets where the finer ones have expired."""
        offset, length = channels.series_offset(crate, card, channel, method)
        raws = yield self._point_reads(name, start, stop, step, now, offset, length)
        return [channels.value_of(raw) for raw in raws]

    @defer.inlineCallbacks
    def owl_series(self, name, start, stop, step, method="avg", now=None):
        """Per point: NaN-aware mean (avg) or max over the 48 OWL channels (crates 3, 13,
        18; card 15; channels 16-31: one contiguous range of 16 values per crate)."""
        per_crate = []
        for crate in sorted({i >> 9 for i in OWL_CHANNELS}):
            first = [i for i in OWL_CHANNELS if i >> 9 == crate]
            offset, _ = channels.series_offset(crate, 15, min(first) & 31)
            raws = yield self._point_reads(name, start, stop, step, now, offset,
                                           4 * len(first))
            per_crate.append(raws)
        buckets = per_crate[0]
        out = []
        for p in range(len(buckets)):
            xs = []
            for raws in per_crate:
                raw = raws[p] if p < len(raws) else b""
                if raw:
                    v = np.frombuffer(raw[:len(raw) // 4 * 4], channels.VALUE)
                    xs.extend(float(x) for x in v if x == x)
            if not xs:
                out.append(None)
            elif method == "max":
                out.append(float("%.7g" % max(xs)))
            else:
                out.append(float("%.7g" % (sum(xs) / len(xs))))
        return out

    # -- latest values -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def latest_channels(self, name, step, now):
        """The newest finalised bucket of `name` at interval H(step): (H, bucket, values).

        A bucket is finalised a few seconds after it ends (once every worker has flushed
        past it), so the newest complete bucket (now // H − 1) may not be finalised yet:
        then the newest finalised one of the last LATEST_LOOKBACK seconds is used. values is a list of N_CHANNELS floats or None;
        bucket is None when neither exists.
        """
        interval = hash_interval_for(step)
        newest = int(now) // interval - 1
        # normally the newest or the one before; after an outage or a killed worker
        # (finalisation waits for it up to ~a minute) an older one, with its time
        back = max(2, LATEST_LOOKBACK // interval + 1)
        candidates = [newest - k for k in range(back)]
        position, blob = yield channels.latest(self.redis, name, interval, candidates)
        if position is None:
            return interval, None, [None] * N_CHANNELS
        return interval, candidates[position], channels.to_json_values(blob["values"])

    @defer.inlineCallbacks
    def open_channels(self, name, interval, now):
        """The bucket of `name` at `interval` still being filled: today's for the 1-day
        window (or the one before, when it has ended but is not finalised yet), summed
        from the workers' partials as finalisation would (store/channels.py).

        (bucket, values, denominator): values a list of N_CHANNELS floats or None,
        denominator the events (occupancy) or samples (cmos, base) behind them; bucket
        None when no partial holds anything. For the pages' "no finalised bucket yet"."""
        mode = channels.MODES[name]
        for b in (int(now) // interval, int(now) // interval - 1):
            fields = yield self.redis.hgetall(keys.channel_part(name, interval, b))
            fields = dict(fields or {})
            fields.pop("~v", None)
            if not fields:
                continue
            num, den, _bad = channels.combine(fields, mode)
            values, denominator = channels.finalise_values(num, den, mode)
            if denominator > 0:
                return b, channels.to_json_values(values), denominator
        return None, [None] * N_CHANNELS, 0.0

    @defer.inlineCallbacks
    def nhit_samples(self, seconds, now):
        """The sampled nhit values of the last `seconds` seconds (compat lists)."""
        now = int(now)
        (lists,) = yield self.batch([("LRANGE", [keys.nhit_samples(now - i)
                                                 for i in range(seconds)], ())])
        out = []
        for values in lists:
            for v in values or ():
                x = _number(v)
                if x is not None:
                    out.append(int(x))
        return out

    def nhit_hist_keys(self, seconds, now):
        """(interval, first second, stop second, keys) of the complete buckets covering
        the last `seconds` seconds."""
        interval = NHIT_HIST_INTERVAL if seconds <= 600 else 60
        n = max(1, math.ceil(seconds / interval))
        last = int(now) // interval - 1
        bs = list(range(last - n + 1, last + 1))
        return interval, bs[0] * interval, (last + 1) * interval, [
            keys.nhit_hist(interval, b) for b in bs]

    @staticmethod
    def sum_hists(hashes):
        total = {}
        for flat in hashes:
            for field, v in _pairs(flat).items():
                try:
                    nhit, events = int(field), int(float(v))
                except ValueError:
                    continue
                total[nhit] = total.get(nhit, 0) + events
        nhits = sorted(total)
        return {"nhit": nhits, "events": [total[n] for n in nhits]}

    @defer.inlineCallbacks
    def nhit_hist(self, seconds, now):
        """The exact nhit histogram of the last complete buckets covering `seconds`."""
        interval, first, stop, hist_keys = self.nhit_hist_keys(seconds, now)
        (hashes,) = yield self.batch([("HGETALL", hist_keys, ())])
        out = self.sum_hists(hashes)
        out.update({"seconds": stop - first, "start": first, "stop": stop,
                    "interval": interval})
        return out

    def dispatcher(self):
        return self.redis.get(keys.DISPATCHER)

    @defer.inlineCallbacks
    def status(self, name, now):
        """{"status": text or None, "uptime": seconds or None} of a DAQ program."""
        (values,) = yield self.batch([("GET", [keys.heartbeat(name), keys.uptime(name)], ())])
        status, since = values
        since = _number(since)
        uptime = None if since is None else max(0, int(now - since))
        return {"status": status, "uptime": uptime}

    @defer.inlineCallbacks
    def alarms(self, start=None, limit=ALARMS_PER_ANSWER, back=ALARMS_DEFAULT_BACK):
        """{"alarms": [...], "latest": id}: alarms start.. that still exist (at most limit).

        start None -> the last `back`; negative -> counts back from the newest."""
        reply = yield self._eval_json(
            ALARMS_SCRIPT, [keys.ALARMS_COUNT],
            [keys.ALARM_PREFIX, "" if start is None else str(start), str(back), str(limit)])
        count, latest, found = reply[0], reply[1], _list(reply[2])
        alarms = []
        for text in found:
            try:
                alarm = json.loads(text)
            except ValueError:
                continue  # a corrupt alarm is skipped, not a broken page
            if isinstance(alarm, dict):
                alarms.append(alarm)
        return {"alarms": alarms, "latest": int(latest) if count != -1 else -1}

    @defer.inlineCallbacks
    def l2_files(self, state):
        """{"files": [...], "times": [...]}: the newest members of l2:<state>, oldest first."""
        flat = yield self.redis.execute_command("ZRANGE", keys.l2_state(state),
                                                -L2_MAX_FILES, -1, "WITHSCORES")
        flat = flat or []
        return {"files": list(flat[::2]), "times": [_number(s) for s in flat[1::2]]}

    @defer.inlineCallbacks
    def nearline(self, run=None):
        """(run, {program: status}) — run None means nearline:current_run (None if unset)."""
        if run is None:
            run = yield self.redis.get(keys.NEARLINE_CURRENT_RUN)
            if run is None:
                return None, {}
        values = yield self.redis.hgetall(keys.nearline(run))
        return run, dict(values or {})

    @defer.inlineCallbacks
    def process_stats(self):
        """{process: {field: value}} of every minard:stats:* hash (SCAN, then one batch)."""
        found, cursor = [], "0"
        prefix = keys.stats("")
        for _ in range(1000):
            reply = yield self.redis.execute_command("SCAN", cursor, "MATCH", keys.STATS_PATTERN,
                                                     "COUNT", 1000)
            cursor, batch = reply[0], reply[1]
            found.extend(batch or [])
            if str(cursor) == "0":
                break
        found = sorted(set(found))
        (hashes,) = yield self.batch([("HGETALL", found, ())])
        return {k[len(prefix):]: _pairs(h) for k, h in zip(found, hashes)}

    def memory(self):
        """Redis's memory (INFO memory): {"used": bytes, "max": bytes or None (no limit),
        "ratio": used / max or None, "policy": maxmemory-policy}."""
        return redis_memory(self.redis)

    # -- /stream -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def stream_snapshot(self, second):
        """What the live pages draw for one complete second, plus what stale needs."""
        s = int(second)
        look = range(STALE_LOOKBACK)
        hist_interval = NHIT_HIST_INTERVAL
        last_hist = (s + 1) // hist_interval - 1
        groups = [
            ("HGETALL", [keys.trig(1, s), keys.ts(1, s, "trig:nhit"),
                         keys.ts(1, s, "trig:charge"), keys.trig(1, s - 1),
                         keys.ts(1, s - 1, "trig:nhit"), keys.ts(1, s - 1, "trig:charge")],
             ()),
            ("GET", [keys.DISPATCHER, keys.ALARMS_COUNT, keys.LINK_SINCE,
                     keys.link_up(1, s), keys.link_up(1, s - 1)], ()),
            ("HMGET", [keys.trig(1, s - k) for k in look], ["TOTAL"]),
            ("GET", [keys.pull_heartbeat(1, s - k) for k in look], ()),
            ("HGETALL", [keys.nhit_hist(hist_interval, last_hist - k) for k in (1, 0)], ()),
        ]
        trig, meta, totals, beats, hists = yield self.batch(groups)
        counts = _pairs(trig[0])
        link_since = _number(meta[2])
        # whether the dispatcher link was up in s (None: dispatch-push does not mark it)
        link = [None if link_since is None or second < link_since else mark is not None
                for second, mark in ((s, meta[3]), (s - 1, meta[4]))]
        current = self._second_values(s, trig[0:3], beats[0], link[0])
        # The second before, again: a worker whose flush was late (a loaded machine) is
        # in it now, so the pages can correct what they drew from the last message.
        previous = self._second_values(s - 1, trig[3:6], beats[1], link[1])
        last_events = next((s - k for k, v in zip(look, totals)
                            if v and (_number(v[0]) or 0) > 0), None)
        last_beat = next((s - k for k, v in zip(look, beats) if v is not None), None)
        hist = self.sum_hists(hists)
        hist.update({"seconds": 2 * hist_interval, "start": (last_hist - 1) * hist_interval,
                     "stop": (last_hist + 1) * hist_interval})
        alarm_count = _number(meta[1])
        out = {"time": s}
        out.update(current)
        out.update({
            "previous": previous,
            "run": counts.get("run"),
            "subrun": counts.get("subrun"),
            "gtid": counts.get("gtid"),
            "dispatcher": meta[0],
            "link_up": link[0],
            "last_events": last_events,
            "last_heartbeat": last_beat,
            "nhit_hist": hist,
            "alarm_count": None if alarm_count is None else int(alarm_count),
        })
        return out

    @staticmethod
    def _second_values(second, hashes, beat, link=None):
        """{"time", "present", "rates", "nhit", "charge"} of one 1-s bucket.

        A second with a pull-worker heartbeat and the dispatcher link up (link True, or
        None where dispatch-push does not mark its link) but no trig hash had no events:
        rate 0. Without them there are no data for it (null), which is not the same as
        zero."""
        counts, nhits, charges = (_pairs(h) for h in hashes)
        present = bool(counts) or (beat is not None and link is not False)
        rates = {}
        for name in ("TOTAL",) + TRIGGERS + EXTRA_TYPES:
            c = _number(counts.get(field_of(name)))
            rates[name] = (c or 0.0) if present else None
        means = {}
        for label, sums in (("nhit", nhits), ("charge", charges)):
            means[label] = {}
            for name in ("TOTAL", "PULGT"):
                n = _number(counts.get(field_of(name)))
                v = _number(sums.get(field_of(name)))
                means[label][name] = v / n if n and v is not None else None
        return {"time": second, "present": present, "rates": rates,
                "nhit": means["nhit"], "charge": means["charge"]}


def parse_info(text):
    """INFO's text -> {field: value string}."""
    out = {}
    for line in str(text or "").splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


@defer.inlineCallbacks
def redis_memory(redis):
    """{"used", "max", "ratio", "policy"} of the Redis behind `redis` (INFO memory)."""
    info = parse_info((yield redis.execute_command("INFO", "memory")))
    used = _number(info.get("used_memory"))
    limit = _number(info.get("maxmemory"))
    limit = limit if limit else None
    return {"used": used, "max": limit,
            "ratio": (used / limit) if used is not None and limit else None,
            "policy": info.get("maxmemory_policy")}
