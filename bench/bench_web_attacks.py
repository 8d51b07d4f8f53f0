"""Hostile clients against a real `twistd minard --role=web` and a real Redis (issue 12).

    PYTHONPATH=. .venv/bin/python bench/bench_web_attacks.py [--streams 2000] [--rounds 5]
                                                             [--hold 150]

Measures, all traffic to 127.0.0.1:
* the /metric request of the issue (64 expressions × 10000 points): now a 400, its time;
* the most expensive /metric allowed (10 mean expressions × 10000 points, 200,000 Redis
  reads, 16-digit floats): time and answer size;
* /get_status latency and Redis PING latency, idle and while 4 of those /metric run at
  once, and the web process's memory;
* for information, the same for other expensive requests: /query?name=nhit&seconds=3600
  (3600 lists of 100 sampled nhit values) and /query?name=nhit_hist&seconds=3600 (60
  one-minute histograms of 3000 nhit values each);
* an attacker opening N /stream sockets that it never reads, sent as nginx would send
  them (X-Real-IP of one outside address): how many it gets, whether a legitimate /stream
  from another address still connects (and how soon its first message comes), and how
  long the attacker's streams are held before they are dropped (at most --hold s; while
  the attacker is still opening sockets, those dropped free slots that later ones take).
"""
import argparse
import asyncio
import math
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minard.constants import (MAX_EXPRESSIONS, MAX_POINTS, NHIT_SAMPLES,  # noqa: E402
                              NHIT_SAMPLES_TTL)
from minard.store import keys  # noqa: E402
from tests import web_seed  # noqa: E402
from tests.support import RedisServer  # noqa: E402
from tests.test_browser import start_web  # noqa: E402
from tests.web_support import seed_worst_metric  # noqa: E402

ATTACKER = "203.0.113.66"  # documentation addresses (RFC 5737), sent as X-Real-IP
SHIFTER = "198.51.100.7"


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


async def http_get(host, port, path, headers=b""):
    """(seconds, status, body bytes) of one GET on a fresh connection."""
    t = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /%s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n%s\r\n"
                     % (path.encode(), headers))
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return time.perf_counter() - t, status, body


def dechunk(data):
    out, i = [], 0
    while True:
        j = data.index(b"\r\n", i)
        n = int(data[i:j].split(b";")[0], 16)
        if n == 0:
            return b"".join(out)
        out.append(data[j + 2:j + 2 + n])
        i = j + 2 + n + 2


async def redis_pings(port, stop, out):
    """PING every 10 ms on one connection until stop is set; latencies into out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            writer.write(b"PING\r\n")
            await writer.drain()
            await reader.readline()
            out.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)
    finally:
        writer.close()


async def read_response(reader):
    """(status, body) of one HTTP/1.1 response (Content-Length or chunked)."""
    status = int((await reader.readline()).split(b" ", 2)[1])
    length, chunked = None, False
    while True:
        line = await reader.readline()
        lower = line.lower()
        if lower.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        elif lower.startswith(b"transfer-encoding:") and b"chunked" in lower:
            chunked = True
        if line in (b"\r\n", b""):
            break
    if not chunked:
        return status, await reader.readexactly(length or 0)
    body = []
    while True:
        n = int((await reader.readline()).split(b";")[0], 16)
        if n == 0:
            await reader.readline()
            return status, b"".join(body)
        body.append(await reader.readexactly(n))
        await reader.readline()


async def status_polls(host, port, stop, out):
    """/get_status every 10 ms on one keep-alive connection until stop is set."""
    reader, writer = await asyncio.open_connection(host, port)
    request = b"GET /get_status?name=builder HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        while not stop.is_set():
            t = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status, body = await read_response(reader)
            assert status == 200 and body.startswith(b'{"status"'), (status, body)
            out.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)
    finally:
        writer.close()


def summary(xs):
    """n, median, p99 (nearest rank) and max of latencies in seconds, as ms."""
    xs = sorted(xs)
    p99 = xs[max(0, math.ceil(0.99 * len(xs)) - 1)]
    return "n %d, p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
        len(xs), 1000 * statistics.median(xs), 1000 * p99, 1000 * xs[-1])


async def concurrent_metrics(host, port, redis_port, path, n, web_pid):
    """n worst-case /metric at once; /get_status and PING latencies meanwhile."""
    stop = asyncio.Event()
    statuses, pings = [], []
    pollers = [asyncio.ensure_future(status_polls(host, port, stop, statuses)),
               asyncio.ensure_future(redis_pings(redis_port, stop, pings))]
    await asyncio.sleep(0.3)
    before = len(statuses), len(pings)
    rss0 = rss_mb(web_pid)
    peak = [rss0]

    async def watch_memory():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(web_pid))
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch_memory())
    t = time.perf_counter()
    results = await asyncio.gather(*[http_get(host, port, path) for _ in range(n)])
    wall = time.perf_counter() - t
    stop.set()
    await asyncio.gather(*pollers, watcher)
    return (wall, results, statuses[before[0]:], pings[before[1]:], rss0, peak[0])


async def idle_latency(host, port, redis_port, seconds=2.0):
    stop = asyncio.Event()
    statuses, pings = [], []
    tasks = [asyncio.ensure_future(status_polls(host, port, stop, statuses)),
             asyncio.ensure_future(redis_pings(redis_port, stop, pings))]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return statuses, pings


def open_stream(port, address, rcvbuf=None):
    """A /stream socket that is never read; (socket, status line)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /stream HTTP/1.1\r\nHost: bench\r\nX-Real-IP: %s\r\n\r\n" % address.encode())
    return s


def status_of(s, timeout=5.0):
    s.settimeout(timeout)
    try:
        head = s.recv(4096, socket.MSG_PEEK)
    except OSError:
        return None
    if not head:
        return None
    return int(head.split(b" ", 2)[1])


async def stream_first_message(host, port, address):
    """(status, seconds to the first data message) of a reading /stream client."""
    t = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: bench\r\nX-Real-IP: %s\r\n\r\n" % address.encode())
    await writer.drain()
    status = int((await reader.readline()).split(b" ", 2)[1])
    try:
        if status != 200:
            return status, None
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            if line.startswith(b"data: "):
                return status, time.perf_counter() - t
            if not line:
                return status, None
    finally:
        writer.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=2000, help="attacker /stream sockets")
    parser.add_argument("--rounds", type=int, default=5, help="single /metric timings")
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--hold", type=float, default=150,
                        help="s to wait for the attacker's streams to be dropped")
    args = parser.parse_args()
    print("command: PYTHONPATH=. .venv/bin/python bench/bench_web_attacks.py --streams %d "
          "--rounds %d --concurrent %d --hold %g"
          % (args.streams, args.rounds, args.concurrent, args.hold))
    redis = RedisServer().start()
    web = None
    attackers = []
    try:
        now = int(time.time())
        first = now - MAX_POINTS
        t = time.time()
        worst = seed_worst_metric(redis.port, first)
        web_seed.pipeline(redis.port, [
            ["RPUSH", keys.nhit_samples(s)] + [str(20 + (s + i) % 500)
                                                for i in range(NHIT_SAMPLES)]
            for s in range(now - NHIT_SAMPLES_TTL - 5, now + 600)])
        web_seed.pipeline(redis.port, [
            ["HSET", keys.nhit_hist(60, b)] + [x for n in range(3000) for x in (n, 1 + n % 77)]
            for b in range(now // 60 - 62, now // 60 + 10)])
        print("seeded %d seconds of 10 trigger means, %d of nhit samples and an hour of nhit "
              "histograms in %.1f s" % (MAX_POINTS, NHIT_SAMPLES_TTL, time.time() - t))
        log_dir = "/tmp/minard-bench-logs"
        os.makedirs(log_dir, exist_ok=True)
        web, base = start_web(redis.url, log_dir)
        host, port = "127.0.0.1", int(base.rsplit(":", 1)[1].strip("/"))
        loop = asyncio.new_event_loop()
        run = loop.run_until_complete

        print("\n-- /metric cost")
        issue = "metric?expr=%s&start=%d&stop=%d&step=1" % (
            ",".join("k%d" % i for i in range(MAX_EXPRESSIONS)), now - 10000, now)
        seconds, status, body = run(http_get(host, port, issue))
        print("issue's request (%d bytes: %d expressions x 10000 points): %d in %.1f ms: %s"
              % (len(issue) + 1, MAX_EXPRESSIONS, status, 1000 * seconds, body.decode()))
        run(http_get(host, port, worst))  # warm up
        times, sizes = [], set()
        for _ in range(args.rounds):
            seconds, status, body = run(http_get(host, port, worst))
            assert status == 200, (status, body[:200])
            times.append(seconds)
            sizes.add(len(body))
        print("worst allowed /metric (10 X-nhit x 10000 points = 100000 values, 200000 reads): "
              "median %.0f ms (min %.0f, max %.0f), %s bytes"
              % (1000 * statistics.median(times), 1000 * min(times), 1000 * max(times),
                 "/".join(str(s) for s in sorted(sizes))))

        statuses, pings = run(idle_latency(host, port, redis.port))
        print("idle: /get_status %s; Redis PING %s" % (summary(statuses), summary(pings)))
        wall, results, statuses, pings, rss0, peak = run(concurrent_metrics(
            host, port, redis.port, worst, args.concurrent, web.pid))
        print("%d worst /metric at once: all answered in %.2f s (each %s ms), statuses %s"
              % (args.concurrent, wall, "/".join("%.0f" % (1000 * r[0]) for r in results),
                 sorted({r[1] for r in results})))
        print("  meanwhile /get_status %s" % summary(statuses))
        print("  meanwhile Redis PING  %s" % summary(pings))
        print("  web RSS %.0f MB before, %.0f MB peak" % (rss0, peak))

        print("\n-- other expensive requests (for information)")
        for other in ("query?name=nhit&seconds=%d" % NHIT_SAMPLES_TTL,
                      "query?name=nhit_hist&seconds=3600"):
            times = []
            for _ in range(args.rounds):
                seconds, status, body = run(http_get(host, port, other))
                assert status == 200, (status, body[:200])
                times.append(seconds)
            print("/%s: median %.0f ms, %d bytes"
                  % (other, 1000 * statistics.median(times), len(body)))
            wall, results, statuses, pings, rss0, peak = run(concurrent_metrics(
                host, port, redis.port, other, args.concurrent, web.pid))
            print("  %d at once: all answered in %.2f s; meanwhile /get_status %s; "
                  "Redis PING %s" % (args.concurrent, wall, summary(statuses), summary(pings)))

        print("\n-- /stream slots")
        t = time.perf_counter()
        opened_at = []
        for _ in range(args.streams):
            attackers.append(open_stream(port, ATTACKER))
            opened_at.append(time.monotonic())
        opened = time.perf_counter() - t
        codes = {}
        for s in attackers:
            code = status_of(s)
            codes[code] = codes.get(code, 0) + 1
        print("attacker (X-Real-IP %s) opened %d /stream sockets in %.1f s, never reading: "
              "answers %s" % (ATTACKER, args.streams, opened,
                              ", ".join("%s: %d" % kv for kv in sorted(codes.items(),
                                                                        key=str))))
        status, first_message = run(stream_first_message(host, port, SHIFTER))
        print("legitimate /stream (X-Real-IP %s): %d, first message after %s"
              % (SHIFTER, status, "%.0f ms" % (1000 * first_message) if first_message
                 else "none"))
        status, first_message = run(stream_first_message(host, port, "127.0.0.1"))
        print("loopback /stream (no forwarded address): %d, first message after %s"
              % (status, "%.0f ms" % (1000 * first_message) if first_message else "none"))
        held = [(s, at) for s, at in zip(attackers, opened_at) if status_of(s, 0.5) == 200]
        t = time.monotonic()
        gone = {}
        while len(gone) < len(held) and time.monotonic() - t < args.hold:
            for i, (s, at) in enumerate(held):
                if i in gone:
                    continue
                s.settimeout(0)
                try:  # never read the data: only look whether the connection ended
                    s.send(b"")
                    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
                    if info[0] != 1:  # TCP_ESTABLISHED
                        gone[i] = time.monotonic() - at
                except OSError:
                    gone[i] = time.monotonic() - at
            time.sleep(0.5)
        if gone:
            print("attacker's %d admitted streams: %d dropped by the server within %.0f s, "
                  "%.0f-%.0f s after they were opened (default receive buffers, one ~1.5 KB "
                  "message a second: behind once more than STREAM_UNREAD_SLACK is unread in "
                  "its kernel, dropped STREAM_DROP_AFTER later)"
                  % (len(held), len(gone), args.hold, min(gone.values()), max(gone.values())))
        else:
            print("attacker's %d admitted streams: none dropped within %.0f s"
                  % (len(held), args.hold))
        loop.close()
    finally:
        for s in attackers:
            s.close()
        if web is not None:
            web.terminate()
            web.wait(10)
        redis.cleanup()


if __name__ == "__main__":
    main()
