"""Per-channel data as packed arrays: occupancy, CMOS rate, base current (SPEC §4).

Per-channel data is read only by minard, so its layout is ours (SPEC §4); key names are
in store/keys.py. The Redis work per second does not grow with channels × workers ×
intervals as one hash field per channel did: each worker overwrites one blob per open
bucket, and one worker finalises a bucket with numpy.

Writing (`ChannelWriter`, one per worker and quantity)
  A worker sums what it sees into a running partial per open bucket of every hash
  interval (5 s, 60 s, 1 day) and, once a second, overwrites its own field of
  `minard:part:<name>:<H>:<b>` with it, together with its progress: the second up to
  which everything it received is in those partials. A retried write stores the same or
  a newer partial: idempotent by construction, so nothing is counted twice. Data that
  arrive for a bucket whose partial was already written and dropped from memory go into
  a new field (`<writer>#<k>`): fields add up, nothing is overwritten.

Finalising (`Finaliser`, data-driven)
  A bucket is finalised once every live writer's progress has passed its last second,
  whatever the wall clock says: after an outage, the backlog drains first, then every
  bucket is finalised from all its data. A writer that stopped writing (killed) is
  dropped from `minard:writers:<name>` once it is WRITER_TIMEOUT s silent and the others
  are WRITER_LAG s of data ahead (the bounded deadline); a finaliser that has just come
  through an outage (a stalled Redis ages every stamp at once) drops nobody for
  WRITER_TIMEOUT s, so every live writer can write again first. A worker claims a bucket
  (`SET NX PX`), reads its parts, sums them with numpy and stores the finalised blob in a
  script that first checks the parts' version: a part written meanwhile (a late worker)
  leaves the bucket open, and it is finalised again from all its parts.

Byte formats (little-endian, fixed):
  part   `PART_HEADER` (magic b"MCP1", mode u4: 0 ratio / 1 mean, events f8), then the
         numerators f8[N_CHANNELS] (hits, or sums of rates / currents), then for "mean"
         the sample counts u4[N_CHANNELS].
  final  `FINAL_HEADER` (magic b"MCF1", channels u4, denominator f8: events, or samples
         in all), then float32: values[N_CHANNELS], card avg[320], card max[320], crate
         avg[20], crate max[20]; NaN is "no data". 43,696 bytes. Values are
         hits / events ("ratio": channels with hits) or sum / samples ("mean": channels
         with samples); the roll-ups are over the card's or crate's channels with a value.
         float32 keeps 7 significant digits (the routes answer at least 6).
"""
import time
import warnings

import numpy as np
from twisted.internet import defer
from twisted.logger import Logger

from minard import constants as C
from minard.store import keys
from minard.store.scripts import LIVE_WRITERS, Script

MODES = {"occupancy": "ratio", "cmos": "mean", "base": "mean"}
NAMES = tuple(MODES)
MODE_CODE = {"ratio": 0, "mean": 1}

N = C.N_CHANNELS
N_CARDS_ALL = C.N_CRATES * C.N_CARDS  # 320
CHANNELS_PER_CRATE = C.N_CARDS * C.N_CHANNELS_PER_CARD  # 512

PART_MAGIC = b"MCP1"
FINAL_MAGIC = b"MCF1"
PART_HEADER = np.dtype([("magic", "S4"), ("mode", "<u4"), ("events", "<f8")])
FINAL_HEADER = np.dtype([("magic", "S4"), ("channels", "<u4"), ("denominator", "<f8")])
VALUE = np.dtype("<f4")
#: Where each section of a finalised blob starts (bytes).
OFFSETS = {}
_at = FINAL_HEADER.itemsize
for _section, _n in (("values", N), ("card:avg", N_CARDS_ALL), ("card:max", N_CARDS_ALL),
                     ("crate:avg", C.N_CRATES), ("crate:max", C.N_CRATES)):
    OFFSETS[_section] = _at
    _at += _n * VALUE.itemsize
FINAL_SIZE = _at  # 43,696

#: A writer silent this long (s of Redis time) and ...
WRITER_TIMEOUT = 30
#: ... this far (s of data) behind the most advanced writer is gone.
WRITER_LAG = 60
#: A finaliser that has not reached Redis for this long (s) has been through an outage
#: (Redis stalled, or its network): see Finaliser.claim_timeout.
OUTAGE_GAP = 5.0
#: A finaliser's claim on a bucket lapses after this (ms) if it died meanwhile.
CLAIM_MS = 10000
#: Buckets claimed per finaliser round (bounds one script's reply).
CLAIM_BATCH = 1
#: Partials written per parts_write.lua call (~80-120 KB each; a call stays ~1 ms).
PARTS_PER_CALL = 4
#: Buckets read per channel_series.lua call (one call holds Redis ~1 ms; all go out at once).
SERIES_CHUNK = 1000
#: A writer holds at most this many buckets of the finest interval that Redis has not
#: taken (Redis away: 180 × 5 s = 15 minutes); older ones are dropped and counted.
MAX_OPEN_PARTIALS = 180

PARTS_WRITE = Script("parts_write.lua")
FINALISE_CLAIM = Script("finalise_claim.lua", live_writers=LIVE_WRITERS)
FINALISE_WRITE = Script("finalise_write.lua")
CHANNEL_SERIES = Script("channel_series.lua")
CHANNEL_LATEST = Script("channel_latest.lua")


def as_bytes(reply):
    """A bulk reply as bytes (txredisapi hands back valid UTF-8 as str)."""
    if isinstance(reply, str):
        return reply.encode("utf-8")
    return bytes(reply or b"")


def part_ttl(interval):
    return interval + C.RAW_HASH_TTL_EXTRA


def final_ttl(interval):
    return keys.hash_ttl(interval)


# -- formats ------------------------------------------------------------------------------

def encode_part(mode, num, den):
    """A partial as bytes. ratio: den = events (a number); mean: den = samples per channel."""
    header = np.zeros(1, PART_HEADER)
    header["magic"] = PART_MAGIC
    header["mode"] = MODE_CODE[mode]
    out = [header.tobytes(), np.asarray(num, "<f8").tobytes()]
    if mode == "ratio":
        header["events"] = den
        out[0] = header.tobytes()
    else:
        header["events"] = 0
        out.append(np.asarray(den, "<u4").tobytes())
    return b"".join(out)


def decode_part(blob, mode):
    """(num f8[N], den) of a part; ValueError when it is not a part of this mode."""
    blob = as_bytes(blob)
    h = PART_HEADER.itemsize
    size = h + 8 * N + (4 * N if mode == "mean" else 0)
    if len(blob) != size or blob[:4] != PART_MAGIC:
        raise ValueError("not a %s part (%d bytes)" % (mode, len(blob)))
    header = np.frombuffer(blob, PART_HEADER, count=1)[0]
    if header["mode"] != MODE_CODE[mode]:
        raise ValueError("part of another mode")
    num = np.frombuffer(blob, "<f8", count=N, offset=h)
    if mode == "ratio":
        return num, float(header["events"])
    return num, np.frombuffer(blob, "<u4", count=N, offset=h + 8 * N)


def finalise_values(num, den, mode):
    """values f8[N] (NaN = no data) and the denominator kept in the header."""
    num = np.asarray(num, dtype=np.float64)
    values = np.full(N, np.nan)
    if mode == "ratio":
        events = float(den)
        if events > 0:
            present = num > 0
            values[present] = num[present] / events
        return values, events
    den = np.asarray(den, dtype=np.float64)
    present = den > 0
    values[present] = num[present] / den[present]
    return values, float(den.sum())


def rollups(values):
    """{section: float64 array} of the card and crate averages and maxima over the
    channels with a value (NaN where a card or crate has none)."""
    out = {}
    for level, shape in (("card", (N_CARDS_ALL, C.N_CHANNELS_PER_CARD)),
                         ("crate", (C.N_CRATES, CHANNELS_PER_CRATE))):
        v = values.reshape(shape)
        present = ~np.isnan(v)
        n = present.sum(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[level + ":avg"] = np.where(n > 0, np.where(present, v, 0.0).sum(axis=1)
                                           / np.maximum(n, 1), np.nan)
            out[level + ":max"] = np.where(n > 0, np.where(present, v, -np.inf).max(axis=1),
                                           np.nan)
    return out


def encode_final(values, denominator):
    header = np.zeros(1, FINAL_HEADER)
    header["magic"] = FINAL_MAGIC
    header["channels"] = N
    header["denominator"] = denominator
    r = rollups(values)
    return b"".join([header.tobytes(), values.astype(VALUE).tobytes()]
                    + [r[s].astype(VALUE).tobytes()
                       for s in ("card:avg", "card:max", "crate:avg", "crate:max")])


def decode_final(blob):
    """{"values", "card:avg", "card:max", "crate:avg", "crate:max": float64 arrays (NaN =
    no data), "denominator": float}; ValueError if the blob is not a finalised bucket."""
    blob = as_bytes(blob)
    if len(blob) != FINAL_SIZE or blob[:4] != FINAL_MAGIC:
        raise ValueError("not a finalised bucket (%d bytes)" % len(blob))
    out = {"denominator": float(np.frombuffer(blob, FINAL_HEADER, count=1)[0]["denominator"])}
    for section, n in (("values", N), ("card:avg", N_CARDS_ALL), ("card:max", N_CARDS_ALL),
                       ("crate:avg", C.N_CRATES), ("crate:max", C.N_CRATES)):
        out[section] = np.frombuffer(blob, VALUE, count=n, offset=OFFSETS[section]).astype(
            np.float64)
    return out


def to_json_values(values):
    """float32-stored values as JSON numbers of 7 significant digits (None for NaN), so a
    value reads 0.0034, not 0.003400000045."""
    out = []
    for x in np.asarray(values, dtype=np.float64).tolist():
        out.append(None if x != x else float("%.7g" % x))
    return out


def series_offset(crate, card=None, channel=None, method="avg"):
    """(byte offset, length) of one channel's value, or a card's or crate's roll-up."""
    if channel is not None:
        return OFFSETS["values"] + 4 * C.channel_index(crate, card, channel), 4
    if card is not None:
        return OFFSETS["card:" + method] + 4 * (crate * C.N_CARDS + card), 4
    return OFFSETS["crate:" + method] + 4 * crate, 4


# -- writing ------------------------------------------------------------------------------

class _Partial:
    """A writer's running partial of one bucket."""

    __slots__ = ("field", "num", "den", "dirty")

    def __init__(self, field, mode):
        self.field = field
        self.num = np.zeros(N)
        self.den = 0.0 if mode == "ratio" else np.zeros(N, dtype=np.int64)
        self.dirty = False


class ChannelWriter:
    """One worker's partials of one quantity (pure: `collect` makes the script arguments,
    `written` is told what Redis took). `mode` is "ratio" (occupancy: hits / events) or
    "mean" (CMOS rate, base current: sum / samples)."""

    def __init__(self, name, writer, intervals=C.HASH_INTERVALS, max_open=MAX_OPEN_PARTIALS):
        self.name = name
        self.max_open = max_open
        self.dropped = 0      # samples (mean) or events (ratio) of partials dropped
        self.mode = MODES[name]
        self.writer = writer
        self.intervals = tuple(sorted(intervals))
        self.finest = self.intervals[0]
        if any(i % self.finest for i in self.intervals):
            raise ValueError("every hash interval must be a multiple of the finest")
        self.delta = {}       # finest bucket -> [num, den]: added since the last collect
        self.partials = {}    # (H, b) -> _Partial
        self.generation = {}  # (H, b) -> fields used so far (a dropped partial's successor)
        self.progress = None  # every second <= progress has been added

    def _delta(self, second):
        b = int(second) // self.finest
        d = self.delta.get(b)
        if d is None:
            # ratio: dense [hits, events]; mean: [index arrays, value arrays], reduced with
            # one bincount per bucket in collect() (cheap per record, exact for repeats)
            d = self.delta[b] = [np.zeros(N), 0.0] if self.mode == "ratio" else [[], []]
        return d

    def _bound(self):
        """Hold at most max_open finest buckets, added (delta) or collected (partials)
        together: while Redis does not answer, a write stays in flight and `collect` is
        not called, so the bound must hold where data are added too. The oldest go,
        counted."""
        held = set(self.delta) | {b for (H, b) in self.partials if H == self.finest}
        for b in sorted(held)[:max(0, len(held) - self.max_open)]:
            d = self.delta.pop(b, None)
            if d is not None:
                self.dropped += int(d[1]) if self.mode == "ratio" else sum(map(len, d[0]))
            p = self.partials.pop((self.finest, b), None)
            if p is not None:
                self.dropped += int(np.sum(p.den))

    def add_hits(self, second, hits, events):
        """Occupancy: dense hits per channel (length N) of `events` events in `second`."""
        held = len(self.delta)
        d = self._delta(second)
        d[0] += hits
        d[1] += events
        if len(self.delta) > held:
            self._bound()

    def add_samples(self, second, index, values):
        """CMOS / base: one sample per listed channel (index, values arrays)."""
        if not len(index):
            return
        held = len(self.delta)
        d = self._delta(second)
        d[0].append(np.asarray(index, dtype=np.int64))
        d[1].append(np.asarray(values, dtype=np.float64))
        if len(self.delta) > held:
            self._bound()

    def _reduced(self, d):
        if self.mode == "ratio":
            return d
        index = np.concatenate(d[0])
        return (np.bincount(index, weights=np.concatenate(d[1]), minlength=N)[:N],
                np.bincount(index, minlength=N)[:N])

    def advance(self, progress):
        """Everything up to second `progress` has been added."""
        if self.progress is None or progress > self.progress:
            self.progress = int(progress)

    def _partial(self, key):
        p = self.partials.get(key)
        if p is None:
            g = self.generation.get(key, 0)
            self.generation[key] = g + 1
            field = self.writer if g == 0 else "%s#%d" % (self.writer, g)
            p = self.partials[key] = _Partial(field, self.mode)
        return p

    def collect(self):
        """Fold what was added into the partials; the dirty ones as [(H, b, field, blob)]."""
        for fb, d in sorted(self.delta.items()):
            num, den = self._reduced(d)
            second = fb * self.finest
            for interval in self.intervals:
                p = self._partial((interval, second // interval))
                p.num += num
                p.den = p.den + den
                p.dirty = True
        self.delta = {}
        finest = sorted(k for k in self.partials if k[0] == self.finest)
        for key in finest[:max(0, len(finest) - self.max_open)]:
            p = self.partials.pop(key)
            self.dropped += int(np.sum(p.den))
        out = []
        for (interval, b), p in sorted(self.partials.items()):
            if p.dirty:
                out.append((interval, b, p.field, encode_part(self.mode, p.num, p.den)))
        return out

    def written(self, parts, progress):
        """Redis has `parts` (from collect, when progress was `progress`): those partials
        are clean; a clean partial whose bucket ended at or before `progress` leaves
        memory (data that still come for it start a new field)."""
        for interval, b, field, blob in parts:
            p = self.partials.get((interval, b))
            if p is not None and p.field == field:
                p.dirty = False
        if progress is None:
            return
        for key in [k for k, p in self.partials.items() if not p.dirty
                    and (k[1] + 1) * k[0] - 1 <= progress]:
            del self.partials[key]
        # forget generations of buckets long gone (their parts have expired)
        for key in [k for k in self.generation
                    if (k[1] + 1) * k[0] + part_ttl(k[0]) < progress]:
            del self.generation[key]

    def has_data(self):
        return bool(self.delta) or any(p.dirty for p in self.partials.values())


def write_args(writer_id, groups):
    """KEYS and ARGV of parts_write.lua. groups: [(name, progress or None, parts)]."""
    script_keys, args = [], [writer_id, str(len(groups))]
    for name, progress, parts in groups:
        script_keys += [keys.channel_writers(name), keys.channel_open(name)]
        args += ["" if progress is None else str(int(progress)), str(len(parts))]
        for interval, b, field, blob in parts:
            script_keys.append(keys.channel_part(name, interval, b))
            args += [field, blob, str(part_ttl(interval)), keys.bucket_member(interval, b),
                     str((b + 1) * interval - 1)]
    return script_keys, args


class ChannelStore:
    """A worker's writers (one per quantity) and their one round trip a second."""

    log = Logger()

    def __init__(self, redis, writer_id, names, stats=None, intervals=C.HASH_INTERVALS):
        self.redis = redis
        self.writer_id = writer_id
        self.writers = {name: ChannelWriter(name, writer_id, intervals) for name in names}
        self.stats = stats
        self.in_flight = None
        self.written_progress = {}

    def __getitem__(self, name):
        return self.writers[name]

    def add_name(self, name):
        if name not in self.writers:
            w = next(iter(self.writers.values()), None)
            self.writers[name] = ChannelWriter(
                name, self.writer_id, w.intervals if w else C.HASH_INTERVALS)
        return self.writers[name]

    def write(self):
        """Write every dirty partial and the progress of each quantity, in one script
        call; one call in flight at a time. Deferred firing with the names written, or
        None when a call is already in flight."""
        self._report_dropped()  # also while a write hangs (Redis away)
        if self.in_flight is not None or not self.unwritten():
            return None
        groups = []
        for name, w in self.writers.items():
            parts = w.collect()
            groups.append((name, w.progress, parts))
        self._report_dropped()
        d = self.in_flight = self._send(groups)

        def done(_):
            self.in_flight = None
            for name, progress, parts in groups:
                self.writers[name].written(parts, progress)
                self.written_progress[name] = progress
                if self.stats is not None and parts:
                    self.stats.incr("channel_parts_written", len(parts))
            return [name for name, _, _ in groups]

        def failed(f):
            self.in_flight = None
            return f

        d.addCallbacks(done, failed)
        return d

    def _send(self, groups):
        """At most PARTS_PER_CALL partials per script call (no call holds Redis long).
        When a backlog needs several calls, the progress goes in a last call, sent once
        every partial is in: progress never claims a partial that Redis has not taken."""
        flat = [(name, part) for name, _, parts in groups for part in parts]
        if len(flat) <= PARTS_PER_CALL:
            return PARTS_WRITE(self.redis, *write_args(self.writer_id, groups))
        calls = []
        for i in range(0, len(flat), PARTS_PER_CALL):
            chunk = {}
            for name, part in flat[i:i + PARTS_PER_CALL]:
                chunk.setdefault(name, []).append(part)
            calls.append(PARTS_WRITE(self.redis, *write_args(
                self.writer_id, [(name, None, parts) for name, parts in chunk.items()])))
        d = gather(calls)
        d.addCallback(lambda _: PARTS_WRITE(self.redis, *write_args(
            self.writer_id, [(name, progress, []) for name, progress, _ in groups])))
        return d

    def _report_dropped(self):
        for name, w in self.writers.items():
            if w.dropped:
                if self.stats is not None:
                    self.stats.incr("dropped_%s_%s" % (
                        name, "events" if w.mode == "ratio" else "samples"), w.dropped)
                self.log.error("Redis unreachable: the oldest {name} partials dropped "
                               "({n})", name=name, n=w.dropped)
                w.dropped = 0

    def unwritten(self):
        """Whether anything (a partial or a newer progress) is not in Redis yet."""
        return any(w.has_data() or w.progress != self.written_progress.get(name)
                   for name, w in self.writers.items())

    def leave(self):
        """A clean stop: this worker no longer holds up finalisation."""
        return defer.DeferredList([self.redis.hdel(keys.channel_writers(name), self.writer_id)
                                   for name in self.writers], consumeErrors=True)


# -- finalising ----------------------------------------------------------------------------

def combine(fields, mode):
    """Sum the parts of one bucket: fields {field: blob} -> (num, den, bad fields)."""
    num = np.zeros(N)
    den = 0.0 if mode == "ratio" else np.zeros(N, dtype=np.int64)
    bad = 0
    for field, blob in fields.items():
        try:
            n, d = decode_part(blob, mode)
        except ValueError:
            bad += 1
            continue
        num += n
        den = den + d
    return num, den, bad


class Finaliser:
    """Finalises the buckets of one quantity that every live writer has flushed past.
    Safe in every worker at once (claims); `finalise()` -> Deferred number finalised."""

    log = Logger()

    def __init__(self, redis, name, claimant, stats=None, writer_timeout=WRITER_TIMEOUT,
                 writer_lag=WRITER_LAG, outage_gap=OUTAGE_GAP, clock=time.monotonic):
        self.redis = redis
        self.name = name
        self.writer_timeout = writer_timeout
        self.writer_lag = writer_lag
        self.outage_gap = outage_gap
        self.clock = clock
        self.reached = None       # when a claim round trip last came back
        self.patient_until = 0.0
        self.mode = MODES[name]
        self.claimant = claimant
        self.stats = stats
        self.running = None

    def claim_timeout(self):
        """The writer timeout for the next claim. After an outage (no claim came back
        for outage_gap s), every writer's stamp is as old as the outage, and the first
        writer to write again is far ahead of the others, which are alive and write a
        moment later (a Redis stalled for longer than WRITER_LAG s): nobody is dropped
        until every live writer has had writer_timeout s to write again."""
        now = self.clock()
        if self.reached is not None and now - self.reached > self.outage_gap:
            self.patient_until = now + self.writer_timeout
        return self.writer_timeout if now >= self.patient_until else 10 ** 9

    def _count(self, what, n=1):
        if self.stats is not None and n:
            self.stats.incr(what, n)

    def finalise(self):
        if self.running is not None:
            return defer.succeed(0)
        d = self.running = self._round()

        def done(result):
            self.running = None
            return result

        d.addBoth(done)
        return d

    @defer.inlineCallbacks
    def _round(self):
        total = 0
        for _ in range(32):  # a backlog drains CLAIM_BATCH buckets per round trip
            reply = yield FINALISE_CLAIM(
                self.redis, [keys.channel_writers(self.name), keys.channel_open(self.name)],
                [self.claimant, str(self.claim_timeout()), str(self.writer_lag),
                 str(CLAIM_BATCH), str(CLAIM_MS), keys.channel_claim_prefix(self.name),
                 keys.channel_part_prefix(self.name)])
            self.reached = self.clock()
            reply = list(reply or [])
            if not reply:
                break
            for member, flat in zip(reply[::2], reply[1::2]):
                total += (yield self._finalise_one(member, list(flat or [])))
            if len(reply) // 2 < CLAIM_BATCH:
                break
        return total

    @defer.inlineCallbacks
    def _finalise_one(self, member, flat):
        interval, b = keys.parse_member(member)
        fields = dict(zip(flat[::2], flat[1::2]))
        version = fields.pop("~v", "")
        blob = ""
        if fields:
            num, den, bad = combine(fields, self.mode)
            if bad:
                self._count("corrupt_parts", bad)
                self.log.warn("{name} {member}: {bad} unreadable parts left out",
                              name=self.name, member=member, bad=bad)
            values, denominator = finalise_values(num, den, self.mode)
            blob = encode_final(values, denominator)
        done = yield FINALISE_WRITE(
            self.redis, [keys.channel_final(self.name, interval, b),
                         keys.channel_open(self.name), keys.channel_part(self.name, interval, b),
                         keys.channel_claim(self.name, member)],
            [blob, str(final_ttl(interval)), member, str(version), self.claimant])
        if int(done):
            self._count("finalised_" + self.name)
            return 1
        self._count("finalise_retries")
        return 0


def gather(deferreds):
    """gatherResults that fails with the first error itself (not FirstError), so callers
    see the Redis error they know how to answer (503)."""
    d = defer.gatherResults(deferreds, consumeErrors=True)
    d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError)
                 else f)
    return d


# -- reading -----------------------------------------------------------------------------

def value_of(raw):
    raw = as_bytes(raw)
    if len(raw) != 4:
        return None
    x = float(np.frombuffer(raw, VALUE)[0])
    return None if x != x else float("%.7g" % x)


@defer.inlineCallbacks
def read_series(redis, name, interval, buckets, offset, length):
    """Per bucket: the `length` bytes at `offset` of its finalised blob (b'' if none)."""
    all_keys = [keys.channel_final(name, interval, b) for b in buckets]
    replies = yield gather(
        [CHANNEL_SERIES(redis, all_keys[i:i + SERIES_CHUNK], [str(offset), str(length)])
         for i in range(0, len(all_keys), SERIES_CHUNK)])
    return [as_bytes(r) for reply in replies for r in (reply or [])]


@defer.inlineCallbacks
def value_series(redis, name, interval, buckets, crate, card=None, channel=None,
                 method="avg"):
    """A channel's value or a card's / crate's roll-up per bucket (None = no data)."""
    offset, length = series_offset(crate, card, channel, method)
    raws = yield read_series(redis, name, interval, buckets, offset, length)
    return [value_of(r) for r in raws]


@defer.inlineCallbacks
def latest(redis, name, interval, candidates):
    """(position in candidates, decoded blob) of the first finalised one, or (None, None)."""
    reply = yield CHANNEL_LATEST(redis, [keys.channel_final(name, interval, b)
                                         for b in candidates])
    reply = list(reply or [])
    if not reply or not int(reply[0]):
        return None, None
    try:
        return int(reply[0]) - 1, decode_final(reply[1])
    except ValueError:
        return None, None
