"""Channel health over a long run of the simulator's steady detector: how many findings it
makes where there is nothing to find, and what judging one bucket costs Redis.

The detector is the simulator's own model (minard.sim.detector.SyntheticDetector, with
its few hot and dead channels, and minard.sim.dataserver.CrateReadout for the CMOS and
BASE records), run faster than real time: for every 60-s bucket, --rate events a second
are built as real 'PMT ' records, decoded with minard.wire.sno and counted by the pull
worker's own accumulator (minard.aggregate.events: hits per channel of the events), and
every installed crate is read once a simulated second, its records decoded with
minard.wire.datastream. The CMOS rate of a channel is computed as SPEC §3 says (a valid,
masked-in count that went up, 0 < dt < 10 s), and each bucket's occupancy (hits /
events), mean CMOS rate and mean base current are stored where the per-channel store
keeps finalised buckets, encoded by minard.store.channels. The health service
(minard.health.service.HealthService, the default [health] thresholds) then judges the
bucket against a private redis-server, on a task.Clock set just after the bucket's end.

Measured per bucket: the Redis time of the service's round (SLOWLOG with a 0-µs
threshold, reset before the round: the sum and the longest of the commands and scripts
the service sends, TOP_LEVEL; wall time, so a Redis that waits for a CPU counts that
wait too), Redis's main-thread CPU over the round (INFO cpu), the number of commands, and
the Python time of the round. Counted over the run: findings opened
(each one a false finding on a steady detector) and alarms raised. With --faults, after
the steady run, card 3/7 is killed, channel 5/2/14 made hot and channel 2/3/4's base
current drifts (minard.sim.faults) for --fault-minutes, then healed: the bench reports
when each finding opened and closed.

With --live the same is done in real time with the real roles instead: `simulator`
(with `--control`), dispatch-push, a dispatch-pull worker, data-producer, a CMOS and a
BASE data-consumer and the log-server (default [health] thresholds, --interval buckets,
the watchdog off), against a private redis-server; --minutes of steady detector, then
the three faults through the control endpoint, then `heal`; the findings and every
alarm are printed.

    .venv/bin/python bench/bench_health.py                        # 30 min of 60-s buckets
    .venv/bin/python bench/bench_health.py --minutes 240 --faults
    .venv/bin/python bench/bench_health.py --live --minutes 30    # real time: ~37 min
"""
import argparse
import json
import os
import platform
import shlex
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from minard import constants as C  # noqa: E402
from minard.aggregate.events import SecondAccumulator  # noqa: E402
from minard.health.config import HealthConfig  # noqa: E402
from minard.health.service import HealthService  # noqa: E402
from minard.sim.dataserver import CrateReadout  # noqa: E402
from minard.sim.detector import SyntheticDetector  # noqa: E402
from minard.sim.faults import Faults  # noqa: E402
from minard.store import channels, keys  # noqa: E402
from minard.store.connection import connect  # noqa: E402
from minard.wire import datastream as ds  # noqa: E402
from minard.wire import sno  # noqa: E402
from tests.support import RedisServer, SyncRedis  # noqa: E402

N = C.N_CHANNELS
T0 = 1_800_000_000  # a multiple of 60 and of 5
FAULTS = ("kill-card 3/7", "hot 5/2/14", "drift 2/3/4 0.5")
#: What the service sends Redis itself (store/health.py): its two scripts (ready, apply),
#: the MGET of the finalised buckets, the HGETALL of the masks and the SETs that stage
#: the baselines and open findings. (The bench's own SETs of the finalised buckets come
#: before the round's SLOWLOG RESET.)
TOP_LEVEL = ("eval", "evalsha", "mget", "hgetall", "set")


class SimulatedBuckets:
    """The simulator's detector, a bucket at a time."""

    def __init__(self, seed, rate, interval):
        self.detector = SyntheticDetector(seed=seed)
        self.now = float(T0)
        self.detector.faults = Faults(clock=lambda: self.now)
        self.readout = CrateReadout(self.detector)
        self.rate = rate
        self.interval = interval
        self.previous = {}  # channel -> (count, time) of its last valid count

    def cmos_rates(self, got, t):
        """(index, rate) of one CMOS record's channels with a rate (SPEC §3)."""
        out_i, out_r = [], []
        for i, count, valid, masked_in in zip(got.index.tolist(), got.count.tolist(),
                                              got.valid.tolist(), got.masked_in.tolist()):
            if not valid:
                continue  # an invalid count: no rate, the last valid pair stays
            last = self.previous.get(i)
            if last is not None and masked_in and count > last[0] and 0 < t - last[1] < C.CMOS_MAX_DT:
                out_i.append(i)
                out_r.append((count - last[0]) / (t - last[1]))
            self.previous[i] = (count, t)
        return out_i, out_r

    def bucket(self, b):
        """{name: (values, denominator)} of bucket b, simulated second by second."""
        hits = np.zeros(N)
        events = 0
        cmos_sum, cmos_n = np.zeros(N), np.zeros(N)
        base_sum, base_n = np.zeros(N), np.zeros(N)
        for s in range(self.interval):
            self.now = float(b * self.interval + s)
            # the pull worker's own accumulator: occupancy without the orphans' hits
            acc = SecondAccumulator(int(self.now))
            acc.add(sno.decode_batch(self.detector.events(int(self.rate))),
                    int(self.now * 1e6))
            occupancy, _, _ = acc.fold()
            if acc.events:
                hits += occupancy
                events += acc.events
            for crate in self.readout.crates:
                for record_id, message in self.readout.read(crate, self.now):
                    payload = message[12:]
                    if record_id == C.RECORD_CMOS:
                        index, rates = self.cmos_rates(ds.decode_cmos(payload), self.now)
                        np.add.at(cmos_sum, index, rates)
                        np.add.at(cmos_n, index, 1)
                    else:
                        got = ds.decode_base(payload)
                        np.add.at(base_sum, got.index, got.current)
                        np.add.at(base_n, got.index, 1)
        out = {"occupancy": channels.finalise_values(hits, events, "ratio")}
        out["cmos"] = channels.finalise_values(cmos_sum, cmos_n, "mean")
        out["base"] = channels.finalise_values(base_sum, base_n, "mean")
        return out


def redis_cpu(sync):
    """Redis's main-thread CPU seconds so far (INFO cpu)."""
    info = dict(line.split(":", 1) for line in sync.command("INFO", "cpu").splitlines()
                if ":" in line)
    return float(info["used_cpu_sys_main_thread"]) + float(info["used_cpu_user_main_thread"])


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


@defer.inlineCallbacks
def run(reactor, args):
    server = RedisServer().start()
    try:
        result = yield measure(server, args)
    finally:
        server.cleanup()
    return result


@defer.inlineCallbacks
def measure(server, args):
    sync = SyncRedis(server.port)
    sync.command("CONFIG", "SET", "slowlog-log-slower-than", "0")
    sync.command("CONFIG", "SET", "slowlog-max-len", "10000")
    redis = connect(server.url)
    yield redis.ping()
    config = HealthConfig(interval=args.interval)
    clock = task.Clock()
    first = T0 // args.interval
    clock.advance(first * args.interval)
    service = HealthService(redis, config, clock=clock)
    sim = SimulatedBuckets(args.seed, args.rate, args.interval)
    steady = args.minutes * 60 // args.interval
    faulty = args.fault_minutes * 60 // args.interval if args.faults else 0
    total = steady + 2 * faulty
    rounds, opened, closed, alarms_seen = [], [], [], 0
    simulate_seconds = 0.0
    for k in range(total):
        b = first + k
        if args.faults and k == steady:
            for command in FAULTS:
                sim.detector.faults.command(command)
        if args.faults and k == steady + faulty:
            sim.detector.faults.command("heal")
        started = time.perf_counter()
        data = sim.bucket(b)
        simulate_seconds += time.perf_counter() - started
        for name, (values, denominator) in data.items():
            sync.command("SET", keys.channel_final(name, args.interval, b),
                         channels.encode_final(values, denominator))
        clock.advance((b + 1) * args.interval + 2 - clock.seconds())
        before = {f["key"] for f in (service.model.findings if service.model else [])}
        cpu_before = redis_cpu(sync)
        sync.command("SLOWLOG", "RESET")
        started = time.perf_counter()
        applied = yield service.run_once()
        python_ms = (time.perf_counter() - started) * 1000
        entries = sync.command("SLOWLOG", "GET", "10000")
        cpu_us = (redis_cpu(sync) - cpu_before) * 1e6
        # the round's own commands (a script's inner commands are logged too, inside
        # the script's time: not counted again)
        commands = [(e[3][0].lower(), int(e[2])) for e in entries
                    if e[3][0].lower() in TOP_LEVEL]
        if k >= 1:  # the first round loads the (empty) state: not a judged bucket's cost
            longest = max(commands, key=lambda c: c[1], default=("-", 0))
            rounds.append({"bucket": k, "applied": applied, "redis_us": sum(us for _, us in commands),
                           "longest_us": longest[1], "longest": longest[0],
                           "cpu_us": cpu_us, "commands": len(commands), "python_ms": python_ms})
        after = {f["key"]: f for f in service.model.findings}
        for key in sorted(set(after) - before):
            opened.append((k, key, after[key]["summary"]))
        for key in sorted(before - set(after)):
            closed.append((k, key))
        alarms_seen = int(sync.command("GET", keys.ALARMS_COUNT) or 0)
        if args.verbose:
            print("bucket %3d: %s, Redis %5d us, %d open" % (k, "applied" if applied else "waiting",
                                                             rounds[-1]["redis_us"] if rounds else 0,
                                                             len(after)), flush=True)
    memory = {name: int(sync.command("MEMORY", "USAGE", keys.health_baseline(name), "SAMPLES", "0"))
              for name in ("occupancy", "cmos", "base")}
    for what, key in (("state", keys.HEALTH_STATE), ("findings", keys.HEALTH_FINDINGS)):
        memory[what] = int(sync.command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)
    redis.disconnect()
    steady_rounds = [r for r in rounds if r["bucket"] < steady]
    false_findings = [o for o in opened if o[0] < steady]
    out = {
        "command": "bench/bench_health.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": "%s, %d CPUs, Python %s" % (platform.platform(), os.cpu_count(),
                                               platform.python_version()),
        "interval": args.interval, "rate": args.rate, "steady_buckets": steady,
        "warmup_buckets": config.warmup_buckets,
        "judged_steady_buckets": max(0, steady - config.warmup_buckets),
        "false_findings": len(false_findings),
        "false_finding_list": false_findings,
        "alarms": alarms_seen,
        "redis_us_per_bucket": {
            "mean": round(sum(r["redis_us"] for r in steady_rounds) / max(1, len(steady_rounds)), 1),
            "p50": percentile([r["redis_us"] for r in steady_rounds], 0.5),
            "p99": percentile([r["redis_us"] for r in steady_rounds], 0.99),
            "max": max((r["redis_us"] for r in steady_rounds), default=None)},
        "redis_cpu_us_per_bucket": {
            "mean": round(sum(r["cpu_us"] for r in steady_rounds) / max(1, len(steady_rounds)), 1),
            "p50": round(percentile([r["cpu_us"] for r in steady_rounds], 0.5)),
            "p99": round(percentile([r["cpu_us"] for r in steady_rounds], 0.99)),
            "max": round(max(r["cpu_us"] for r in steady_rounds))},
        "longest_command_us": max((r["longest_us"] for r in rounds), default=None),
        "slowest_commands": sorted(((r["longest_us"], r["longest"], r["bucket"]) for r in rounds),
                                   reverse=True)[:3],
        "commands_per_bucket": percentile([r["commands"] for r in steady_rounds], 0.5),
        "python_ms_per_bucket": {
            "p50": round(percentile([r["python_ms"] for r in steady_rounds], 0.5), 1),
            "max": round(max(r["python_ms"] for r in steady_rounds), 1)},
        "simulation_s_per_bucket": round(simulate_seconds / max(1, total), 2),
        "redis_bytes": memory,
    }
    if args.faults:
        out["faults"] = {"put_in_at_bucket": steady, "healed_at_bucket": steady + faulty,
                         "commands": list(FAULTS),
                         "opened": [(k - steady, key, summary) for k, key, summary in opened
                                    if k >= steady],
                         "closed": [(k - steady - faulty, key) for k, key in closed
                                    if k >= steady]}
    return out


def report(out):
    print("command: %s" % out["command"])
    print("machine: %s" % out["machine"])
    print("buckets: %d steady %d-s buckets at %g events/s (%d judged after the %d-bucket warm-up)"
          % (out["steady_buckets"], out["interval"], out["rate"], out["judged_steady_buckets"],
             out["warmup_buckets"]))
    print("false findings: %d (alarms raised in all: %d)" % (out["false_findings"], out["alarms"]))
    for k, key, summary in out["false_finding_list"]:
        print("  bucket %d: %s: %s" % (k, key, "; ".join(summary)))
    r = out["redis_us_per_bucket"]
    print("Redis time per bucket (SLOWLOG, every command and script of a round): mean %s us, "
          "p50 %s us, p99 %s us, max %s us; longest single command %s us; %s commands"
          % (r["mean"], r["p50"], r["p99"], r["max"], out["longest_command_us"],
             out["commands_per_bucket"]))
    c = out["redis_cpu_us_per_bucket"]
    print("Redis main-thread CPU per round (INFO cpu, with the bench's SLOWLOG RESET): mean %s "
          "us, p50 %s us, p99 %s us, max %s us" % (c["mean"], c["p50"], c["p99"], c["max"]))
    print("slowest commands (us, command, bucket): %s" % "; ".join(
        "%d %s %d" % x for x in out["slowest_commands"]))
    p = out["python_ms_per_bucket"]
    print("Python time of a round (judging, in the log server's reactor): p50 %s ms, max %s ms"
          % (p["p50"], p["max"]))
    print("Redis memory: %s" % ", ".join("%s %d B" % kv for kv in out["redis_bytes"].items()))
    print("simulating one bucket took %s s" % out["simulation_s_per_bucket"])
    if "faults" in out:
        f = out["faults"]
        print("faults at bucket %d: %s; healed at bucket %d" % (
            f["put_in_at_bucket"], "; ".join(f["commands"]), f["healed_at_bucket"]))
        for k, key, summary in f["opened"]:
            print("  opened in fault bucket %d: %s: %s" % (k, key, "; ".join(summary)))
        for k, key in f["closed"]:
            print("  closed in healed bucket %d: %s" % (k, key))


def live(args):
    """The --live run (module docstring): prints as it goes, returns the alarms."""
    import signal
    import tempfile
    from minard.sim.faults import send
    from tests.logserver_support import write_users
    from tests.support import RoleProcess, free_port

    server = RedisServer().start()
    sync = SyncRedis(server.port)
    tmp = tempfile.mkdtemp(prefix="minard-bench-health-")
    ini = os.path.join(tmp, "minard.ini")
    with open(ini, "w") as f:
        f.write("[health]\ninterval = %d\n[watchdog]\nenabled = no\n" % args.interval)
    control = "127.0.0.1:%d" % free_port()
    dispatcher, data = free_port(), free_port()
    events, cmos, base = ["tcp://127.0.0.1:%d" % free_port() for _ in range(3)]
    roles = [
        ("simulator", "--dispatcher-listen", "tcp:%d:interface=127.0.0.1" % dispatcher,
         "--data-listen", "tcp:%d:interface=127.0.0.1" % data, "--rate", "%g" % args.rate,
         "--seed", str(args.seed), "--control", "tcp:%s:interface=127.0.0.1"
         % control.split(":")[1]),
        ("dispatch-pull", "--zmq", events, "--name", "dispatch-pull-0"),
        ("dispatch-push", "--port", str(dispatcher), "--zmq", events),
        ("data-consumer", "--zmq", cmos), ("data-consumer", "--zmq", base),
        ("data-producer", "--port", str(data), "--cmos-zmq", cmos, "--base-zmq", base),
        ("log-server", "--listen", "tcp:%d:interface=127.0.0.1" % free_port(), "--log-dir",
         tmp, "--auth-file", write_users(tmp), "--programs",
         os.path.join(REPO, "etc", "programs.ini"), "--config", ini)]
    processes = [RoleProcess(role[0], "--redis", server.url, *role[1:]).start()
                 for role in roles]
    started = time.time()

    def look(until, every):
        while time.time() - started < until:
            time.sleep(every)
            state = sync.hgetall(keys.HEALTH_STATE)
            findings = json.loads(sync.command("GET", keys.HEALTH_FINDINGS) or "[]")
            print("%5d s  bucket %s  open: %s" % (time.time() - started, state.get("position"),
                                                  ", ".join(f["key"] for f in findings) or "-"),
                  flush=True)

    try:
        steady = args.minutes * 60
        look(steady, args.interval)
        for command in FAULTS:
            print(send(control, command), flush=True)
        look(steady + 3 * args.interval + 30, args.interval)
        print(send(control, "heal"), flush=True)
        look(steady + 6 * args.interval + 60, args.interval)
        alarms = []
        for i in range(int(sync.command("GET", keys.ALARMS_COUNT) or 0)):
            text = sync.command("GET", keys.alarm(i))
            if text:
                alarms.append(json.loads(text))
        print("alarms:")
        for a in alarms:
            print("  %s level %d: %s" % (a["time"], a["level"], a["message"]))
        return alarms
    finally:
        for p in processes:
            p.signal(signal.SIGTERM)
        for p in processes:
            p.stop()
        server.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=30, help="steady minutes (default 30)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s (default 1000)")
    parser.add_argument("--interval", type=int, default=60, choices=(5, 60))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", action="store_true", help="then faults, then healed")
    parser.add_argument("--fault-minutes", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--live", action="store_true",
                        help="the real roles in real time (module docstring)")
    args = parser.parse_args()
    if args.live:
        print("command: bench/bench_health.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
        live(args)
        return

    def go(reactor):
        d = run(reactor, args)

        def done(out):
            report(out)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)
        return d.addCallback(done)

    task.react(go)


if __name__ == "__main__":
    main()
