"""Writing what a pull worker derived from one second of the event stream, besides the
trig hashes (issue 13; key layout in store/keys.py):

* `ts:<I>:<b>:trig:fecd` (FEC/D hits by channel) and `ts:<I>:<b>:DISPATCH_ORPHANS`
  (orphans' hits), every interval, as the later SNO+ minard wrote them;
* the exact nhit histogram of each event type, `minard:nhit:<H>:<b>:<field>`, every hash
  interval (the shape of the compat all-events `ts:<H>:<b>:nhit:hist`);
* run records (`minard:run:<run>`, `minard:runs`, the seconds bitmaps): sums added,
  start/stop kept as the earliest/latest receipt time, run headers set;
* clock jumps: counted in `ts:<I>:<b>:CLOCK_JUMPS`, listed in `minard:clockjumps`, one
  alarm per burst (`minard:clockjumps:burst`); the batches' loose ends go to
  `minard:clock:ends`, where `sweep()` pairs them (clock_sweep.lua).

A second's flush becomes a list of small operations, applied by analyses.lua in chunks of
at most CHUNK_COMMANDS Redis commands (no script holds Redis for long), each chunk once
per flush id (store/events.py sends these chunks with its own, in the same round trip).
"""
import json

from minard.constants import (CLOCK_END_MAX_AGE, CLOCK_END_SETTLE, CLOCK_JUMP_BURST,
                              CLOCK_JUMP_DETAILS, CLOCK_JUMPS_KEPT, CLOCK_PAIR_WINDOW, EXPIRE,
                              HASH_INTERVALS, INTERVALS, NHIT_TYPE_EXPIRE, RUN_KEEP)
from minard.store import keys
from minard.store.channels import WRITER_LAG, WRITER_TIMEOUT
from minard.store.scripts import LIVE_WRITERS, Script

#: Redis commands one chunk may run at most (store/events.py's bound).
CHUNK_COMMANDS = 200
#: Pairs (or members) one operation carries at most, so that an operation fits a chunk.
OP_ITEMS = 180
#: Loose ends one sweep looks at, at most (a call stays ~1 ms).
SWEEP_ENDS = 2000
#: The flush markers (store/events.py's FLUSH_MARK_TTL).
MARK_TTL = 3600

ANALYSES_SCRIPT = Script("analyses.lua", mark_ttl=MARK_TTL)
SWEEP_SCRIPT = Script("clock_sweep.lua", live_writers=LIVE_WRITERS)
PROGRESS_SCRIPT = Script("clock_progress.lua")

#: What each operation costs in Redis commands (analyses.lua).
_COST = {"incr": lambda op: 2, "hincr": lambda op: (len(op) - 3) // 2 + 1,
         "hset": lambda op: (len(op) - 3) // 2 + 1, "hmin": lambda op: 3,
         "hmax": lambda op: 3, "setbit": lambda op: 2, "zaddlt": lambda op: 1,
         "zadd": lambda op: (len(op) - 2) // 2, "zremto": lambda op: 1,
         "lpush": lambda op: len(op) - 2, "burst": lambda op: 2}


def nhit_type_ttl(interval):
    return interval * NHIT_TYPE_EXPIRE[interval]


def _pairs_ops(name, key, ttl, pairs):
    """[name, key, ttl, f, v, ...] operations of at most OP_ITEMS pairs each."""
    out = []
    for i in range(0, len(pairs), 2 * OP_ITEMS):
        out.append([name, key, str(ttl)] + [str(x) for x in pairs[i:i + 2 * OP_ITEMS]])
    return out


def end_member(end, writer):
    """A loose end [kind, stamp µs, gtid, c10, c50, run] as a member of minard:clock:ends."""
    kind, stamp, gtid, c10, c50, run = end
    return "%d|%s|%d|%d|%d|%d|%s" % (stamp, kind, gtid, c10, c50, run, writer)


def operations(doc):
    """The operations of one flush document (aggregate/events.py's payload)."""
    x = doc.get("x")
    if not x:
        return []
    t = int(doc["t"])
    ops = []
    if "orphans" in x:
        for I in INTERVALS:
            ops.append(["incr", keys.dispatch_orphans(I, t // I), str(keys.ts_ttl(I)),
                        str(int(x["orphans"]))])
    if x.get("fecd"):
        pairs = [v for f, n in sorted(x["fecd"].items()) for v in (f, int(n))]
        for I in INTERVALS:
            ops += _pairs_ops("hincr", keys.fecd(I, t // I), keys.ts_ttl(I), pairs)
    for field, hist in sorted((x.get("types") or {}).items()):
        for H in HASH_INTERVALS:
            ops += _pairs_ops("hincr", keys.nhit_type(H, t // H, field), nhit_type_ttl(H),
                              [int(v) for v in hist])
    if x.get("runs") or x.get("headers"):
        ops.append(["zremto", keys.RUNS, "%d" % (t - RUN_KEEP)])
    for number, first, last, counts, nhit in x.get("runs") or ():
        key = keys.run(number)
        pairs = [v for f in sorted(counts) for v in ("events:" + f, int(counts[f]))]
        pairs += [v for f in sorted(nhit) for v in ("nhit:" + f, int(nhit[f]))]
        ops += _pairs_ops("hincr", key, RUN_KEEP, pairs)
        ops.append(["hmin", key, str(RUN_KEEP), "start", str(int(first))])
        ops.append(["hmax", key, str(RUN_KEEP), "stop", str(int(last))])
        ops.append(["setbit", keys.run_seconds(number, t // 3600), str(RUN_KEEP),
                    str(t % 3600)])
        ops.append(["zaddlt", keys.RUNS, "%.6f" % (int(first) / 1e6), str(number)])
    for stamp, header in x.get("headers") or ():
        number = int(header["run"])
        key = keys.run(number)
        pairs = [v for f in sorted(header) if f != "run" for v in (f, int(header[f]))]
        ops += _pairs_ops("hset", key, RUN_KEEP, pairs)
        ops.append(["hmin", key, str(RUN_KEEP), "header_time", str(int(stamp))])
        ops.append(["hmin", key, str(RUN_KEEP), "start", str(int(stamp))])
        ops.append(["zaddlt", keys.RUNS, "%.6f" % (int(stamp) / 1e6), str(number)])
    if x.get("jumps"):
        for I in INTERVALS:
            ops.append(["incr", keys.clock_jumps(I, t // I), str(keys.ts_ttl(I)),
                        str(int(x["jumps"]))])
        details = [json.dumps(d, separators=(",", ":"))
                   for d in (x.get("jump_details") or ())[:CLOCK_JUMP_DETAILS]]
        if details:
            ops.append(["lpush", keys.CLOCK_JUMP_LIST, str(CLOCK_JUMPS_KEPT), str(RUN_KEEP)]
                       + details)
        ops.append(["burst", keys.CLOCK_JUMP_BURST_KEY, str(CLOCK_JUMP_BURST)])
    writer = x.get("w", "?")
    ends = x.get("ends") or []
    for i in range(0, len(ends), OP_ITEMS):
        op = ["zadd", keys.CLOCK_ENDS]
        for end in ends[i:i + OP_ITEMS]:
            op += [str(int(end[1])), end_member(end, writer)]
        ops.append(op)
    return ops


def chunk_operations(ops, limit=CHUNK_COMMANDS):
    """Operations grouped into chunks of at most ~`limit` Redis commands."""
    out, current, cost = [], [], 0
    for op in ops:
        c = _COST[op[0]](op)
        if current and cost + c > limit:
            out.append(current)
            current, cost = [], 0
        current.append(op)
        cost += c
    if current:
        out.append(current)
    return out


def flush_calls(redis, doc, on_burst=None):
    """The script calls (Deferreds firing 1 applied, 0 a repeat) of one flush document;
    when a chunk starts a burst of clock jumps, on_burst(first jump detail) is called."""
    calls = []
    for k, ops in enumerate(chunk_operations(operations(doc))):
        arg = json.dumps({"id": doc.get("id"), "k": k, "ops": ops}, separators=(",", ":"))
        d = ANALYSES_SCRIPT(redis, [], [arg])
        if any(op[0] == "burst" for op in ops):
            details = (doc.get("x") or {}).get("jump_details") or [{}]
            d.addCallback(_burst_hook, on_burst, details[0])
        calls.append(d)
    return calls


def _burst_hook(reply, on_burst, detail):
    if int(reply) == 2:
        if on_burst is not None:
            on_burst(detail)
        return 1
    return reply


def progress(redis, writer, second):
    """Every loose end of `writer` up to `second` is in Redis (after its flush applied)."""
    return PROGRESS_SCRIPT(redis, [keys.CLOCK_WRITERS], [writer, str(int(second))])


def leave(redis, writer):
    """A clean stop: the sweep no longer waits for this writer."""
    return redis.hdel(keys.CLOCK_WRITERS, writer)


def sweep(redis, tolerance, writer_timeout=WRITER_TIMEOUT, writer_lag=WRITER_LAG,
          settle=CLOCK_END_SETTLE):
    """Pair the loose ends every worker has passed and judge them (clock_sweep.lua).
    Deferred firing (jumps, burst started (bool), the first jump's detail or None)."""
    d = SWEEP_SCRIPT(
        redis, [keys.CLOCK_WRITERS, keys.CLOCK_ENDS, keys.CLOCK_JUMP_LIST,
                keys.CLOCK_JUMP_BURST_KEY],
        [str(writer_timeout), str(writer_lag), str(settle), str(CLOCK_END_MAX_AGE),
         repr(tolerance.ns), repr(tolerance.ppm), str(CLOCK_PAIR_WINDOW * 1_000_000),
         str(SWEEP_ENDS), str(CLOCK_JUMP_DETAILS), str(CLOCK_JUMPS_KEPT),
         str(CLOCK_JUMP_BURST), json.dumps(list(INTERVALS)), str(EXPIRE)])

    def decoded(reply):
        jumps, burst, first = reply
        first = json.loads(first) if first else None
        return int(jumps), bool(int(burst)), first

    d.addCallback(decoded)
    return d
