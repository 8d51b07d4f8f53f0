"""One-shot, idempotent migration of per-channel data from the old layout (one Redis hash
field per channel, under `ts:`) to the packed arrays of store/channels.py.

The old layout, for name in occupancy / cmos / base, interval H in HASH_INTERVALS, bucket b:
  finalised  `ts:H:b:<name>` (hash channel -> value), its roll-ups `…:card:avg|max` and
             `…:crate:avg|max`, and `…:lock`; TTL H × HASH_EXPIRE.
  raw (open) `ts:H:b:occupancy:hits` (hash channel -> hits) and `…:occupancy:count` (events);
             `ts:H:b:<name>:sum` / `…:len` (hash channel -> sum / samples); TTL H + 300.

What becomes of them:
  * a finalised bucket -> `minard:chan:<name>:<H>:<b>` (channels.encode_final: the values,
    NaN where the hash has no field; the roll-ups recomputed, equal to the old ones), only
    if that key does not exist yet, with the old hash's remaining TTL; then the old hash,
    its roll-ups, its lock and any raw keys left of it are deleted.
  * an open bucket (raw keys, no lock) -> the field "migrated" of its parts hash
    `minard:part:<name>:<H>:<b>` (added to a "migrated" field already there), `~v` bumped,
    and the bucket in `minard:open:<name>`: the finaliser finalises it together with the
    new workers' parts once their progress passes its end. One WATCH / MULTI / EXEC per
    bucket: the part is written and the raw keys deleted in one step, and a write to the
    raw keys meanwhile (an old worker still running) makes it start again, so nothing is
    counted twice or lost; a new worker's field of the parts hash is never touched.

Keys are found with SCAN (MATCH, COUNT 500) and parsed strictly: any other key under `ts:`
(trig, nhit:hist, heartbeat, baseline-count, L1, L2 ...) is left alone. Every command is
short: hashes are read with HSCAN, 1000 fields a step, and freed with UNLINK, one key a
command; no script. A value that is not a number is left out and counted, never fatal.

`minard-migrate-store [--redis URL]` runs it by hand; the `web` role runs it once at start.
"""
import argparse
import re
import sys

import numpy as np
import txredisapi
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger

from minard import constants as C
from minard.store import channels, keys
from minard.store.connection import connect, parse_redis_url
from minard.store.reads import finite_number

PATTERNS = tuple("ts:*:%s*" % name for name in channels.NAMES)
SCAN_COUNT = 500
#: Fields per HSCAN: a hash of 10,240 fields is read in ~10 short commands.
HSCAN_COUNT = 1000
ROLLUPS = (("card", "avg"), ("card", "max"), ("crate", "avg"), ("crate", "max"))
#: The raw keys' suffixes by mode: (numerator, denominator).
RAW = {"ratio": ("hits", "count"), "mean": ("sum", "len")}
#: Suffixes of the finalised bucket: "" is the hash itself.
FINAL_SUFFIXES = frozenset([""] + ["%s:%s" % r for r in ROLLUPS] + ["lock"])
KEY = re.compile(r"^ts:(\d+):(\d+):(%s)(?::(.+))?$" % "|".join(channels.NAMES))
#: An open bucket whose raw keys keep changing under the transaction is tried this often.
MAX_TRIES = 20
N = channels.N

log = Logger()


def parse_key(key):
    """(name, H, b, suffix) of an old-layout per-channel key, or None for any other key."""
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    m = KEY.match(key)
    if m is None:
        return None
    interval, b, name, suffix = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4) or ""
    if interval not in C.HASH_INTERVALS:
        return None
    if suffix not in FINAL_SUFFIXES and suffix not in RAW[channels.MODES[name]]:
        return None
    return name, interval, b, suffix


def raw_keys(name, interval, b):
    return [keys.ts(interval, b, "%s:%s" % (name, s)) for s in RAW[channels.MODES[name]]]


def finalised_keys(name, interval, b):
    return ([keys.ts(interval, b, name)]
            + [keys.rollup(interval, b, name, level, method) for level, method in ROLLUPS]
            + [keys.finalise_lock(interval, b, name)])


_number = finite_number


def dense(flat, fill=np.nan):
    """A flat HGETALL reply (channel, value, ...) -> (f8[N], number of corrupt entries)."""
    out = np.full(N, fill)
    bad = 0
    flat = list(flat or [])
    for field, value in zip(flat[::2], flat[1::2]):
        try:
            i = int(field)
        except (TypeError, ValueError):
            bad += 1
            continue
        x = _number(value)
        if x is None or not 0 <= i < N:
            bad += 1
            continue
        out[i] = x
    return out, bad


@defer.inlineCallbacks
def read_hash(conn, key):
    """A hash as a flat list (field, value, ...), read with HSCAN in short steps. A field
    may come twice if the hash is resized meanwhile, which only a write does (a finalised
    hash is never written again; a write to a raw hash aborts its transaction)."""
    flat, cursor = [], "0"
    while True:
        reply = yield conn.execute_command("HSCAN", key, cursor, "COUNT", HSCAN_COUNT)
        cursor = str(reply[0])
        flat.extend(reply[1] or [])
        if cursor == "0":
            return flat


def summary(counts):
    return ("%(finalised)d finalised buckets converted, %(open)d open buckets converted, "
            "%(deleted)d old keys deleted, %(skipped)d buckets skipped, "
            "%(corrupt)d corrupt values left out" % counts)


class Migration:
    """One run over the whole Redis. `run()` -> Deferred of the counts; `stop()` makes it
    end after the bucket in hand (the web role stopping)."""

    def __init__(self, redis, log=None):
        self.redis = redis
        self.log = log if log is not None else globals()["log"]
        self.counts = {"finalised": 0, "open": 0, "deleted": 0, "skipped": 0, "corrupt": 0}
        self.stopped = False
        self.unlink = True

    def stop(self):
        self.stopped = True

    def cmd(self, *args):
        return self.redis.execute_command(*args)

    @defer.inlineCallbacks
    def run(self):
        try:
            yield self.cmd("UNLINK", "minard:migrate:probe")
        except txredisapi.ResponseError:
            self.unlink = False  # Redis < 4
        found = yield self.scan()
        for (name, interval, b), suffixes in sorted(found.items()):
            if self.stopped:
                break
            try:
                if suffixes & FINAL_SUFFIXES:
                    yield self.finalised(name, interval, b)
                else:
                    yield self.open_bucket(name, interval, b)
            except (txredisapi.ResponseError, txredisapi.WatchError, ValueError) as e:
                # e.g. WRONGTYPE: a key of another program that looks like ours
                self.counts["skipped"] += 1
                self.log.warn("store migration: {name} {interval}:{b} skipped: {e}",
                              name=name, interval=interval, b=b, e=e)
        return dict(self.counts)

    @defer.inlineCallbacks
    def scan(self):
        """{(name, H, b): set of suffixes seen} of every old-layout key."""
        found = {}
        for pattern in PATTERNS:
            cursor = "0"
            while True:
                reply = yield self.cmd("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT)
                cursor = str(reply[0])
                for key in reply[1] or []:
                    parsed = parse_key(key)
                    if parsed is not None:
                        found.setdefault(parsed[:3], set()).add(parsed[3])
                if cursor == "0" or self.stopped:
                    break
        return found

    def _delete_args(self, names):
        return ("UNLINK" if self.unlink else "DEL",) + tuple(names)

    @defer.inlineCallbacks
    def delete(self, names):
        """One key per command (pipelined): each stays short."""
        try:
            replies = yield defer.gatherResults([self.cmd(*self._delete_args([name]))
                                                 for name in names], consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        self.counts["deleted"] += sum(int(r) for r in replies)

    @defer.inlineCallbacks
    def denominator(self, mode, raw):
        """The events (ratio) or samples in all (mean) of a bucket whose raw keys are still
        there; 0 when unknown."""
        if mode == "ratio":
            return _number((yield self.cmd("GET", raw[1]))) or 0.0
        lens, _ = dense((yield read_hash(self.redis, raw[1])), 0.0)
        return float(lens.sum())

    @defer.inlineCallbacks
    def finalised(self, name, interval, b):
        mode = channels.MODES[name]
        old = finalised_keys(name, interval, b)
        raw = raw_keys(name, interval, b)
        new = keys.channel_final(name, interval, b)
        if int((yield self.cmd("EXISTS", new))):
            self.counts["skipped"] += 1  # converted before (a run stopped half-way)
        else:
            flat = yield read_hash(self.redis, old[0])
            values, bad = dense(flat)
            self.counts["corrupt"] += bad
            if np.isnan(values).all():
                if flat:
                    self.counts["skipped"] += 1  # nothing readable in it
            else:
                pttl = int((yield self.cmd("PTTL", old[0])))
                denominator = yield self.denominator(mode, raw)
                blob = channels.encode_final(values, denominator)
                if pttl > 0:
                    expiry = ["PX", pttl]
                else:
                    expiry = ["EX", channels.final_ttl(interval)]
                if pttl == -2:  # expired meanwhile
                    self.counts["skipped"] += 1
                elif (yield self.cmd("SET", new, blob, "NX", *expiry)) is not None:
                    self.counts["finalised"] += 1
                else:
                    self.counts["skipped"] += 1
        yield self.delete(old + raw)

    @defer.inlineCallbacks
    def open_bucket(self, name, interval, b):
        for _ in range(MAX_TRIES):
            try:
                yield self._open_once(name, interval, b)
                return
            except txredisapi.WatchError:
                continue  # a raw key changed meanwhile: read it again
        raise txredisapi.WatchError("raw keys kept changing (%d tries)" % MAX_TRIES)

    @defer.inlineCallbacks
    def _open_once(self, name, interval, b):
        mode = channels.MODES[name]
        raw = raw_keys(name, interval, b)
        old = finalised_keys(name, interval, b)
        part = keys.channel_part(name, interval, b)
        conn = yield self.redis.watch(raw + [old[0], old[-1]])
        try:
            stale = int((yield conn.execute_command("EXISTS", old[0], old[-1])))
            if mode == "ratio":
                num, bad = dense((yield read_hash(conn, raw[0])), 0.0)
                count = yield conn.execute_command("GET", raw[1])
                den = _number(count) or 0.0
                if count is not None and _number(count) is None:
                    bad += 1
                usable = den > 0
                # hits without events cannot be turned into occupancies
            else:
                num, bad = dense((yield read_hash(conn, raw[0])), 0.0)
                lens, bad_len = dense((yield read_hash(conn, raw[1])), 0.0)
                bad += bad_len
                lens = np.where(lens >= 1, np.floor(lens), 0.0)
                num = np.where(lens > 0, num, 0.0)  # a sum without samples is no data
                den = lens.astype(np.int64)
                usable = bool((den > 0).any())
            existing = None
            if usable and not stale:
                existing = yield conn.execute_command("HGET", part, "migrated")
        except BaseException:
            try:
                yield conn.unwatch()
            except Exception:
                pass
            raise
        if existing is not None:
            try:
                n, d = channels.decode_part(existing, mode)
                num = num + n
                den = den + d
            except ValueError:
                bad += 1  # an unreadable earlier "migrated" part is replaced
        t = yield conn.multi()
        try:
            if usable and not stale:
                t.execute_command("HSET", part, "migrated", channels.encode_part(mode, num, den))
                t.execute_command("HINCRBY", part, "~v", 1)
                t.execute_command("EXPIRE", part, channels.part_ttl(interval))
                t.execute_command("ZADD", keys.channel_open(name), (b + 1) * interval - 1,
                                  keys.bucket_member(interval, b))
            for key in raw:
                t.execute_command(*self._delete_args([key]))
        except BaseException:
            yield t.discard()
            raise
        reply = list((yield t.commit()) or [])
        errors = [r for r in reply if isinstance(r, Exception)]
        if errors:
            raise txredisapi.ResponseError(str(errors[0]))
        self.counts["corrupt"] += bad
        self.counts["deleted"] += sum(int(r) for r in reply[-len(raw):])
        if usable and not stale:
            self.counts["open"] += 1
        else:
            self.counts["skipped"] += 1  # finalised meanwhile, or no data in it


def migrate(redis, log=None):
    """Migrate every old-layout per-channel key: Deferred of {"finalised", "open",
    "deleted", "skipped", "corrupt"} counts (a second run finds nothing to do)."""
    return Migration(redis, log).run()


# -- the command --------------------------------------------------------------------------

class MigrateError(Exception):
    pass


def _redacted(url):
    """The URL without its password, for messages."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def check_url(url):
    """The parts of a redis:// or rediss:// URL; MigrateError when it is not one."""
    if not url.startswith(("redis://", "rediss://")):
        raise MigrateError("--redis: %r is not a redis:// URL" % (_redacted(url),))
    try:
        return parse_redis_url(url)
    except ValueError as e:
        raise MigrateError("--redis: bad URL %r (%s)" % (_redacted(url), e))


@defer.inlineCallbacks
def _reach(reactor, url, timeout):
    """Fails fast (MigrateError) when nothing answers at the URL's host and port."""
    p = check_url(url)
    endpoint = endpoints.HostnameEndpoint(reactor, p["host"], p["port"], timeout=timeout)
    try:
        proto = yield endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
    except Exception as e:
        raise MigrateError("cannot reach Redis at %s:%d: %s" % (p["host"], p["port"], e))
    proto.transport.loseConnection()


@defer.inlineCallbacks
def _run(reactor, args):
    redis = None
    try:
        yield _reach(reactor, args.redis, args.timeout)
        redis = connect(args.redis)
        d = redis.ping()
        d.addTimeout(args.timeout, reactor)
        try:
            yield d
        except defer.TimeoutError:
            p = parse_redis_url(args.redis)  # not the URL: it may hold a password
            raise MigrateError("Redis at %s:%d/%d did not answer within %g s (password? "
                               "database?)" % (p["host"], p["port"], p["db"], args.timeout))
        counts = yield migrate(redis)
    except Exception as e:  # one line, never a traceback
        what = str(e) if isinstance(e, MigrateError) else "%s: %s" % (type(e).__name__, e)
        sys.stderr.write("minard-migrate-store: error: %s\n" % (what,))
        sys.stderr.flush()
        raise SystemExit(1)
    finally:
        if redis is not None:
            try:
                d = redis.disconnect()
                d.addTimeout(2, reactor)
                yield d
            except Exception:
                pass
    sys.stdout.write("minard-migrate-store: %s\n" % (summary(counts),))
    sys.stdout.flush()


def main(argv=None):
    from twisted.internet import task

    parser = argparse.ArgumentParser(
        prog="minard-migrate-store",
        description="Convert per-channel data (occupancy, cmos, base) of the old Redis "
                    "layout (one hash field per channel) into the packed arrays of the "
                    "current one. Idempotent; the web role also runs it at start.")
    parser.add_argument("--redis", default=C.DEFAULT_REDIS,
                        help="Redis URL (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for Redis to answer (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        check_url(args.redis)
    except MigrateError as e:
        sys.stderr.write("minard-migrate-store: error: %s\n" % (e,))
        raise SystemExit(1)
    task.react(_run, (args,))
