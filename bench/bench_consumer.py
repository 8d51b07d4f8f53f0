"""One data-consumer worker against a real Redis: records/s from ZeroMQ to Redis.

A feeder subprocess pushes real CMOS and/or BASE records (19 crates, stamped with the
send time) over ZeroMQ as fast as the worker takes them; the worker (DataConsumer, the
real PULL link, Lua state script, per-second flush and finalisation) runs here. The
clock stops when every record has been decoded and, for CMOS, rated by the shared-state
script, and the last flush is in Redis. Real load is 19 crates x 2 kinds x 1 record/s
(the simulator sends 2 CMOS + 1 BASE per crate); the goal is >= 100x that: 3800 records/s.

    .venv/bin/python bench/bench_consumer.py [--kind cmos|base|mixed] [--records 40000]
                                             [--per-message 1] [--commandstats]

Recorded (2-core VM shared with other work, load average ~3, Redis 7.0, 40000 records,
one record per ZeroMQ message):
    --kind cmos   4300-5500 records/s   (worker 3.8 s CPU, Redis 2.4 s)
    --kind mixed  7250-9600 records/s   (2 CMOS + 1 BASE per crate, as the simulator)
    --kind base   17000-21000 records/s
Before the per-slot packed CMOS state (one hash field per channel, listpack-encoded
with Redis's hash-max-listpack-entries 512) CMOS ran at ~400 records/s.
"""
import argparse
import os
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, task  # noqa: E402

from minard.services.data_consumer import DataConsumer  # noqa: E402
from minard.stats import Stats  # noqa: E402
from minard.store.connection import connect  # noqa: E402
from tests.support import RedisServer, free_port  # noqa: E402

FEEDER = textwrap.dedent("""
    import sys, time, struct
    import numpy as np, zmq
    sys.path.insert(0, %(root)r)
    from minard.wire import datastream as ds
    from minard import constants as C
    kind, n, per, address = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = np.random.default_rng(1)
    masks = [0xFFFFFFFF] * 16
    count = rng.integers(0, 1 << 30, 19 * 512)
    def cmos(crate, first):
        lo = crate * 512 + first * 32
        count[lo:lo + 256] += rng.integers(0, 3000, 256)
        return ds.encode_record(C.RECORD_CMOS, 0,
                                ds.encode_cmos(crate, 0xFF << first, masks, count[lo:lo + 256]))
    def base(crate):
        return ds.encode_record(C.RECORD_BASE, 0,
                                ds.encode_base(crate, 0xFFFF, masks, rng.integers(100, 160, 512)))
    def records():
        while True:
            for crate in range(19):
                if kind in ("cmos", "mixed"):
                    yield cmos(crate, 0)
                    yield cmos(crate, 8)
                if kind in ("base", "mixed"):
                    yield base(crate)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.bind(address)
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()
    gen = records()
    sent = 0
    while sent < n:
        batch = [next(gen) for _ in range(min(per, n - sent))]
        sock.send_multipart([struct.pack(">q", time.time_ns())] + batch)
        sent += len(batch)
    sock.close(linger=-1)
    ctx.term()
""")


def redis_cpu(server):
    info = server.command("INFO", "cpu")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


@defer.inlineCallbacks
def run(args):
    server = RedisServer().start()
    address = "tcp://127.0.0.1:%d" % free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    feeder = subprocess.Popen([sys.executable, "-c", FEEDER % {"root": root}, args.kind,
                               str(args.records), str(args.per_message), address],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert feeder.stdout.readline().strip() == "ready"
        redis = connect(server.url)
        stats = Stats("bench-consumer")
        worker = DataConsumer(address, ("cmos", "base"), redis, stats, reactor)
        worker.startService()
        yield task.deferLater(reactor, 0.5, lambda: None)
        cpu0, rcpu0 = time.process_time(), redis_cpu(server)
        start = time.perf_counter()
        feeder.stdin.write("go\n")
        feeder.stdin.flush()
        c = stats.counters
        progress, last_change = None, time.monotonic()
        while True:
            decoded = c.get("records_cmos", 0) + c.get("records_base", 0)
            rated = c.get("cmos_records_rated", 0)
            if decoded >= args.records and rated >= c.get("records_cmos", 0):
                break
            if (decoded, rated) != progress:
                progress, last_change = (decoded, rated), time.monotonic()
            elif time.monotonic() - last_change > 20:
                raise RuntimeError("no progress for 20 s: %r" % (c,))
            yield task.deferLater(reactor, 0.01, lambda: None)
        d = worker.channels.in_flight or worker.flush()
        if d is not None:
            yield d
        d = worker.flush()  # what arrived while the previous flush was in flight
        if d is not None:
            yield d
        elapsed = time.perf_counter() - start
        cpu, rcpu = time.process_time() - cpu0, redis_cpu(server) - rcpu0
        yield worker.stopService()
        yield redis.disconnect()
        if args.commandstats:
            for line in server.command("INFO", "commandstats").splitlines():
                if line.startswith("cmdstat_"):
                    print("  " + line)
        goal = 19 * 2 * 100
        print("kind=%s records=%d per_message=%d" % (args.kind, args.records, args.per_message))
        print("%.0f records/s  (%.1f s; worker CPU %.1f s, redis CPU %.1f s; goal %d/s = 100x "
              "real load)" % (args.records / elapsed, elapsed, cpu, rcpu, goal))
        print("rates=%d base_samples=%d flushes=%d corrupt=%d dropped=%d" % (
            c.get("cmos_rates", 0), c.get("base_samples", 0), c.get("flushes", 0),
            sum(v for k, v in c.items() if k.startswith("corrupt_")),
            c.get("dropped_records", 0) + c.get("dropped_samples", 0)))
        print("command: .venv/bin/python bench/bench_consumer.py --kind %s --records %d "
              "--per-message %d" % (args.kind, args.records, args.per_message))
    finally:
        feeder.kill()
        feeder.wait()
        server.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("cmos", "base", "mixed"), default="mixed")
    parser.add_argument("--records", type=int, default=40000)
    parser.add_argument("--per-message", type=int, default=1)
    parser.add_argument("--commandstats", action="store_true",
                        help="print Redis's per-command time")
    args = parser.parse_args()
    failures = []

    def go():
        d = run(args)
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if failures:
        print("bench failed: %s" % failures[0].getTraceback(), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
