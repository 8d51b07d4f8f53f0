"""Realistic Redis contents for the web site's browser tests, benchmark and demos.

`seed(port, now, history=900, future=120, stop_at=None)` writes, for every interval I,
the trig hashes (counts, Σ nhit, Σ charge, run/subrun/gtid) and pull heartbeats of the
buckets from `now − history·I` to `now + future` (so a page looks live for `future` s
without a writer), finalised occupancy/cmos/base buckets (packed, with their card/crate
roll-ups), nhit histograms and samples, alarms, L2 sets, nearline results and program
heartbeats. With `stop_at`, the event data end there (for the stale banner).

    python -m tests.web_seed PORT      # seed a running redis-server on 127.0.0.1:PORT
"""
import json
import math
import random
import socket
import sys

import numpy as np

from minard.constants import HASH_INTERVALS, INTERVALS, N_CHANNELS, TRIGGERS
from minard.store import channels, keys
from tests.support import as_text, encode_command, read_reply

RATE = 1000.0  # events / s


def pipeline(port, commands, chunk=2000):
    """Send many commands over one connection; raise on the first error reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rb")
        for i in range(0, len(commands), chunk):
            part = commands[i:i + chunk]
            s.sendall(b"".join(encode_command(c) for c in part))
            for _ in part:
                as_text(read_reply(f))


def rate_at(t):
    return RATE * (1 + 0.2 * math.sin(t / 300.0))


def trig_commands(interval, b, rng, run=250000):
    t = b * interval
    total = int(rate_at(t) * interval)
    counts = {"TOTAL": total}
    for bit, name in enumerate(TRIGGERS):
        share = {"100L": 0.9, "100M": 0.6, "100H": 0.3, "20": 0.95, "20LB": 0.9, "ESUML": 0.1,
                 "PULGT": 0.005, "PRESCL": 0.01, "OWLN": 0.02, "MISS": 0.0005}.get(name, 0)
        if share:
            counts[str(bit)] = max(0, int(total * share * rng.uniform(0.95, 1.05)))
    nhit = {f: c * int(rng.uniform(28, 34)) for f, c in counts.items()}
    charge = {f: c * int(rng.uniform(900, 1100)) for f, c in counts.items()}
    meta = {"run": str(run + t // 3600), "subrun": str((t // 600) % 6),
            "gtid": str(int(t * RATE) % (1 << 24))}
    flat = lambda d: [x for kv in d.items() for x in kv]  # noqa: E731
    out = [("HSET", keys.trig(interval, b), *flat(counts), *flat(meta)),
           ("HSET", keys.ts(interval, b, "trig:nhit"), *flat(nhit)),
           ("HSET", keys.ts(interval, b, "trig:charge"), *flat(charge)),
           ("SET", keys.pull_heartbeat(interval, b), "1"),
           ("SET", keys.ts(interval, b, "l2-heartbeat"), "1"),
           ("SET", keys.ts(interval, b, "L1"), int(total * 1.01)),
           ("SET", keys.ts(interval, b, "L2"), total),
           ("SET", keys.ts(interval, b, "ORPHANS"), int(total * 0.001)),
           ("SET", keys.ts(interval, b, "L2:gtid"), int(max(0, t - 4) * RATE) % (1 << 24)),
           ("SET", keys.ts(interval, b, "L2:run"), meta["run"])]
    return out  # (no TTLs: a test Redis is flushed anyway)


def channel_values(name, rng):
    values = {}
    for i in range(N_CHANNELS):
        crate, card = i >> 9, (i >> 5) & 15
        if crate == 19 and card > 7:
            continue  # absent cards: no data (grey), not zero
        if name == "occupancy":
            v = rng.gauss(0.0015, 0.0003)
            if i % 997 == 0:
                v = 0.01  # hot channels
        elif name == "cmos":
            v = rng.gauss(1500, 300) if i % 611 else 9000
        else:
            v = rng.gauss(40, 8) if i % 733 else 100
        values[i] = max(0.0, v)
    return values


def final_command(interval, b, name, values, denominator=0.0):
    """The finalised per-channel bucket (store/channels.py) of {channel: value}: one SET."""
    array = np.full(N_CHANNELS, np.nan)
    if values:
        array[np.fromiter(values.keys(), dtype=np.int64)] = np.fromiter(values.values(),
                                                                          dtype=np.float64)
    return ("SET", keys.channel_final(name, interval, b),
            channels.encode_final(array, denominator), "EX", keys.hash_ttl(interval))


def seed(port, now, history=900, future=120, stop_at=None, seed_value=1, hash_history=200):
    rng = random.Random(seed_value)
    now = int(now)
    end = now + future if stop_at is None else int(stop_at)
    cmds = []
    for interval in INTERVALS:
        first = (now - history * interval) // interval
        for b in range(first, end // interval + 1):
            if b * interval >= end:
                break
            cmds += trig_commands(interval, b, rng)
    for name in ("occupancy", "cmos", "base"):
        values = channel_values(name, rng)
        for interval in HASH_INTERVALS:
            last = min(now, end) // interval - 1
            n = hash_history if interval < 86400 else 3
            for b in range(last - n, last + 1):
                wave = 1 + 0.15 * math.sin(b * interval / 600.0)
                cmds.append(final_command(interval, b, name,
                                          {i: v * wave for i, v in values.items()}))
    # nhit: exact histograms per 5 and 60 s, samples per second
    for interval in (5, 60):
        for b in range((now - 900) // interval, end // interval + 1):
            hist = {}
            for _ in range(300):
                n = max(1, int(rng.gauss(30, 6) if rng.random() > 0.03 else rng.uniform(60, 400)))
                hist[n] = hist.get(n, 0) + int(rate_at(b * interval) * interval / 300)
            cmds.append(("HSET", keys.nhit_hist(interval, b),
                         *[x for kv in hist.items() for x in kv]))
    for s in range(now - 120, end):
        cmds.append(("RPUSH", keys.nhit_samples(s),
                     *[max(1, int(rng.gauss(30, 6))) for _ in range(100)]))
    cmds.append(("SET", keys.DISPATCHER, "builder.sp.snolab.ca", "EX", max(60, end - now)))
    # alarms, L2 files, nearline, program heartbeats
    levels = [20, 21, 30, 40]
    for i in range(30):
        alarm = {"id": i, "level": levels[i % 4],
                 "message": "builder - <b>not html</b> & message %d" % i,
                 "time": "2026-01-01T00:%02d:00.000000Z" % i}
        cmds.append(("SET", keys.alarm(i), json.dumps(alarm), "EX", 86400))
    cmds.append(("SET", keys.ALARMS_COUNT, 30))
    for state in ("process", "wait", "rat", "done", "fail"):
        for j in range(5 if state != "fail" else 1):
            cmds.append(("ZADD", keys.l2_state(state), now - 60 * j - 7,
                         "SNOP_0000250000_%03d.l2.zdab" % j))
    cmds.append(("SET", keys.NEARLINE_CURRENT_RUN, 250000))
    cmds.append(("HSET", keys.nearline(250000), "trigger_check", 0, "occupancy", 0,
                 "pedestals", 1, "muons", 99, "<script>x</script>", 7))
    for name in ("builder", "L2-client", "mtc", "xl3", "data"):
        cmds.append(("SET", keys.heartbeat(name), "ok" if name != "xl3" else "crate 3 slow",
                     "EX", max(60, future)))
        cmds.append(("SET", keys.uptime(name), now - 4000, "EX", max(60, future)))
    cmds.append(("HSET", keys.stats("dispatch-pull-0"), "records", 123456, "updated", now))
    pipeline(port, cmds)
    return len(cmds)


def main():
    import time
    port = int(sys.argv[1])
    print("seeded %d commands" % seed(port, time.time(), future=int(sys.argv[2]) if len(sys.argv) > 2 else 600))


if __name__ == "__main__":
    main()
