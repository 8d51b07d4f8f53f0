"""End-to-end throughput of the event pipeline: dispatcher socket in, Redis out.

A ControlHost dispatcher (a plain-socket sender in its own process, written here)
sends pre-built 'PMT ' records at a target rate to a real `twistd minard
--role=dispatch-push`, which fans them out to N `--role=dispatch-pull` workers writing to a
private redis-server. At the end the TOTAL counts in Redis are compared with what was sent.

    .venv/bin/python bench/bench_pipeline.py --rate 250000 --seconds 60 --workers 1
    .venv/bin/python bench/bench_pipeline.py --rate 0 --seconds 20      # as fast as possible
    .venv/bin/python bench/bench_pipeline.py --ladder --seconds 10     # rates x 1, 2, 4 workers
    .venv/bin/python bench/bench_pipeline.py --tree /tmp/base          # roles of another checkout

Prints events/s offered, taken and counted, the loss, how long after its end each second
is visible in the web site's /metric (p50, p99), CPU per event and peak memory per process.
Back-pressure: when the pipeline cannot take the offered rate, push stops reading and the
sender is slowed by TCP (a real dispatcher with a `w` subscription would drop for us):
the "in" rate then falls below the target, which is where the ladder stops.

The records carry everything the pull workers derive besides the trigger sums (issue
13): both MTC clocks advancing with the events (4 µs apart), the polling flag on 1 % of
them, FEC/D hits (crate 17, card 15 is among the random channels), events with trigger
word 0, and a run header (RHDR) first. The 20,000 records are sent again and again, so
every 20,000 events the gtid and the clocks start over: a clock jump, each time.
--tree runs the roles from another checkout (e.g. `git worktree add /tmp/base HEAD`), with
the same records: the figures of two versions side by side.
"""
import argparse
import json
import multiprocessing
import os
import platform
import socket
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from minard.wire.controlhost import CASPUR  # noqa: E402
from minard.wire.sno import pmt_records_fast, rhdr_record  # noqa: E402
from tests import support  # noqa: E402
from tests.support import RedisServer, RoleProcess, SyncRedis, free_port  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def build_frames(n, mean_nhit, seed=3):
    """n distinct RAWDATA frames: PMT records with clocks, polling flags, FEC/D hits."""
    rng = np.random.default_rng(seed)
    nhit = rng.poisson(mean_nhit, n)
    total = int(nhit.sum())
    channels = rng.integers(0, 19 * 512, total)
    qhs = rng.integers(0, 2048, total)
    trig = rng.choice([0x9, 0x18, 0x400, 0x1000, 0x49, 0], n)
    ticks = np.arange(n, dtype=np.int64) * 40  # 4 µs apart: 40 ticks of 10 MHz
    records = pmt_records_fast(1, 0, np.arange(1, n + 1), trig, channels, qhs, nhit,
                               clock10=ticks + 10 ** 12, clock50=5 * ticks + 10 ** 11,
                               polling=rng.random(n) < 0.01)
    frames = [CASPUR.frame("RAWDATA", r) for r in records]
    return frames


def run_header_frame():
    return CASPUR.frame("RECHDR", rhdr_record(1, run_mask=1 << 2, crate_mask=0x7FFFF,
                                              first_gtid=1, valid_gtid=1))


def sender(port, rate, seconds, mean_nhit, result):
    """The dispatcher: accept one client, read its handshake, send frames at `rate`."""
    frames = build_frames(20000, mean_nhit)
    slice_events = 2000
    chunks = [b"".join(frames[i:i + slice_events]) for i in range(0, len(frames), slice_events)]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(1)
    conn, _ = server.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    handshake = b""
    while handshake.count(b"MyId") == 0:
        handshake += conn.recv(4096)
    result["handshake"] = handshake
    conn.sendall(run_header_frame())
    sent = 0
    start = time.perf_counter()
    i = 0
    while True:
        now = time.perf_counter() - start
        if now >= seconds:
            break
        if rate and sent >= rate * now:
            time.sleep(min(0.002, (sent - rate * now) / rate))
            continue
        conn.sendall(chunks[i % len(chunks)])
        sent += slice_events
        i += 1
    result["sent"] = sent
    result["send_seconds"] = time.perf_counter() - start
    time.sleep(30)  # keep the link up while the pipeline drains
    conn.close()


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_peak_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def total_counted(redis):
    total = 0
    for key in redis.command("KEYS", "ts:1:*:trig"):
        total += int(redis.command("HGET", key, "TOTAL") or 0)
    return total


class LatencyProbe(threading.Thread):
    """Polls the web site's /metric every 50 ms and notes when each second first shows
    events: latency = that moment - the end of the second (events of a second are all
    received by its end, so an event's own latency is this plus up to one second less)."""

    def __init__(self, port):
        threading.Thread.__init__(self, daemon=True)
        self.port = port
        self.first_seen = {}
        self.request_ms = []
        self.running = True

    def run(self):
        while self.running:
            now = time.time()
            start = int(now) - 4
            url = ("http://127.0.0.1:%d/metric?expr=TOTAL&start=%d&stop=%d&step=1"
                   % (self.port, start, int(now) + 1))
            try:
                t = time.perf_counter()
                with urllib.request.urlopen(url, timeout=2) as r:
                    values = json.load(r)["values"]
                self.request_ms.append((time.perf_counter() - t) * 1000)
                seen = time.time()
                for i, v in enumerate(values):
                    second = start + i
                    if v and second not in self.first_seen:
                        self.first_seen[second] = seen - (second + 1)
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)

    def latencies(self, first, last):
        return sorted(v for s, v in self.first_seen.items() if first <= s <= last)


def percentile(values, q):
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def run_once(rate, seconds, workers, nhit):
    redis_server = RedisServer().start()
    redis = SyncRedis(redis_server.port)
    dispatcher_port = free_port()
    web_port = free_port()
    zmq = "tcp://127.0.0.1:%d" % free_port()
    manager = multiprocessing.Manager()
    result = manager.dict()
    send = multiprocessing.Process(target=sender, args=(
        dispatcher_port, rate, seconds, nhit, result))
    send.start()
    time.sleep(0.5)
    pulls = [RoleProcess("dispatch-pull", "--redis", redis_server.url, "--zmq", zmq,
                         "--name", "bench-pull-%d" % i).start() for i in range(workers)]
    push = RoleProcess("dispatch-push", "--redis", redis_server.url, "--zmq", zmq,
                       "--port", str(dispatcher_port)).start()
    web = RoleProcess("web", "--redis", redis_server.url, "--listen",
                      "tcp:%d:interface=127.0.0.1" % web_port,
                      "--log-dir", tempfile.mkdtemp(prefix="minard-bench-logs-"),
                      "--programs", os.path.join(REPO, "etc", "programs.ini")).start()
    processes = [("redis-server", redis_server.process.pid), ("push", push.process.pid)]
    processes += [("pull-%d" % i, p.process.pid) for i, p in enumerate(pulls)]
    processes += [("web", web.process.pid), ("sender", send.pid)]
    probe = LatencyProbe(web_port)
    try:
        deadline = time.time() + 30
        while "handshake" not in result and time.time() < deadline:
            time.sleep(0.1)
        probe.start()
        cpu0 = {name: proc_cpu(pid) for name, pid in processes}
        t0 = time.time()
        while "sent" not in result:
            time.sleep(0.2)
        t_sent = time.time()
        sent = result["sent"]
        last, still = -1, 0
        while still < 3:  # drain: until the count stops moving
            time.sleep(1)
            counted = total_counted(redis)
            still = still + 1 if counted == last else 0
            last = counted
        elapsed = time.time() - t0
        cpu = {name: proc_cpu(pid) - cpu0[name] for name, pid in processes}
        peak = {name: proc_peak_rss(pid) for name, pid in processes}
        push_stats = redis.hgetall("minard:stats:dispatch-push")
        pull_stats = [redis.hgetall("minard:stats:bench-pull-%d" % i) for i in range(workers)]
    finally:
        probe.running = False
        for p in [push, web] + pulls:
            p.stop()
        send.terminate()
        redis_server.cleanup()
    latencies = probe.latencies(int(t0) + 2, int(t_sent) - 1)
    return {
        "rate": rate, "seconds": seconds, "workers": workers, "nhit": nhit,
        "sent": sent, "send_seconds": result["send_seconds"], "counted": counted,
        "elapsed": elapsed, "cpu": cpu, "peak": peak, "processes": [n for n, _ in processes],
        "dropped": int(push_stats.get("dropped_records", 0)),
        "backpressure": int(push_stats.get("backpressure_events", 0)),
        "corrupt": sum(int(v) for st in pull_stats for k, v in st.items()
                       if k.startswith("corrupt_")),
        "latency_p50": percentile(latencies, 0.5), "latency_p99": percentile(latencies, 0.99),
        "metric_ms_p50": percentile(sorted(probe.request_ms), 0.5),
    }


def report(r):
    rate = "max" if not r["rate"] else "%.0f" % r["rate"]
    in_rate = r["sent"] / r["send_seconds"]
    print("target %s ev/s, %d worker(s), %.0f s, nhit %.0f: in %.0f ev/s, counted %d of %d "
          "(loss %d = %.4f%%; dropped by push %d; back-pressure %d; corrupt %d)"
          % (rate, r["workers"], r["seconds"], r["nhit"], in_rate, r["counted"], r["sent"],
             r["sent"] - r["counted"], 100.0 * (r["sent"] - r["counted"]) / max(r["sent"], 1),
             r["dropped"], r["backpressure"], r["corrupt"]))
    print("  second visible in /metric after its end: p50 %.3f s, p99 %.3f s; /metric p50 %.1f ms"
          % (r["latency_p50"], r["latency_p99"], r["metric_ms_p50"]))
    for name in r["processes"]:
        cpu = r["cpu"][name]
        print("  %-13s CPU %6.2f s = %5.2f us/event (%3.0f%% of a core)  peak RSS %7.1f MB"
              % (name, cpu, cpu / max(r["counted"], 1) * 1e6, 100 * cpu / r["elapsed"],
                 r["peak"][name] / 1e6))
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=250000, help="events/s, 0 = max")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--nhit", type=float, default=30)
    parser.add_argument("--tree", default=REPO, help="run the roles from this checkout")
    parser.add_argument("--ladder", action="store_true",
                        help="rates 50k, 100k, 200k, ... with 1, 2 and 4 workers, each until "
                             "the pipeline no longer takes the offered rate")
    args = parser.parse_args()
    support.REPO = os.path.abspath(args.tree)  # RoleProcess runs the roles from there
    print("command: %s" % " ".join(["python"] + sys.argv))
    print("roles from: %s" % support.REPO)
    print("machine: %d cores, %s, %s" % (os.cpu_count(), os.uname().release, platform.processor()
                                         or platform.machine()))
    if not args.ladder:
        report(run_once(args.rate, args.seconds, args.workers, args.nhit))
        return
    for workers in (1, 2, 4):
        for rate in (50000, 100000, 200000, 300000, 400000, 500000):
            r = run_once(rate, args.seconds, workers, args.nhit)
            report(r)
            if r["sent"] / r["send_seconds"] < 0.95 * rate or r["counted"] < r["sent"]:
                print("  -> %d worker(s) no longer keep up at %d ev/s" % (workers, rate))
                break


if __name__ == "__main__":
    main()
