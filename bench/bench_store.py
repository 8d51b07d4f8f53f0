"""The per-channel store under the whole system's load: Redis CPU, longest script, flush
latency, bytes per finalised bucket and the projected steady-state memory.

For each event rate the system runs the way `scripts/run-local` runs it, but bare and
private, for measurement: a redis-server on a free port in a temporary directory
(`save ""`, no AOF, maxmemory 8gb, the production memory policy), the simulator (the
event dispatcher and the data server), dispatch-push, 4 dispatch-pull workers
(dispatch-pull-0..3), data-producer, 2 CMOS and 2 BASE data-consumers (ZeroMQ ports 5557
and 5558 as in production, bound on a private loopback address 127.x.y.z so that nothing
else on this machine collides, and named data-consumer-cmos-0 ... as under supervisord).
Each rate gets a fresh Redis and fresh processes. After --warmup seconds of data the
measurement window (--duration s) starts:

  * Redis main-thread CPU: INFO cpu used_cpu_sys_main_thread + used_cpu_user_main_thread,
    its delta over the window / wall seconds (% of a core), plus 10-s samples: the
    per-minute series and a least-squares slope (percentage points per minute);
  * the longest command or script: SLOWLOG (slower than 1 ms, reset at the window's start)
    max and top 5 (EVALSHA digests shown as the .lua file), and LATENCY LATEST (threshold
    5 ms);
  * flush_latency_ms p50/p99/max of every pull worker and data-consumer: their stats hashes
    are read every 0.5 s; the value is that of the last flush, so a value is taken once
    per new flush (the `flushes` counter moved; `updated` when there is none);
  * events: simulator rate x window seconds vs the sum of TOTAL of ts:1:<s>:trig over the
    window's whole seconds (and what push received, from its stats);
  * after the window: MEMORY USAGE (SAMPLES 0) and TTL of every key, bytes per finalised
    bucket minard:chan:<name>:<H>:<b> per name, and the projected steady-state memory
    (the formula is printed with the figures).

    .venv/bin/python bench/bench_store.py                                   # 1k, 10k, 100k ev/s, 300 s each
    .venv/bin/python bench/bench_store.py --duration 60 --rates 1000        # quick check (~2 min)
    .venv/bin/python bench/bench_store.py --rates 1000 --duration 600 --json store.json

Every process started here is in its own process group and is stopped (TERM, then KILL)
when the bench ends, fails or is interrupted (Ctrl-C, SIGTERM).
"""
import argparse
import ctypes
import glob
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.support import ReplyError, encode_command, read_reply  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Goals from the issue.
GOAL_CPU_PCT = 5.0  # Redis main thread at 1 kHz, % of a core, flat
GOAL_SLOWEST_MS = 5.0
GOAL_FLUSH_P99_MS = 20.0
GOAL_BUCKET_BYTES = 50 * 1000
GOAL_PROJECTED_BYTES = 1e9
#: SPEC retention of finalised per-channel buckets.
NAMES = ("occupancy", "cmos", "base")
HASH_INTERVALS = (5, 60, 86400)
HASH_EXPIRE = 1200
STATS_PERIOD = 0.5
CPU_PERIOD = 10.0
PULL_WORKERS = 4
CONSUMERS = {"cmos": 2, "base": 2}
DATA_PORTS = {"cmos": 5557, "base": 5558}  # production's (data_consumer.PORT_KINDS)


class Interrupted(Exception):
    pass


def _on_sigterm(signum, frame):
    raise Interrupted("signal %d" % signum)


# -- a small blocking Redis client on one connection -------------------------------------

class Redis:
    def __init__(self, port, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def pipeline(self, commands):
        if not commands:
            return []
        self.sock.sendall(b"".join(encode_command(c) for c in commands))
        return [read_reply(self.f) for _ in commands]

    def __call__(self, *args):
        reply = self.pipeline([args])[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def info(self, section):
        text = self("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)




def text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# -- processes ---------------------------------------------------------------------------

_libc = None


def _child_setup():
    """In the child: its own process group (session), and KILL when the bench dies
    without its clean-up (kill -9): a TERM-ed role may wait a long time for a Redis that
    died with the bench."""
    os.setsid()
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(host, port):
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


#: --redis-nice: the nice value of redis-server (None: inherited).
REDIS_NICE = None


def private_loopback():
    """An address 127.a.b.c (not 127.0.0.1) on which 5557 and 5558 are free."""
    rng = random.Random()
    for _ in range(50):
        host = "127.%d.%d.%d" % (rng.randint(1, 254), rng.randint(0, 255), rng.randint(2, 254))
        if all(port_free(host, p) for p in DATA_PORTS.values()):
            return host
    raise RuntimeError("no loopback address with ports 5557 and 5558 free")


class Child:
    """A process of the bench, in its own process group, logging to a file."""

    def __init__(self, name, argv, logdir, env=None):
        self.name = name
        self.argv = argv
        self.logfile = os.path.join(logdir, name + ".log")
        environ = dict(os.environ)
        environ["PYTHONPATH"] = REPO + (os.pathsep + environ["PYTHONPATH"]
                                        if environ.get("PYTHONPATH") else "")
        environ["PYTHONUNBUFFERED"] = "1"
        environ.pop("SUPERVISOR_PROCESS_NAME", None)
        environ.update(env or {})
        with open(self.logfile, "ab") as log:
            self.process = subprocess.Popen(argv, cwd=REPO, env=environ, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=_child_setup)
        self.pid = self.process.pid

    def alive(self):
        return self.process.poll() is None

    def signal_group(self, signum):
        try:
            os.killpg(self.pid, signum)  # the child is its group's leader (setsid)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self, n=15):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def cpu(self):
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (OSError, IndexError):
            return float("nan")


def stop_children(children, grace=12.0):
    """TERM every group, wait (bounded), then KILL what is left; Redis last.
    Returns the names of the processes that had to be killed."""
    roles = [c for c in children if c.name != "redis-server"]
    redis = [c for c in children if c.name == "redis-server"]
    killed = []
    for group, wait in ((roles, grace), (redis, 5.0)):
        for c in group:
            if c.alive():
                c.signal_group(signal.SIGTERM)
        deadline = time.time() + wait
        for c in group:
            try:
                c.process.wait(max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for c in group:
            if c.process.poll() is None:
                killed.append(c.name)
            c.signal_group(signal.SIGKILL)  # also whatever the child may have left behind
            if c.process.poll() is None:
                c.process.kill()
            c.process.wait()
    return killed


def twistd():
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(candidate):
        return [candidate]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def role(name, role_name, args, logdir, env=None):
    argv = twistd() + ["-n", "--pidfile=", "--logfile=-", "minard", "--role=" + role_name]
    return Child(name, argv + list(args), logdir, env)


# -- the system --------------------------------------------------------------------------

class System:
    def __init__(self, rate, workdir):
        self.rate = rate
        self.dir = workdir
        self.children = []
        self.redis = None

    def start(self):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RuntimeError("redis-server is not installed")
        self.redis_port = free_port()
        data = os.path.join(self.dir, "redis")
        os.makedirs(data, exist_ok=True)
        redis = Child("redis-server", [
            binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", data,
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "notice",
            "--maxmemory", "8gb", "--maxmemory-policy", "noeviction",
            "--lazyfree-lazy-eviction", "yes", "--lazyfree-lazy-expire", "yes",
            "--tcp-keepalive", "300"], self.dir)
        self.children.append(redis)
        if REDIS_NICE is not None:  # Redis ahead of the 12 Python processes for a CPU
            os.setpriority(os.PRIO_PROCESS, redis.pid, REDIS_NICE)
        deadline = time.time() + 10
        while True:
            try:
                self.redis = Redis(self.redis_port)
                if self.redis("PING") == "PONG":
                    break
            except OSError:
                if time.time() > deadline or not redis.alive():
                    raise RuntimeError("redis-server did not start:\n" + redis.tail())
                time.sleep(0.05)
        self.started = time.time()  # the roles start now: per-flush keys accrue from here
        url = "redis://127.0.0.1:%d/0" % self.redis_port
        dispatcher, dataserver, events = free_port(), free_port(), free_port()
        host = private_loopback()
        zmq = {kind: "tcp://%s:%d" % (host, port) for kind, port in DATA_PORTS.items()}
        events_zmq = "tcp://127.0.0.1:%d" % events
        common = ["--redis", url]
        self.endpoints = {"redis": url, "dispatcher": dispatcher, "dataserver": dataserver,
                          "events": events_zmq, "cmos": zmq["cmos"], "base": zmq["base"]}
        start = [
            ("simulator", "simulator", [
                "--dispatcher-listen", "tcp:%d:interface=127.0.0.1" % dispatcher,
                "--data-listen", "tcp:%d:interface=127.0.0.1" % dataserver,
                "--rate", "%g" % self.rate, "--seed", "1"], None),
        ]
        start += [("dispatch-pull-%d" % i, "dispatch-pull",
                   ["--zmq", events_zmq, "--name", "dispatch-pull-%d" % i], None)
                  for i in range(PULL_WORKERS)]
        for kind, n in CONSUMERS.items():
            start += [("data-consumer-%s-%d" % (kind, i), "data-consumer", ["--zmq", zmq[kind]],
                       {"SUPERVISOR_PROCESS_NAME": "data-consumer-%s-%d" % (kind, i)})
                      for i in range(n)]
        start += [
            ("dispatch-push", "dispatch-push", ["--port", str(dispatcher), "--zmq", events_zmq],
             None),
            ("data-producer", "data-producer", [
                "--port", str(dataserver), "--cmos-zmq", zmq["cmos"], "--base-zmq", zmq["base"]],
             None),
        ]
        for name, role_name, args, env in start:
            self.children.append(role(name, role_name, common + args, self.dir, env))
        self.pulls = ["dispatch-pull-%d" % i for i in range(PULL_WORKERS)]
        self.consumers = ["data-consumer-%s-%d" % (kind, i)
                          for kind, n in CONSUMERS.items() for i in range(n)]
        return self

    def check_alive(self):
        for c in self.children:
            if not c.alive():
                raise RuntimeError("%s exited (code %s); the end of its log (%s):\n%s"
                                   % (c.name, c.process.returncode, c.logfile, c.tail()))

    def stop(self):
        if self.redis is not None:
            self.redis.close()
        started = time.time()
        killed = stop_children(self.children)
        log("  every process stopped in %.1f s%s" % (
            time.time() - started, "; killed after %g s: %s" % (12.0, ", ".join(killed))
            if killed else " (all exited on TERM)"))

    def child(self, name):
        return next(c for c in self.children if c.name == name)


# -- figures -----------------------------------------------------------------------------

def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(math.ceil(q * len(values))) - 1))]


def slope_per_minute(points):
    """Least-squares slope of [(t seconds, value)] in value units per minute."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return float("nan")
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / den


def schedstat(pid):
    """(ns on a CPU, ns waiting on a run queue) of a process's main thread."""
    try:
        with open("/proc/%d/task/%d/schedstat" % (pid, pid)) as f:
            on_cpu, waiting, _ = f.read().split()
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return float("nan"), float("nan")


def commandstats(redis):
    """command -> (calls, usec) from INFO commandstats."""
    out = {}
    for name, value in redis.info("commandstats").items():
        if name.startswith("cmdstat_"):
            fields = dict(kv.split("=", 1) for kv in value.split(","))
            out[name[8:]] = (int(fields["calls"]), int(fields["usec"]))
    return out


def main_thread_cpu(info):
    return float(info["used_cpu_sys_main_thread"]) + float(info["used_cpu_user_main_thread"])


def all_thread_cpu(info):
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def script_names():
    """SHA1 -> .lua file name of every script minard sends (constants substituted)."""
    names = {}
    for path in glob.glob(os.path.join(REPO, "minard", "store", "*.lua")):
        with open(path, "rb") as f:
            names[hashlib.sha1(f.read()).hexdigest()] = os.path.basename(path)
    try:  # the exact texts (templates with their constants), as the modules build them
        import importlib

        from minard.store.scripts import Script
        for module in ("minard.stats", "minard.store.events", "minard.store.channels",
                       "minard.store.datastream", "minard.store.reads",
                       "minard.store.logserver", "minard.store.analyses", "minard.store.runs",
                       "minard.store.health", "minard.store.acks"):
            m = importlib.import_module(module)
            for value in vars(m).values():
                if isinstance(value, Script):
                    names[value.sha] = value.filename
    except Exception as e:  # noqa: BLE001 -- the raw file digests still name most
        print("  (could not import the scripts' modules to name their digests: %s)" % (e,))
    return names


def describe_command(args, names):
    """'EVALSHA parts_write.lua minard:writers:occupancy ...', truncated."""
    args = [text(a) for a in args]
    if not args:
        return "?"
    out = [args[0].upper()]
    rest = args[1:]
    if out[0] == "EVALSHA" and rest:
        out.append(names.get(rest[0].lower(), rest[0][:12]))
        rest = rest[2:]  # numkeys
    elif out[0] == "EVAL" and rest:  # the slowlog truncates the text: show its start
        out.append("<script %r>" % rest[0][:30])
        rest = rest[2:]
    if rest:
        out.append(rest[0][:50])
    s = " ".join(out)
    return s if len(s) <= 100 else s[:97] + "..."


def stats_fields(redis, processes, fields):
    replies = redis.pipeline([["HMGET", "minard:stats:" + p] + fields for p in processes])
    out = {}
    for p, reply in zip(processes, replies):
        if isinstance(reply, list):
            out[p] = [text(v) for v in reply]
    return out


def stats_all(redis):
    out = {}
    for key in redis("KEYS", "minard:stats:*") or []:
        key = text(key)
        flat = redis("HGETALL", key) or []
        out[key.split(":", 2)[2]] = {text(flat[i]): text(flat[i + 1])
                                     for i in range(0, len(flat), 2)}
    return out


def fnum(v, default=0.0):
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


# -- memory ------------------------------------------------------------------------------

TS_KEY = re.compile(r"^ts:(\d+):(\d+):(.+)$")
LAST_KEY = re.compile(r"^minard:last:(\d+):(\d+)$")
PART_KEY = re.compile(r"^minard:part:([^:]+):(\d+):(\d+)$")
CHAN_KEY = re.compile(r"^minard:chan:([^:]+):(\d+):(\d+)$")


def scan_keys(redis):
    cursor, keys = b"0", []
    while True:
        cursor, batch = redis("SCAN", cursor, "COUNT", 1000)
        keys += [text(k) for k in batch]
        if cursor in (b"0", "0"):
            return keys


def measure_memory(redis, elapsed, chan_sample):
    """Bytes (MEMORY USAGE SAMPLES 0) and TTL of every key, grouped, and the projection.

    elapsed: seconds since the roles started (for the per-flush keys' creation rate).
    """
    keys = scan_keys(redis)
    chan = [k for k in keys if CHAN_KEY.match(k)]
    by_name = {}
    for k in chan:
        by_name.setdefault(CHAN_KEY.match(k).group(1), []).append(k)
    sampled = set()
    for name, ks in by_name.items():
        sampled.update(random.sample(ks, min(chan_sample, len(ks))))
    usage, ttl, strlen = {}, {}, {}
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        replies = redis.pipeline([["MEMORY", "USAGE", k, "SAMPLES", "0"] for k in chunk]
                                 + [["TTL", k] for k in chunk])
        for j, k in enumerate(chunk):
            u, t = replies[j], replies[len(chunk) + j]
            if isinstance(u, int):
                usage[k] = u
                ttl[k] = t if isinstance(t, int) else -2
    for k in sampled:
        strlen[k] = redis("STRLEN", k)
    info = redis.info("memory")
    used = int(info["used_memory"])
    total_keys = sum(usage.values())

    finalised = {}
    for name in NAMES:
        ks = [k for k in by_name.get(name, []) if k in sampled and k in usage]
        sizes = [usage[k] for k in ks]
        per_h = {}
        for k in by_name.get(name, []):
            per_h[int(CHAN_KEY.match(k).group(2))] = per_h.get(int(CHAN_KEY.match(k).group(2)), 0) + 1
        finalised[name] = {
            "keys": len(by_name.get(name, [])), "keys_per_interval": per_h,
            "sampled": len(sizes),
            "mean_bytes": sum(sizes) / len(sizes) if sizes else float("nan"),
            "max_bytes": max(sizes) if sizes else float("nan"),
            "blob_bytes": max((strlen[k] for k in ks), default=0),
        }
    means = [f["mean_bytes"] for f in finalised.values() if f["sampled"]]
    fallback = sum(means) / len(means) if means else float("nan")
    finalised_projected = sum(
        len(HASH_INTERVALS) * HASH_EXPIRE * (f["mean_bytes"] if f["sampled"] else fallback)
        for f in finalised.values())
    finalised_measured = sum(usage.get(k, 0) for k in chan)

    # bucketed groups: (pattern, interval) -> buckets, bytes, largest TTL left
    groups = {}
    markers = {"keys": 0, "bytes": 0, "ttl": 0}
    other = {"keys": 0, "bytes": 0, "no_ttl": 0}
    for k, u in usage.items():
        if CHAN_KEY.match(k):
            continue
        m = TS_KEY.match(k)
        if m:
            group, interval, b = ("ts:%s:<b>:%s" % (m.group(1), m.group(3)),
                                  int(m.group(1)), m.group(2))
        elif LAST_KEY.match(k):
            m = LAST_KEY.match(k)
            group, interval, b = "minard:last:%s:<b>" % m.group(1), int(m.group(1)), m.group(2)
        elif PART_KEY.match(k):
            m = PART_KEY.match(k)
            group, interval, b = ("minard:part:%s:%s:<b>" % (m.group(1), m.group(2)),
                                  int(m.group(2)), m.group(3))
        elif k.startswith("minard:flush:"):
            markers["keys"] += 1
            markers["bytes"] += u
            markers["ttl"] = max(markers["ttl"], ttl[k])
            continue
        else:
            other["keys"] += 1
            other["bytes"] += u
            other["no_ttl"] += ttl[k] == -1
            continue
        g = groups.setdefault((group, interval), {"buckets": set(), "bytes": 0, "ttl": -2,
                                                  "keys": 0})
        g["buckets"].add(b)
        g["bytes"] += u
        g["keys"] += 1
        g["ttl"] = max(g["ttl"], ttl[k]) if ttl[k] >= 0 else (-1 if g["ttl"] < 0 else g["ttl"])
        if ttl[k] == -1:
            g["no_ttl"] = True

    def project(items):
        total, unbounded = 0.0, []
        for (group, interval), g in items:
            if g.get("no_ttl"):
                unbounded.append(group)
                total += g["bytes"]
                continue
            kept = math.ceil(max(g["ttl"], 0) / interval) + 1  # complete buckets + the open one
            g["projected"] = g["bytes"] / len(g["buckets"]) * kept
            g["kept_buckets"] = kept
            total += g["projected"]
        return total, unbounded

    parts_items = [(k, g) for k, g in groups.items() if k[0].startswith("minard:part:")]
    series_items = [(k, g) for k, g in groups.items() if not k[0].startswith("minard:part:")]
    parts_projected, parts_unbounded = project(parts_items)
    series_projected, series_unbounded = project(series_items)
    marker_rate = markers["keys"] / max(1.0, min(elapsed, markers["ttl"] or elapsed))
    marker_ttl = markers["ttl"] or 0
    markers_projected = (markers["bytes"] / markers["keys"] * marker_rate * marker_ttl
                         if markers["keys"] else 0.0)
    overhead = max(0, used - total_keys)
    projected = (finalised_projected + parts_projected + series_projected + markers_projected
                 + other["bytes"] + overhead)
    top_series = sorted(((g.get("projected", 0.0), grp) for grp, g in series_items), reverse=True)
    return {
        "keys": len(usage), "keys_bytes": total_keys, "used_memory": used,
        "used_memory_dataset": int(info.get("used_memory_dataset", 0)),
        "elapsed_s": elapsed,
        "finalised": finalised, "finalised_measured_bytes": finalised_measured,
        "finalised_projected_bytes": finalised_projected,
        "parts_keys": sum(g["keys"] for _, g in parts_items),
        "parts_measured_bytes": sum(g["bytes"] for _, g in parts_items),
        "parts_projected_bytes": parts_projected,
        "parts_groups": {grp: {"buckets": len(g["buckets"]), "bytes": g["bytes"],
                               "kept_buckets": g.get("kept_buckets"),
                               "projected": g.get("projected")}
                         for (grp, _), g in parts_items},
        "series_keys": sum(g["keys"] for _, g in series_items),
        "series_measured_bytes": sum(g["bytes"] for _, g in series_items),
        "series_projected_bytes": series_projected,
        "series_top": [(grp[0], p) for p, grp in top_series[:5]],
        "unbounded_groups": parts_unbounded + series_unbounded,
        "markers_keys": markers["keys"], "markers_bytes": markers["bytes"],
        "markers_rate": marker_rate, "markers_ttl": marker_ttl,
        "markers_projected_bytes": markers_projected,
        "other_keys": other["keys"], "other_bytes": other["bytes"],
        "other_no_ttl": other["no_ttl"], "overhead_bytes": overhead,
        "projected_bytes": projected,
    }


# -- one rate ----------------------------------------------------------------------------

def log(msg):
    print(msg, flush=True)


def mb(n):
    return n / 1e6


def run_rate(rate, args, names):
    workdir = tempfile.mkdtemp(prefix="minard-bench-store-")
    system = System(rate, workdir)
    result = {"rate": rate, "duration": args.duration, "warmup": args.warmup, "logs": workdir}
    ok = False
    try:
        system.start()
        r = system.redis
        log("rate %g ev/s: redis on port %d, logs in %s" % (rate, system.redis_port, workdir))
        # -- wait for data to flow, then warm up
        deadline = time.time() + 90
        while True:
            time.sleep(0.5)
            system.check_alive()
            st = stats_all(r)
            pull_events = sum(fnum(st.get(p, {}).get("events")) for p in system.pulls)
            consumer_flushes = [fnum(st.get(c, {}).get("flushes")) for c in system.consumers]
            if pull_events > 0 and all(f > 0 for f in consumer_flushes):
                break
            if time.time() > deadline:
                raise RuntimeError("no data after 90 s: pull events %d, consumer flushes %s; "
                                   "stats: %s" % (pull_events, consumer_flushes, sorted(st)))
        log("  data flowing; warming up %g s" % args.warmup)
        end_warmup = time.time() + args.warmup
        while time.time() < end_warmup:
            time.sleep(min(1.0, max(0.0, end_warmup - time.time())))
            system.check_alive()

        # -- the window
        r("CONFIG", "SET", "slowlog-log-slower-than", "1000")
        r("CONFIG", "SET", "slowlog-max-len", "10000")
        r("CONFIG", "SET", "latency-monitor-threshold", "5")
        r("SLOWLOG", "RESET")
        r("LATENCY", "RESET")
        watched = system.pulls + system.consumers
        fields = ["flush_latency_ms", "flushes", "updated"]
        last_seen = {}
        latencies = {p: [] for p in watched}
        st0 = stats_all(r)
        for p in watched:
            v = st0.get(p, {})
            last_seen[p] = v.get("flushes") if v.get("flushes") is not None else v.get("updated")
        cmd0 = commandstats(r)
        sched0 = schedstat(system.child("redis-server").pid)
        info0 = r.info("cpu")
        t0 = time.time()
        cpu0 = {c.name: c.cpu() for c in system.children}
        cpu_points = [(0.0, main_thread_cpu(info0), all_thread_cpu(info0),
                       int(r.info("memory")["used_memory"]))]
        open_max = {n: 0 for n in NAMES}
        end = t0 + args.duration
        next_stats, next_cpu, next_print = t0, t0 + CPU_PERIOD, t0 + 60
        log("  measuring %g s from %s" % (args.duration, time.strftime("%H:%M:%S",
                                                                     time.localtime(t0))))
        while True:
            now = time.time()
            if now >= end:
                break
            if now >= next_stats:
                for p, (lat, flushes, updated) in stats_fields(r, watched, fields).items():
                    # a new flush: its counter moved (or, without one, a new snapshot)
                    marker = flushes if flushes is not None else updated
                    if lat is None or marker == last_seen.get(p):
                        continue
                    last_seen[p] = marker
                    latencies[p].append(float(lat))
                next_stats += STATS_PERIOD
            if now >= next_cpu:
                info = r.info("cpu")
                cpu_points.append((now - t0, main_thread_cpu(info), all_thread_cpu(info),
                                   int(r.info("memory")["used_memory"])))
                for n, z in zip(NAMES, r.pipeline([["ZCARD", "minard:open:" + n]
                                                   for n in NAMES])):
                    open_max[n] = max(open_max[n], z if isinstance(z, int) else 0)
                system.check_alive()
                next_cpu += CPU_PERIOD
            if now >= next_print:
                a = cpu_points[-1]
                p_all = [v for vs in latencies.values() for v in vs]
                log("  %3.0f s: redis main thread %.2f%% of a core so far, used_memory %.1f MB, "
                    "flush p99 %.1f ms so far" % (
                        a[0], 100 * (a[1] - cpu_points[0][1]) / max(a[0], 1e-9), mb(a[3]),
                        percentile(p_all, 0.99)))
                next_print += 60
            time.sleep(max(0.0, min(next_stats, next_cpu, end) - time.time()))
        t1 = time.time()
        info1 = r.info("cpu")
        sched1 = schedstat(system.child("redis-server").pid)
        cmd1 = commandstats(r)
        cpu_points.append((t1 - t0, main_thread_cpu(info1), all_thread_cpu(info1),
                           int(r.info("memory")["used_memory"])))
        cpu1 = {c.name: c.cpu() for c in system.children}
        slowlog = r("SLOWLOG", "GET", "-1") or []
        latency_latest = r("LATENCY", "LATEST") or []
        st1 = stats_all(r)
        system.check_alive()
        wall = t1 - t0

        # -- Redis CPU
        main = (cpu_points[-1][1] - cpu_points[0][1]) / wall * 100
        all_threads = (cpu_points[-1][2] - cpu_points[0][2]) / wall * 100
        intervals = []  # (midpoint s, % of a core) per 10-s sample
        for a, b in zip(cpu_points, cpu_points[1:]):
            if b[0] - a[0] > 0.5:
                intervals.append(((a[0] + b[0]) / 2, 100 * (b[1] - a[1]) / (b[0] - a[0])))
        per_minute = []
        for k in range(int(math.ceil(wall / 60 - 1e-6))):
            lo, hi = 60 * k, min(60 * (k + 1), wall)
            a = min(cpu_points, key=lambda p: abs(p[0] - lo))
            b = min(cpu_points, key=lambda p: abs(p[0] - hi))
            if b[0] - a[0] > 5:
                per_minute.append({"minute": k + 1, "seconds": round(b[0] - a[0], 1),
                                   "pct": 100 * (b[1] - a[1]) / (b[0] - a[0]),
                                   "used_memory": b[3]})
        slope = slope_per_minute(intervals)
        change = slope * wall / 60 if slope == slope else float("nan")
        flat = (change == change) and abs(change) <= max(0.5, 0.2 * main)

        # -- the main thread's time on a CPU and waiting for one (the machine is shared:
        # a command's wall time in the slowlog includes the waits)
        sched = {"on_cpu_ms_per_s": (sched1[0] - sched0[0]) / 1e6 / wall,
                 "run_queue_ms_per_s": (sched1[1] - sched0[1]) / 1e6 / wall}
        commands = []
        for name, (calls, usec) in cmd1.items():
            c0, u0 = cmd0.get(name, (0, 0))
            if calls > c0:
                commands.append({"command": name, "calls_per_s": (calls - c0) / wall,
                                 "us_per_call": (usec - u0) / (calls - c0),
                                 "ms_per_s": (usec - u0) / 1000.0 / wall})
        commands.sort(key=lambda c: -c["ms_per_s"])

        # -- slowlog
        entries = []
        for e in slowlog:
            if isinstance(e, list) and len(e) >= 4:
                entries.append({"ms": e[2] / 1000.0, "when": e[1],
                                "command": describe_command(e[3], names)})
        entries.sort(key=lambda x: -x["ms"])
        by_command = {}
        for e in entries:
            what = " ".join(e["command"].split()[:2]) if e["command"].startswith("EVAL") \
                else e["command"].split()[0]
            c = by_command.setdefault(what, {"entries": 0, "total_ms": 0.0, "max_ms": 0.0})
            c["entries"] += 1
            c["total_ms"] += e["ms"]
            c["max_ms"] = max(c["max_ms"], e["ms"])
        latency = [{"event": text(e[0]), "latest_ms": e[2], "max_ms": e[3]}
                   for e in latency_latest if isinstance(e, list) and len(e) >= 4]

        # -- flush latency
        def lat_summary(values, p_names):
            flushes = sum(fnum(st1.get(p, {}).get("flushes")) - fnum(st0.get(p, {}).get("flushes"))
                          for p in p_names)
            return {"samples": len(values), "flushes": int(flushes),
                    "p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
                    "max": max(values) if values else float("nan")}
        pull_lat = [v for p in system.pulls for v in latencies[p]]
        cons_lat = [v for p in system.consumers for v in latencies[p]]
        flush = {"all": lat_summary(pull_lat + cons_lat, watched),
                 "pull": lat_summary(pull_lat, system.pulls),
                 "consumer": lat_summary(cons_lat, system.consumers)}

        # -- events: the window's whole seconds, once the pull workers have flushed them
        first, last = int(math.ceil(t0)), int(t1) - 1
        time.sleep(3.0)
        totals = r.pipeline([["HGET", "ts:1:%d:trig" % s, "TOTAL"] for s in range(first, last + 1)])
        counted = sum(int(v) for v in totals if isinstance(v, bytes))
        seconds_with_data = sum(1 for v in totals if isinstance(v, bytes))
        window_seconds = last - first + 1
        push0, push1 = st0.get("dispatch-push", {}), st1.get("dispatch-push", {})
        events = {
            "window_seconds": window_seconds, "sent": int(round(rate * window_seconds)),
            "counted": counted, "seconds_with_data": seconds_with_data,
            "push_received": int(fnum(push1.get("records")) - fnum(push0.get("records"))),
            "push_received_per_s": (fnum(push1.get("records")) - fnum(push0.get("records")))
            / max(1e-9, fnum(push1.get("updated")) - fnum(push0.get("updated"))),
            "counted_per_s": counted / max(1, window_seconds),
            "pull_events": int(sum(fnum(st1.get(p, {}).get("events"))
                                   - fnum(st0.get(p, {}).get("events")) for p in system.pulls)),
            "push_dropped": int(fnum(push1.get("dropped_records"))),
            "pull_dropped": int(sum(fnum(st1.get(p, {}).get("dropped_events"))
                                    for p in system.pulls)),
            "corrupt": int(sum(fnum(v.get("corrupt")) for v in st1.values())),
            "consumer_dropped": int(sum(fnum(st1.get(c, {}).get(k)) for c in system.consumers
                                        for k in ("dropped_records", "dropped_samples"))),
            "finalise_errors": int(sum(fnum(v.get("finalise_errors")) for v in st1.values())),
            "flush_errors": int(sum(fnum(v.get("flush_errors")) for v in st1.values())),
        }

        # -- processes' CPU over the window
        procs = {c.name: 100 * (cpu1[c.name] - cpu0[c.name]) / wall for c in system.children}

        # -- memory (after the window: its reads are not in the figures above)
        memory = measure_memory(r, time.time() - system.started, args.chan_sample)

        result.update({
            "window_s": wall,
            "redis_cpu_main_pct": main, "redis_cpu_all_threads_pct": all_threads,
            "redis_cpu_per_minute": per_minute,
            "redis_cpu_10s": [{"t": round(t, 1), "pct": p} for t, p in intervals],
            "redis_cpu_slope_pp_per_min": slope, "redis_cpu_change_pp": change,
            "redis_cpu_flat": flat, "redis_main_thread_sched": sched,
            "redis_commands": commands,
            "slowlog_count": len(entries), "slowest_ms": entries[0]["ms"] if entries else 0.0,
            "slowlog_top": entries[:5], "slowlog_by_command": by_command,
            "latency_latest": latency,
            "flush_latency_ms": flush, "events": events, "process_cpu_pct": procs,
            "open_buckets_max": open_max, "memory": memory,
            "loadavg": os.getloadavg(),
        })
        report(result)
        ok = True
        return result
    finally:
        # a second Ctrl-C or a TERM must not cut the clean-up short (it is bounded)
        previous = {s: signal.signal(s, signal.SIG_IGN)
                    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            system.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
            result["logs"] = None
        elif not ok:
            log("  (logs kept in %s)" % workdir)


# -- output ------------------------------------------------------------------------------

def report(r):
    m = r["memory"]
    ev = r["events"]
    log("")
    log("== %g events/s: %.0f s window after %g s warm-up ==" % (r["rate"], r["window_s"],
                                                                r["warmup"]))
    log("Redis CPU, main thread: %.2f%% of a core (all threads %.2f%%)"
        % (r["redis_cpu_main_pct"], r["redis_cpu_all_threads_pct"]))
    log("  per minute: " + ", ".join("%d: %.2f%% (%s%.0f MB used)" % (
        p["minute"], p["pct"], "" if p["seconds"] >= 59 else "%.0f s, " % p["seconds"],
        mb(p["used_memory"])) for p in r["redis_cpu_per_minute"]))
    log("  10-s samples: " + " ".join("%.2f" % p["pct"] for p in r["redis_cpu_10s"]))
    log("  slope %+.3f pp/min (fitted change over the window %+.2f pp): %s"
        % (r["redis_cpu_slope_pp_per_min"], r["redis_cpu_change_pp"],
           "flat" if r["redis_cpu_flat"] else "NOT flat (|change| > max(0.5 pp, 20%% of mean))"))
    sc = r["redis_main_thread_sched"]
    log("  main thread on a CPU %.1f ms/s, waiting for a CPU %.1f ms/s (/proc schedstat)"
        % (sc["on_cpu_ms_per_s"], sc["run_queue_ms_per_s"]))
    log("  commands by time (INFO commandstats, window): " + "; ".join(
        "%s %.1f/s x %.0f us = %.1f ms/s" % (c["command"], c["calls_per_s"], c["us_per_call"],
                                             c["ms_per_s"]) for c in r["redis_commands"][:6]))
    log("Longest Redis command: %.2f ms (%d slowlog entries > 1 ms)"
        % (r["slowest_ms"], r["slowlog_count"]))
    for e in r["slowlog_top"]:
        log("  %7.2f ms  %s" % (e["ms"], e["command"]))
    if r["slowlog_by_command"]:
        log("  entries > 1 ms by command: " + "; ".join(
            "%s %d (max %.1f ms, sum %.0f ms)" % (what, c["entries"], c["max_ms"], c["total_ms"])
            for what, c in sorted(r["slowlog_by_command"].items(),
                                  key=lambda kv: -kv[1]["total_ms"])))
    if r["latency_latest"]:
        log("  LATENCY LATEST (> 5 ms): " + "; ".join(
            "%s latest %d ms max %d ms" % (e["event"], e["latest_ms"], e["max_ms"])
            for e in r["latency_latest"]))
    else:
        log("  LATENCY LATEST: no event over 5 ms")
    for kind in ("pull", "consumer", "all"):
        f = r["flush_latency_ms"][kind]
        log("flush_latency_ms %-8s p50 %6.2f  p99 %6.2f  max %6.2f  (%d flushes sampled of %d)"
            % (kind, f["p50"], f["p99"], f["max"], f["samples"], f["flushes"]))
    log("Events: simulator offered %d (%g/s x %d whole seconds), counted %d in ts:1:<s>:trig "
        "TOTAL = %.0f/s (%.2f%% of offered; %d of %d seconds have data)"
        % (ev["sent"], r["rate"], ev["window_seconds"], ev["counted"], ev["counted_per_s"],
           100.0 * ev["counted"] / max(ev["sent"], 1), ev["seconds_with_data"],
           ev["window_seconds"]))
    log("  push received %d = %.0f/s (stats), pull decoded %d; dropped: push %d, pull %d, "
        "consumers %d; corrupt %d; flush errors %d, finalise errors %d"
        % (ev["push_received"], ev["push_received_per_s"], ev["pull_events"],
           ev["push_dropped"], ev["pull_dropped"], ev["consumer_dropped"], ev["corrupt"],
           ev["flush_errors"], ev["finalise_errors"]))
    log("Process CPU over the window (%% of a core; load average %.1f %.1f %.1f):"
        % tuple(r["loadavg"]))
    log("  " + ", ".join("%s %.1f" % (n, p) for n, p in r["process_cpu_pct"].items()))
    log("Open (unfinalised) buckets at most: " + ", ".join(
        "%s %d" % kv for kv in r["open_buckets_max"].items()))
    log("Finalised per-channel buckets (MEMORY USAGE SAMPLES 0):")
    for name, f in m["finalised"].items():
        log("  %-9s %4d keys (%s), sampled %d: mean %s B, max %s B (blob %d B)" % (
            name, f["keys"], ", ".join("H=%d: %d" % kv for kv in sorted(f["keys_per_interval"].items())),
            f["sampled"], "%.0f" % f["mean_bytes"] if f["sampled"] else "-",
            "%.0f" % f["max_bytes"] if f["sampled"] else "-", f["blob_bytes"]))
    log("Memory %.0f s after the start: used_memory %.1f MB; %d keys = %.1f MB by MEMORY USAGE"
        % (m["elapsed_s"], mb(m["used_memory"]), m["keys"], mb(m["keys_bytes"])))
    log("Projected steady state (SPEC retention), the sum of:")
    log("  finalised  3 names x 3 intervals (5, 60, 86400 s) x 1200 buckets x mean bytes of the "
        "name = %.1f MB (now %.1f MB)" % (mb(m["finalised_projected_bytes"]),
                                         mb(m["finalised_measured_bytes"])))
    log("  parts      per (name, H): bytes per bucket x (ceil(TTL/H) + 1) buckets, TTL = H + 300 "
        "s: %d keys %.1f MB now -> %.1f MB" % (m["parts_keys"], mb(m["parts_measured_bytes"]),
                                                mb(m["parts_projected_bytes"])))
    log("  series     per ts:<I>:<b>:<suffix> and minard:last:<I>:<b>: bytes per bucket x "
        "(ceil(TTL/I) + 1) buckets (TTL = I x 2400, nhit samples 3600 s, nhit:hist H x 1200):")
    log("             %d keys %.1f MB now -> %.1f MB; largest: %s" % (
        m["series_keys"], mb(m["series_measured_bytes"]), mb(m["series_projected_bytes"]),
        ", ".join("%s %.1f MB" % (g, mb(p)) for g, p in m["series_top"][:3])))
    log("  markers    minard:flush:<id>: bytes per key x keys created per s x TTL: %d keys, "
        "%.2f/s x %d s -> %.1f MB" % (m["markers_keys"], m["markers_rate"], m["markers_ttl"],
                                      mb(m["markers_projected_bytes"])))
    log("  other      keys as measured (stats, writers, open sets, cmos:state, ...): %d keys "
        "%.1f MB (%d without TTL)" % (m["other_keys"], mb(m["other_bytes"]), m["other_no_ttl"]))
    log("  overhead   used_memory - sum of MEMORY USAGE, as measured: %.1f MB"
        % mb(m["overhead_bytes"]))
    if m["unbounded_groups"]:
        log("  WARNING: keys without a TTL in bucketed groups (grow without bound): %s"
            % ", ".join(m["unbounded_groups"]))
    log("  = %.3f GB projected" % (m["projected_bytes"] / 1e9))


def bucket_max(r):
    sizes = [f["max_bytes"] for f in r["memory"]["finalised"].values() if f["sampled"]]
    return max(sizes) if sizes else float("nan")


def final_table(results):
    log("")
    log("| rate ev/s | Redis main thread % core (slope pp/min) | longest cmd ms | flush p50 / p99 / "
        "max ms | bytes per finalised bucket mean / max | projected GB | counted / offered |")
    log("|---|---|---|---|---|---|---|")
    for r in results:
        f = r["flush_latency_ms"]["all"]
        means = [x["mean_bytes"] for x in r["memory"]["finalised"].values() if x["sampled"]]
        log("| %s | %.2f (%+.3f%s) | %.2f | %.1f / %.1f / %.1f | %s / %s | %.3f | %s / %s (%.1f%%) |" % (
            "{:,}".format(int(r["rate"])), r["redis_cpu_main_pct"],
            r["redis_cpu_slope_pp_per_min"], "" if r["redis_cpu_flat"] else ", not flat",
            r["slowest_ms"], f["p50"], f["p99"], f["max"],
            "{:,.0f}".format(sum(means) / len(means)) if means else "-",
            "{:,.0f}".format(bucket_max(r)) if means else "-",
            r["memory"]["projected_bytes"] / 1e9, "{:,}".format(r["events"]["counted"]),
            "{:,}".format(r["events"]["sent"]),
            100.0 * r["events"]["counted"] / max(1, r["events"]["sent"])))
    log("")
    log("Goals:")
    for r in results:
        checks = []
        if r["rate"] == 1000:
            checks.append(("Redis CPU at 1 kHz <= %g%% of a core, flat" % GOAL_CPU_PCT,
                           r["redis_cpu_main_pct"] <= GOAL_CPU_PCT and r["redis_cpu_flat"]))
        checks += [
            ("longest script <= %g ms" % GOAL_SLOWEST_MS, r["slowest_ms"] <= GOAL_SLOWEST_MS),
            ("flush_latency p99 <= %g ms" % GOAL_FLUSH_P99_MS,
             r["flush_latency_ms"]["all"]["p99"] <= GOAL_FLUSH_P99_MS),
            ("<= 50 KB per finalised bucket", bucket_max(r) <= GOAL_BUCKET_BYTES),
            ("projected <= 1 GB", r["memory"]["projected_bytes"] <= GOAL_PROJECTED_BYTES),
        ]
        log("  %g ev/s: " % r["rate"] + "; ".join("%s %s" % (n, "ok" if c else "MISSED")
                                                for n, c in checks))


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        version = subprocess.run([shutil.which("redis-server") or "redis-server", "--version"],
                                 capture_output=True, text=True).stdout.split()[2]
    except (OSError, IndexError):
        version = "?"
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except OSError:
        commit = "?"
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
            "cpu_model": model, "kernel": os.uname().release, "memory_bytes": mem,
            "python": platform.python_version(), "redis": version, "commit": commit,
            "loadavg": os.getloadavg()}


def main():
    global _libc
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,10000,100000",
                        help="comma-separated events/s (default 1000,10000,100000)")
    parser.add_argument("--duration", type=float, default=300,
                        help="measurement window per rate, s (default 300)")
    parser.add_argument("--warmup", type=float, default=30,
                        help="s of data before the window starts (default 30)")
    parser.add_argument("--chan-sample", type=int, default=200,
                        help="finalised keys per name measured with MEMORY USAGE (default 200)")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    parser.add_argument("--pulls", type=int, default=PULL_WORKERS, metavar="N",
                        help="dispatch-pull workers (default %d): Redis time per worker "
                             "for the scaling projection" % PULL_WORKERS)
    parser.add_argument("--redis-nice", type=int, default=None, metavar="N",
                        help="run redis-server at this nice value (e.g. -10, as root): what "
                             "a production host gives the one process every role waits on")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep each rate's temporary directory (process logs)")
    args = parser.parse_args()
    global REDIS_NICE
    REDIS_NICE = args.redis_nice
    if not 1 <= args.pulls <= 64:
        parser.error("--pulls: 1 to 64 workers")
    globals()["PULL_WORKERS"] = args.pulls  # read by System.start and the log line
    try:
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        parser.error("--rates: comma-separated numbers, e.g. 1000,10000")
    if not rates or any(not 0 < x <= 1_000_000 for x in rates):
        parser.error("--rates: each in (0, 1000000] events/s (the simulator's limit)")
    if args.duration < 20 or args.warmup < 0:
        parser.error("--duration at least 20 s, --warmup not negative")
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        _libc = None
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)

    exe = sys.executable
    if exe.startswith(REPO + os.sep):
        exe = os.path.relpath(exe, REPO)
    log("command: %s" % shlex.join([exe] + sys.argv))
    info = machine()
    log("machine: nproc %d, %s, %.1f GiB, Linux %s, Python %s, Redis %s, commit %s, load "
        "average %.1f %.1f %.1f at start" % (
            info["nproc"], info["cpu_model"], info["memory_bytes"] / 2 ** 30, info["kernel"],
            info["python"], info["redis"], info["commit"], *info["loadavg"]))
    log("system per rate: redis-server, simulator, dispatch-push, %d dispatch-pull, "
        "data-producer, %d CMOS + %d BASE data-consumers" % (
            PULL_WORKERS, CONSUMERS["cmos"], CONSUMERS["base"]))
    names = script_names()
    results = []
    try:
        for rate in rates:
            results.append(run_rate(rate, args, names))
    except (KeyboardInterrupt, Interrupted):
        log("interrupted: every process stopped")
        if not results:
            sys.exit(130)
    except Exception as e:  # noqa: BLE001 -- report, the processes are already stopped
        log("bench failed: %s" % (e,))
        if not results:
            sys.exit(1)
    finally:
        if results:
            final_table(results)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"command": [exe] + sys.argv, "machine": info,
                               "results": results}, f, indent=1, default=str)
                log("figures written to %s" % args.json)
    if len(results) < len(rates):
        sys.exit(1)


if __name__ == "__main__":
    main()
