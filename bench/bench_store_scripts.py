"""How long each of the store's Lua scripts holds Redis, with the largest inputs minard
sends it (goal: no script or command of minard's over 5 ms, issue "per-channel store").

Each script runs --repeat times on a private redis-server with `slowlog-log-slower-than
100` (µs): SLOWLOG gives Redis's own execution time of each call, without the network
(a threshold of 0 would also log every command inside the scripts, and that logging
itself would inflate the times); calls under 0.1 ms are counted as 0.1 ms.
Inputs:
* events_flush: one pull worker's second at 100 kHz / 4 workers (25,000 events: every
  trigger field, 400 distinct nhit values, 100 samples), in its chunks (store/events.py);
* parts_write: a pull worker's second (3 occupancy partials), the same after a 70 s outage
  (14 + 2 + 1 partials at once), a consumer's second (cmos and base, 3 partials each);
* finalise_claim: 4 buckets claimed with 4 occupancy parts each (and 2 cmos parts);
* finalise_write: one finalised bucket (43,696 bytes);
* channel_series: a 900-point series, and one chunk of a longer one (a 10,000-point
  series is 10 such calls); read_batch: one chunk of a /metric read;
* channel_latest; cmos_state: 16 records of 8 slots (CMOS_BATCH), all counts valid (the
  usual case) and with invalid counts (the slow path).

    .venv/bin/python bench/bench_store_scripts.py [--repeat 30]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minard import constants as C  # noqa: E402
from minard.services.data_consumer import CMOS_BATCH  # noqa: E402
from minard.store import channels, datastream, events, keys, reads  # noqa: E402
from tests.support import RedisServer, SyncRedis  # noqa: E402

N = C.N_CHANNELS


def run(redis, script, script_keys, args):
    return redis.command("EVALSHA", script.sha, len(script_keys), *script_keys, *args)


def timed(redis, label, repeat, make):
    """Run make(i) -> (script, keys, args) `repeat` times; Redis's own times (ms)."""
    redis.command("SLOWLOG", "RESET")
    for i in range(repeat):
        script, script_keys, args = make(i)
        run(redis, script, script_keys, args)
    entries = redis.command("SLOWLOG", "GET", "-1")  # commands inside scripts are there too
    times = sorted(e[2] / 1000.0 for e in entries if str(e[3][0]).upper() == "EVALSHA")
    calls = len(times)
    times = [0.1] * max(0, repeat - len(times)) + times
    return {"script": label, "calls": repeat, "logged": calls,
            "median_ms": times[len(times) // 2], "max_ms": times[-1]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    server = RedisServer().start()
    try:
        redis = SyncRedis(server.port)
        redis.command("CONFIG", "SET", "slowlog-log-slower-than", "100")
        redis.command("CONFIG", "SET", "slowlog-max-len", "10000000")
        scripts = [events.FLUSH_SCRIPT, channels.PARTS_WRITE, channels.FINALISE_CLAIM,
                   channels.FINALISE_WRITE, channels.CHANNEL_SERIES, channels.CHANNEL_LATEST,
                   datastream.CMOS_STATE_SCRIPT, reads.BATCH_SCRIPT]
        for s in scripts:
            redis.command("SCRIPT", "LOAD", s.text)
        rng = np.random.default_rng(1)
        results = []
        t0 = int(time.time())

        def flush_doc(i):
            counts = {str(b): 25000 // (b + 1) for b in range(C.N_TRIGGER_BITS)}
            counts["TOTAL"] = 25000
            return {"id": "bench:%d" % i, "t": t0 + i, "events": 25000, "trig": counts,
                    "nhit": {k: v * 30 for k, v in counts.items()},
                    "charge": {k: v * 1000 for k, v in counts.items()},
                    "last": [250000, 1, 12345], "order": i,
                    "hist": [x for n in range(400) for x in (n, 60)],
                    "samples": [int(x) for x in rng.integers(1, 400, 100)]}
        docs = [flush_doc(i) for i in range(args.repeat)]
        n_chunks = len(events.chunks(docs[0]))
        for k in range(n_chunks):
            results.append(timed(
                redis, "events_flush chunk %d/%d (100 kHz / 4 workers)" % (k + 1, n_chunks),
                args.repeat, lambda i: (events.FLUSH_SCRIPT, [], [
                    json.dumps(docs[i]), json.dumps(events.chunks(docs[i])[k])])))

        occupancy = channels.encode_part("ratio", rng.integers(0, 3000, N).astype(float), 5000)
        mean = channels.encode_part("mean", rng.random(N) * 1e4, rng.integers(0, 9, N))

        def parts(name, blob, pairs):
            return [(H, b, "w", blob) for H, b in pairs]

        def pull_second(i):
            s = t0 + i
            k, a = channels.write_args("w%d" % (i % 4), [(
                "occupancy", s, parts("occupancy", occupancy,
                                      [(H, s // H) for H in C.HASH_INTERVALS]))])
            return channels.PARTS_WRITE, k, a
        results.append(timed(redis, "parts_write (pull worker, 3 partials)", args.repeat,
                             pull_second))

        def pull_catch_up(i):
            s = t0 + 1000 + 70 * i
            pairs = [(5, (s - 70) // 5 + j) for j in range(14)] + [(60, s // 60 - 1),
                                                                  (60, s // 60), (86400, 0)]
            k, a = channels.write_args("w", [("occupancy", s,
                                              parts("occupancy", occupancy, pairs))])
            return channels.PARTS_WRITE, k, a
        results.append(timed(redis, "parts_write (after a 70 s outage, 17 partials)",
                             args.repeat, pull_catch_up))

        def consumer_second(i):
            s = t0 + i
            groups = [(name, s, parts(name, mean, [(H, s // H) for H in C.HASH_INTERVALS]))
                      for name in ("cmos", "base")]
            k, a = channels.write_args("c%d" % (i % 2), groups)
            return channels.PARTS_WRITE, k, a
        results.append(timed(redis, "parts_write (consumer, cmos + base)", args.repeat,
                             consumer_second))

        # four buckets with four writers' parts each, ready to be claimed
        def claim(i):
            redis.command("FLUSHALL")
            for w in range(4):
                groups = [("occupancy", t0 + 10_000 + 20 * i + 19, [
                    (5, (t0 + 10_000 + 20 * i) // 5 + j, "w%d" % w, occupancy)
                    for j in range(4)])]
                k, a = channels.write_args("w%d" % w, groups)
                run(redis, channels.PARTS_WRITE, k, a)
            return channels.FINALISE_CLAIM, [keys.channel_writers("occupancy"),
                                             keys.channel_open("occupancy")], [
                "bench", "30", "60", str(channels.CLAIM_BATCH), "10000",
                keys.channel_claim_prefix("occupancy"), keys.channel_part_prefix("occupancy")]
        r = timed(redis, "finalise_claim (%d buckets x 4 parts)" % channels.CLAIM_BATCH,
                  args.repeat, claim)
        results.append(r)

        final = channels.encode_final(rng.random(N), 1000)

        def write_final(i):
            return channels.FINALISE_WRITE, [keys.channel_final("cmos", 5, i),
                                             keys.channel_open("cmos"),
                                             keys.channel_part("cmos", 5, i),
                                             keys.channel_claim("cmos", "5:%d" % i)], [
                final, "6000", "5:%d" % i, "", "bench"]
        results.append(timed(redis, "finalise_write (one bucket)", args.repeat, write_final))

        for b in range(10_000):
            redis.command("SET", keys.channel_final("cmos", 60, b), final)
        off, n = channels.series_offset(3, 4, 5)

        def series(points):
            return lambda i: (channels.CHANNEL_SERIES,
                              [keys.channel_final("cmos", 60, b) for b in range(points)],
                              [str(off), str(n)])
        results.append(timed(redis, "channel_series (900 points)", args.repeat, series(900)))
        results.append(timed(redis, "channel_series (one chunk: %d points)"
                             % channels.SERIES_CHUNK, args.repeat,
                             series(channels.SERIES_CHUNK)))

        def metric(i):  # /metric: 1000 points of TOTAL (one read_batch call)
            spec = [["HMGET", 1000, ["TOTAL"]]]
            return reads.BATCH_SCRIPT, [keys.trig(1, t0 - j) for j in range(1000)], [
                json.dumps(spec)]
        for j in range(1000):
            redis.command("HSET", keys.trig(1, t0 - j), "TOTAL", "1000", "0", "900")
        results.append(timed(redis, "read_batch (one chunk: %d reads)" % reads.READ_CHUNK,
                             args.repeat, metric))
        results.append(timed(redis, "channel_latest", args.repeat, lambda i: (
            channels.CHANNEL_LATEST, [keys.channel_final("cmos", 60, 20_000),
                                      keys.channel_final("cmos", 60, 9_999)], [])))

        def cmos(slow):
            def make(i):
                script_keys, a = [], ["3600"]
                for k in range(CMOS_BATCH):
                    valid = np.ones(256, bool)
                    if slow:
                        valid[::7] = False
                    script_keys.append(keys.cmos_state(k % 19))
                    sec, nsec = divmod(time.time_ns() + k, 10 ** 9)
                    a += [str(sec), str(nsec), datastream.slot_input(
                        np.arange(8), rng.integers(0, 1 << 30, 256), valid)]
                return datastream.CMOS_STATE_SCRIPT, script_keys, a
            return make
        results.append(timed(redis, "cmos_state (%d records, counts valid)" % CMOS_BATCH,
                             args.repeat, cmos(False)))
        results.append(timed(redis, "cmos_state (%d records, some invalid)" % CMOS_BATCH,
                             args.repeat, cmos(True)))
    finally:
        server.cleanup()
    print("command: .venv/bin/python bench/bench_store_scripts.py --repeat %d" % args.repeat)
    print("%-50s %6s %10s %10s" % ("script", "calls", "median ms", "max ms"))
    for r in results:
        print("%-50s %6d %10.3f %10.3f%s" % (r["script"], r["calls"], r["median_ms"],
                                             r["max_ms"], "" if r["max_ms"] <= 5 else "  > 5 ms"))
    print("load average while measuring: %.2f %.2f %.2f (2-core machine)" % os.getloadavg())
    return results


if __name__ == "__main__":
    main()
