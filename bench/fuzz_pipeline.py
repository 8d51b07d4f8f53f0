"""A long fuzz run of the event pipeline: mutated real records through a running
push/pull pair (issue 7 part 3; outside the normal test suite).

A ControlHost dispatcher written here (plain blocking sockets) feeds a real
`twistd minard --role=dispatch-push` and N `--role=dispatch-pull` workers writing to a
private redis-server, with real 'PMT ' records of which a fraction are damaged:

  record level (the framing is intact; the pull workers must count what is wrong):
    truncate      the record cut short anywhere            -> short_header / pmt_short /
                                                              pmt_truncated
    flip          1-8 random bit flips anywhere            -> whatever the bits make it
    nhit_lie      NPmtHit larger than the hits that follow -> pmt_truncated
    nhit_shrink   NPmtHit smaller (undetectable: an event with fewer hits)
    crate_lie     a hit's crate set to 20-31               -> hit_bad_crate (per hit)
    tail          bytes appended after the hits (valid: ignored)
    garbage       0-300 random bytes as a RAWDATA payload
  stream level (the push side must count them and reconnect):
    size_lie      a frame size < 0 or > 130000             -> corrupt_stream, reconnect
    cut           the dispatcher dies in the middle of a frame -> partial_frames_dropped
    junk_tag      a frame with a tag nobody subscribed to  -> ignored_frames

Every record sent is classified here, independently of minard, by the rules of SPEC
§2.2-2.3a (header, 'PMT ' id, 44 + 12·NPmtHit bytes, crate < 20; an orphan — trigger word
0 and gtid 0 — is no event; the FEC/D's hits, crate 17 card 15, are not in nhit; an
'RHDR' needs its 18 words). The pool holds orphans, FEC/D hits and run headers (some too
short). At the end the run checks that both kinds of process are alive and that minard's
counters equal the expected ones exactly: every corrupt record counted under its kind,
every event, orphan hit and FEC/D hit in Redis, nothing else.

    .venv/bin/python bench/fuzz_pipeline.py --seconds 180
    .venv/bin/python bench/fuzz_pipeline.py --seconds 30 --rate 20000 --workers 3 --seed 7

Exit status 0 when everything adds up, 1 otherwise.
"""
import argparse
import os
import random
import socket
import struct
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from minard.constants import MAX_RECORD_SIZE  # noqa: E402
from minard.wire.controlhost import CASPUR  # noqa: E402
from minard.wire.sno import pmt_record  # noqa: E402
from tests.support import RedisServer, RoleProcess, SyncRedis, free_port  # noqa: E402

PMT_ID = 0x504D5420
RHDR_ID = 0x52484452
RECORD_KINDS = ["truncate", "flip", "nhit_lie", "nhit_shrink", "crate_lie", "tail", "garbage"]
STREAM_KINDS = ["size_lie", "cut", "junk_tag"]
#: The pull workers' per-record corrupt kinds (minard:stats:<pull> corrupt_<kind>).
DETECTED = ["short_header", "pmt_short", "pmt_truncated", "rhdr_short"]
FECD = {4: "N16", 17: "20LB", 19: "20", 28: "100L", 29: "100M", 31: "100H"}


# -- an independent reading of SPEC §2.2-2.3 -----------------------------------------------

def classify(record):
    """(kind, nhit, bad_crate_hits, {FEC/D field: hits}): kind is 'event', 'orphan',
    'run_header', 'other' or a corrupt kind; nhit leaves the FEC/D's hits out."""
    if len(record) < 12:
        return "short_header", 0, 0, {}
    rid = struct.unpack_from(">I", record, 0)[0]
    if rid == RHDR_ID:
        return ("run_header" if len(record) >= 12 + 72 else "rhdr_short"), 0, 0, {}
    if rid != PMT_ID:
        return "other", 0, 0, {}
    if len(record) < 56:
        return "pmt_short", 0, 0, {}
    hits = struct.unpack_from(">H", record, 26)[0]
    if len(record) < 56 + 12 * hits:
        return "pmt_truncated", 0, 0, {}
    bad, nhit, fecd = 0, 0, {}
    for i in range(hits):
        word1 = struct.unpack_from(">I", record, 56 + 12 * i)[0]
        crate, card, channel = (word1 >> 21) & 0x1F, (word1 >> 26) & 0xF, (word1 >> 16) & 0x1F
        if crate >= 20:
            bad += 1
        if (crate, card) == (17, 15):
            if channel in FECD:
                fecd[FECD[channel]] = fecd.get(FECD[channel], 0) + 1
        else:
            nhit += 1
    w3, w4 = struct.unpack_from(">II", record, 44)
    orphan = (w3 & 0xFFFFFF) == 0 and ((w3 >> 24) | (w4 & 0x7FFFF) << 8) == 0
    return ("orphan" if orphan else "event"), nhit, bad, fecd


# -- records and their mutations ------------------------------------------------------------

def real_records(rng, n):
    """Records as the detector writes them: random run/gtid/trigger, 0-60 hits, FEC/D
    hits in a third of them, orphans (trigger word 0, gtid 0) and polling flags."""
    out = []
    for i in range(n):
        hits = [(rng.randrange(19), rng.randrange(16), rng.randrange(32), rng.randrange(2048))
                for _ in range(rng.choice([0, 1, 3, 10, 25, 60]))]
        if rng.random() < 0.3:
            hits += [(17, 15, ch, rng.randrange(2048)) for ch in FECD if rng.random() < 0.5]
        gtid, trig = i + 1, rng.randrange(1 << 27)
        if rng.random() < 0.03:
            gtid, trig = 0, 0
        out.append(pmt_record(rng.randrange(1 << 20), gtid, trig, hits,
                              subrun=rng.randrange(100), clock10=rng.randrange(1 << 53),
                              clock50=rng.randrange(1 << 43), polling=rng.random() < 0.05))
    return out


def mutate(rng, record, kind):
    if kind == "truncate":
        return record[:rng.randrange(len(record))]
    if kind == "flip":
        data = bytearray(record)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "nhit_lie":
        nhit = struct.unpack_from(">H", record, 26)[0]
        lie = min(0xFFFF, nhit + rng.randint(1, 2000))
        return record[:26] + struct.pack(">H", lie) + record[28:]
    if kind == "nhit_shrink":
        nhit = struct.unpack_from(">H", record, 26)[0]
        return record[:26] + struct.pack(">H", rng.randrange(nhit + 1)) + record[28:]
    if kind == "crate_lie":
        nhit = struct.unpack_from(">H", record, 26)[0]
        if not nhit:
            return record
        at = 56 + 12 * rng.randrange(nhit)
        word = struct.unpack_from(">I", record, at)[0]
        word = (word & ~(0x1F << 21)) | rng.randint(20, 31) << 21
        return record[:at] + struct.pack(">I", word & 0xFFFFFFFF) + record[at + 4:]
    if kind == "tail":
        return record + bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    if kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    raise ValueError(kind)


class Expected:
    """What minard must count, from what was sent."""

    def __init__(self):
        self.records = 0          # RAWDATA/RECHDR frames delivered whole
        self.kinds = {}           # classify() kind -> records
        self.nhit = 0
        self.orphan_hits = 0
        self.fecd = {}
        self.bad_crate = 0
        self.mutations = {}       # mutation kind -> times sent
        self.corrupt_stream = 0
        self.partial = 0
        self.ignored = 0

    def record(self, record):
        kind, nhit, bad, fecd = classify(record)
        self.records += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if kind == "event":
            self.nhit += nhit
        elif kind == "orphan":
            self.orphan_hits += nhit
        for field, n in fecd.items():
            self.fecd[field] = self.fecd.get(field, 0) + n
        self.bad_crate += bad

    def mutated(self, kind):
        self.mutations[kind] = self.mutations.get(kind, 0) + 1


# -- the dispatcher ---------------------------------------------------------------------------

class Dispatcher:
    """Accepts the push's connections one after another; sends what it is told."""

    def __init__(self, port):
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(4)
        self.server.settimeout(60)
        self.conn = None
        self.connections = 0

    def accept(self):
        conn, _ = self.server.accept()
        conn.settimeout(30)
        handshake = b""
        while b"MyId" not in handshake:
            data = conn.recv(4096)
            if not data:
                raise RuntimeError("the push closed the connection during the handshake")
            handshake += data
        if not handshake.startswith(CASPUR.frame("Subscrib", b"w RAWDATA w RECHDR")):
            raise RuntimeError("unexpected handshake %r" % handshake[:80])
        self.conn = conn
        self.connections += 1

    def send(self, data):
        self.conn.sendall(data)

    def wait_for_drop(self):
        """The push must drop this connection (after a size lie)."""
        try:
            while self.conn.recv(65536):
                pass
        except OSError:
            pass
        self.conn.close()
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def stream(args, dispatcher, expected, processes, log):
    rng = random.Random(args.seed)
    pool = real_records(rng, 2000)
    rhdr = struct.pack(">III", RHDR_ID, 72, 0) + struct.pack(">18I", *range(18))
    short_rhdr = rhdr[:rng.randrange(12, len(rhdr))]
    chunk = max(1, args.rate // 50)     # frames per 20 ms
    start = time.time()
    sent = 0
    next_report = start + 10
    while time.time() - start < args.seconds:
        if dispatcher.conn is None:
            dispatcher.accept()
        frames = []
        for _ in range(chunk):
            record = pool[rng.randrange(len(pool))]
            if rng.random() < args.mutate:
                kind = rng.choice(RECORD_KINDS)
                record = mutate(rng, record, kind)
                expected.mutated(kind)
            elif rng.random() < 0.01:
                header = rhdr if rng.random() < 0.8 else short_rhdr
                frames.append(CASPUR.frame("RECHDR", header))
                expected.record(header)
            frames.append(CASPUR.frame("RAWDATA", record))
            expected.record(record)
            if rng.random() < args.junk_tags:
                tag = bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ_") for _ in range(6))
                frames.append(CASPUR.frame(tag, bytes(rng.randrange(256)
                                                      for _ in range(rng.randrange(64)))))
                expected.ignored += 1
                expected.mutated("junk_tag")
        dispatcher.send(b"".join(frames))
        sent += chunk
        if rng.random() < args.stream_faults:
            # wait until the push has forwarded everything: what follows ends the link
            if rng.random() < 0.5:
                size = rng.choice([-1, -2 ** 31, MAX_RECORD_SIZE + 1, 2 ** 31 - 1])
                dispatcher.send(b"RAWDATA\x00" + struct.pack(">i", size) + bytes(100))
                dispatcher.wait_for_drop()
                expected.corrupt_stream += 1
                expected.mutated("size_lie")
            else:
                whole = CASPUR.frame("RAWDATA", pool[rng.randrange(len(pool))])
                dispatcher.send(whole[:rng.randrange(1, len(whole))])
                time.sleep(0.05)
                dispatcher.close()
                expected.partial += 1
                expected.mutated("cut")
        # pace to the target rate
        ahead = sent / args.rate - (time.time() - start)
        if ahead > 0:
            time.sleep(ahead)
        if time.time() >= next_report:
            next_report += 10
            alive = all(p.alive() for p in processes)
            log("  %5.0f s: %d records sent, %d connections, processes alive: %s"
                % (time.time() - start, expected.records, dispatcher.connections, alive))
            if not alive:
                return
    dispatcher.close()


def stats_of(sync, name):
    return {k: float(v) for k, v in sync.hgetall("minard:stats:" + name).items()}


def stored_total(sync, field="TOTAL", suffix="trig"):
    total = 0
    for key in sync.command("KEYS", "ts:1:*:" + suffix):
        value = sync.command("HGET", key, field) if field else sync.command("GET", key)
        total += int(value or 0)
    return total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180, help="how long to fuzz")
    parser.add_argument("--rate", type=int, default=5000, help="records per second")
    parser.add_argument("--workers", type=int, default=2, help="pull workers")
    parser.add_argument("--mutate", type=float, default=0.2,
                        help="fraction of records damaged")
    parser.add_argument("--junk-tags", type=float, default=0.002,
                        help="chance of a frame with an unknown tag after each record")
    parser.add_argument("--stream-faults", type=float, default=0.002,
                        help="chance per 20-ms chunk that the link ends in a size lie or a cut")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    def log(text):
        print(text, flush=True)

    redis = RedisServer().start()
    sync = SyncRedis(redis.port)
    port = free_port()
    zmq = "tcp://127.0.0.1:%d" % free_port()
    dispatcher = Dispatcher(port)
    pulls = [RoleProcess("dispatch-pull", "--redis", redis.url, "--zmq", zmq,
                         "--name", "fuzz-pull-%d" % i).start() for i in range(args.workers)]
    push = RoleProcess("dispatch-push", "--redis", redis.url, "--host", "127.0.0.1",
                       "--port", str(port), "--zmq", zmq).start()
    processes = [push] + pulls
    expected = Expected()
    ok = True
    try:
        deadline = time.time() + 30
        while not all(sync.command("EXISTS", "minard:stats:fuzz-pull-%d" % i)
                      for i in range(args.workers)):
            if time.time() > deadline:
                raise RuntimeError("the pull workers did not start")
            time.sleep(0.1)
        time.sleep(0.5)
        log("fuzzing for %g s at %d records/s, %d%% damaged, %d pull worker(s), seed %d"
            % (args.seconds, args.rate, args.mutate * 100, args.workers, args.seed))
        started = time.time()
        stream(args, dispatcher, expected, processes, log)
        elapsed = time.time() - started

        # let everything arrive and be flushed
        events = expected.kinds.get("event", 0)
        deadline = time.time() + 60
        while time.time() < deadline:
            pull = [stats_of(sync, "fuzz-pull-%d" % i) for i in range(args.workers)]
            if (sum(s.get("records", 0) for s in pull) >= expected.records
                    and sum(s.get("flushed_events", 0) for s in pull) >= events):
                break
            time.sleep(0.5)
        time.sleep(2.5)
        pull = [stats_of(sync, "fuzz-pull-%d" % i) for i in range(args.workers)]
        push_stats = stats_of(sync, "dispatch-push")

        def pulled(key):
            return int(sum(s.get(key, 0) for s in pull))

        rows = [
            ("push: records forwarded", expected.records, int(push_stats.get("records", 0))),
            ("push: corrupt_stream (size lies)", expected.corrupt_stream,
             int(push_stats.get("corrupt_stream", 0))),
            ("push: partial_frames_dropped (cuts)", expected.partial,
             int(push_stats.get("partial_frames_dropped", 0))),
            ("push: ignored_frames (junk tags)", expected.ignored,
             int(push_stats.get("ignored_frames", 0))),
            ("push: dropped_records", 0, int(push_stats.get("dropped_records", 0))),
            ("pull: records received", expected.records, pulled("records")),
            ("pull: events", events, pulled("events")),
            ("pull: orphans", expected.kinds.get("orphan", 0), pulled("orphans")),
            ("pull: run_headers", expected.kinds.get("run_header", 0), pulled("run_headers")),
            ("pull: other_records", expected.kinds.get("other", 0), pulled("other_records")),
        ]
        rows += [("pull: corrupt_" + kind, expected.kinds.get(kind, 0),
                  pulled("corrupt_" + kind)) for kind in DETECTED]
        rows += [
            ("pull: corrupt_hit_bad_crate (hits)", expected.bad_crate,
             pulled("corrupt_hit_bad_crate")),
            ("pull: dropped_events", 0, pulled("dropped_events")),
            ("redis: TOTAL", events, stored_total(sync)),
            ("redis: TOTAL nhit", expected.nhit, stored_total(sync, suffix="trig:nhit")),
            ("redis: DISPATCH_ORPHANS", expected.orphan_hits,
             stored_total(sync, None, "DISPATCH_ORPHANS")),
        ]
        rows += [("redis: trig:fecd " + f, expected.fecd.get(f, 0),
                  stored_total(sync, f, "trig:fecd")) for f in sorted(FECD.values())]
        corrupt_sent = sum(expected.kinds.get(k, 0) for k in DETECTED)
        log("")
        log("sent %d frames in %.0f s over %d connections; damage applied: %s"
            % (expected.records + expected.ignored, elapsed, dispatcher.connections,
               ", ".join("%s %d" % kv for kv in sorted(expected.mutations.items()))))
        log("corrupt records (detectable kinds) sent: %d; counted by minard: %d"
            % (corrupt_sent, sum(pulled("corrupt_" + k) for k in DETECTED)))
        log("")
        log("%-40s %12s %12s" % ("counter", "expected", "minard"))
        for name, want, got in rows:
            flag = "" if want == got else "   <-- MISMATCH"
            ok &= want == got
            log("%-40s %12d %12d%s" % (name, want, got, flag))
        log("")
        for p in processes:
            alive = p.alive()
            ok &= alive
            log("%-14s %s" % (p.role, "alive" if alive else "DIED (exit %s)" % p.process.poll()))
            if not alive or "Traceback" in p.log():
                ok = False
                log(p.log()[-3000:])
        log("cpu seconds: push %.1f, pulls %.1f"
            % (push_stats.get("cpu_seconds", 0), sum(s.get("cpu_seconds", 0) for s in pull)))
        log("RESULT: %s" % ("OK: every corrupt record counted, nothing lost, nothing crashed"
                            if ok else "FAILED"))
    finally:
        dispatcher.close()
        for p in processes:
            p.stop()
        redis.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
