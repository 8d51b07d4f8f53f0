"""Benchmark of the main web site against a real Redis and a real `twistd minard --role=web`.

    PYTHONPATH=. .venv/bin/python bench/bench_web.py [--requests 200] [--clients 200] [--seconds 60]

Measures (goals from issue 4):
* /metric?expr=TOTAL for 900 points (15 min at step 1): median latency < 20 ms;
* /metric with every expression of the Stream page (35 × 900 points), for information;
* /query?name=occupancy (10240 channels of the newest finalised minute): median < 20 ms;
* N concurrent /stream clients held for S seconds: the web process's CPU (< 1 core), its
  memory, and the messages each client received.
"""
import argparse
import asyncio
import http.client
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minard.constants import TRIGGERS  # noqa: E402
from tests import web_seed  # noqa: E402
from tests.support import RedisServer  # noqa: E402
from tests.test_browser import start_web  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def latency(host, port, path, n):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    times = []
    size = 0
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - t) * 1000)
        if resp.status != 200:
            raise RuntimeError("%s -> %d %r" % (path, resp.status, body[:200]))
        size = len(body)
    conn.close()
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))], size


async def stream_client(host, port, seconds, counts, i):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
    await writer.drain()
    deadline = time.monotonic() + seconds
    counts[i] = 0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                line = await asyncio.wait_for(reader.readline(), left)
            except asyncio.TimeoutError:
                break
            if not line:
                break
            if line.startswith(b"data: "):
                counts[i] += 1
    finally:
        writer.close()


async def many_streams(host, port, clients, seconds):
    counts = {}
    await asyncio.gather(*[stream_client(host, port, seconds, counts, i) for i in range(clients)])
    return counts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    print("command: PYTHONPATH=. .venv/bin/python bench/bench_web.py --requests %d --clients %d "
          "--seconds %g" % (args.requests, args.clients, args.seconds))
    redis = RedisServer().start()
    web = None
    try:
        t = time.time()
        n = web_seed.seed(redis.port, time.time(), future=int(args.seconds) + 300)
        print("seeded %d Redis commands in %.1f s" % (n, time.time() - t))
        log_dir = "/tmp/minard-bench-logs"
        os.makedirs(log_dir, exist_ok=True)
        web, base = start_web(redis.url, log_dir)
        host, port = "127.0.0.1", int(base.rsplit(":", 1)[1].strip("/"))
        now = int(time.time())
        window = "start=%d&stop=%d&step=1&now=%d" % (now - 900, now, now)
        everything = ",".join(["TOTAL"] + list(TRIGGERS) + [
            "TOTAL-nhit", "TOTAL-charge", "PULGT-nhit", "PULGT-charge",
            "run", "subrun", "gtid", "heartbeat"])
        cases = [
            ("/metric TOTAL, 900 points", "/metric?expr=TOTAL&" + window),
            ("/metric 36 exprs x 900 points", "/metric?expr=%s&%s" % (everything, window)),
            ("/query occupancy (10240 ch)", "/query?name=occupancy&step=60"),
            ("/metric_hash crate, 900 points", "/metric_hash?name=cmos&crate=3&" + window),
            ("/owl_tubes, 180 points", "/owl_tubes?name=cmos&start=%d&stop=%d&step=5"
             % (now - 900, now)),
        ]
        print("\n%-34s %10s %10s %10s" % ("request", "median ms", "p95 ms", "bytes"))
        for label, path in cases:
            latency(host, port, path, 5)  # warm up
            median, p95, size = latency(host, port, path, args.requests)
            print("%-34s %10.2f %10.2f %10d" % (label, median, p95, size))

        print("\n%d /stream clients for %g s ..." % (args.clients, args.seconds))
        cpu0, t0 = cpu_seconds(web.pid), time.monotonic()
        counts = asyncio.run(many_streams(host, port, args.clients, args.seconds))
        cpu1, t1 = cpu_seconds(web.pid), time.monotonic()
        got = sorted(counts.values())
        print("web CPU: %.3f cores (%.2f s CPU in %.1f s wall); RSS %.1f MB"
              % ((cpu1 - cpu0) / (t1 - t0), cpu1 - cpu0, t1 - t0, rss_mb(web.pid)))
        print("messages per client: min %d, median %d, max %d (expected about %d)"
              % (got[0], statistics.median(got), got[-1], int(args.seconds)))
    finally:
        if web is not None:
            web.terminate()
            web.wait(10)
        redis.cleanup()


if __name__ == "__main__":
    main()
