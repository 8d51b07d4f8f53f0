"""End-to-end throughput of the event pipeline: dispatcher socket in, Redis out.

A ControlHost dispatcher (a plain-socket sender in its own process, written here)
sends pre-built 'PMT ' records at a target rate to a real `twistd minard
--role=dispatch-push`, which fans them out to N `--role=dispatch-pull` workers writing to a
private redis-server. At the end the TOTAL counts in Redis are compared with what was sent.

    .venv/bin/python bench/bench_pipeline.py --rate 250000 --seconds 60 --workers 1
    .venv/bin/python bench/bench_pipeline.py --rate 0 --seconds 20      # as fast as possible

Prints events/s sent and counted, the loss, CPU per event and peak memory of each process.
"""
import argparse
import multiprocessing
import os
import socket
import struct
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from minard.wire.controlhost import CASPUR  # noqa: E402
from minard.wire.sno import pmt_records_fast  # noqa: E402
from tests.support import RedisServer, RoleProcess, SyncRedis, free_port  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def build_frames(n, mean_nhit, seed=3):
    """n distinct RAWDATA frames (one buffer) and their events' TOTAL count."""
    rng = np.random.default_rng(seed)
    nhit = rng.poisson(mean_nhit, n)
    total = int(nhit.sum())
    channels = rng.integers(0, 19 * 512, total)
    qhs = rng.integers(0, 2048, total)
    trig = rng.choice([0x9, 0x18, 0x400, 0x1000, 0x49, 0], n)
    records = pmt_records_fast(1, 0, np.arange(n), trig, channels, qhs, nhit)
    frames = [CASPUR.frame("RAWDATA", r) for r in records]
    return frames


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


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=250000, help="events/s, 0 = max")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--nhit", type=float, default=30)
    args = parser.parse_args()

    redis_server = RedisServer().start()
    redis = SyncRedis(redis_server.port)
    dispatcher_port = free_port()
    zmq = "tcp://127.0.0.1:%d" % free_port()
    manager = multiprocessing.Manager()
    result = manager.dict()
    send = multiprocessing.Process(target=sender, args=(
        dispatcher_port, args.rate, args.seconds, args.nhit, result))
    send.start()
    time.sleep(0.5)
    pulls = [RoleProcess("dispatch-pull", "--redis", redis_server.url, "--zmq", zmq,
                         "--name", "bench-pull-%d" % i).start() for i in range(args.workers)]
    push = RoleProcess("dispatch-push", "--redis", redis_server.url, "--zmq", zmq,
                       "--port", str(dispatcher_port)).start()
    processes = [("redis-server", redis_server.process.pid), ("push", push.process.pid)]
    processes += [("pull-%d" % i, p.process.pid) for i, p in enumerate(pulls)]
    processes.append(("sender", send.pid))
    try:
        deadline = time.time() + 30
        while "handshake" not in result and time.time() < deadline:
            time.sleep(0.1)
        cpu0 = {name: proc_cpu(pid) for name, pid in processes}
        t0 = time.time()
        while "sent" not in result:
            time.sleep(0.2)
        sent = result["sent"]
        # drain: until the count stops moving
        last, still = -1, 0
        while still < 3:
            time.sleep(1)
            counted = total_counted(redis)
            still = still + 1 if counted == last else 0
            last = counted
        elapsed = time.time() - t0
        cpu = {name: proc_cpu(pid) - cpu0[name] for name, pid in processes}
        peak = {name: proc_peak_rss(pid) for name, pid in processes}
        push_stats = redis.hgetall("minard:stats:dispatch-push")
        pull_stats = [redis.hgetall("minard:stats:bench-pull-%d" % i) for i in range(args.workers)]
    finally:
        push.stop()
        for p in pulls:
            p.stop()
        send.terminate()
        redis_server.cleanup()

    send_seconds = result["send_seconds"]
    print("command: %s" % " ".join(["python"] + sys.argv))
    print("machine: %d cores, %s" % (os.cpu_count(), os.uname().release))
    print("target rate %s events/s for %.0f s, mean nhit %.0f, %d pull worker(s)"
          % ("max" if not args.rate else "%.0f" % args.rate, args.seconds, args.nhit,
             args.workers))
    print("sent     %10d events  %10.0f events/s" % (sent, sent / send_seconds))
    print("counted  %10d events  (loss %d = %.4f%%)" % (counted, sent - counted,
                                                        100.0 * (sent - counted) / max(sent, 1)))
    print("dropped by push (HWM): %s; backpressure events: %s; corrupt in pulls: %s"
          % (push_stats.get("dropped_records", 0), push_stats.get("backpressure_events", 0),
             sum(int(v) for s in pull_stats for k, v in s.items() if k.startswith("corrupt_"))))
    for name, _ in processes:
        print("%-13s CPU %6.2f s = %5.2f us/event  (%.0f%% of a core)  peak RSS %6.1f MB"
              % (name, cpu[name], cpu[name] / max(counted, 1) * 1e6,
                 100 * cpu[name] / elapsed, peak[name] / 1e6))


if __name__ == "__main__":
    main()
