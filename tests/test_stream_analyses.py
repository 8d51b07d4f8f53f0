"""What later SNO+ monitoring derived from the event stream (issue 13), checked end to end.

An independent ControlHost dispatcher (written here, records built field by field from
SPEC §2.2-2.3a, nothing from minard.wire) sends hand-built records for every case —
FEC/D hits, orphans with gtid 0 and events with trigger word 0 and a gtid (NONE), the
polling bit, run headers and a run change, clock jumps inside a batch and between two
batches (which, with 3 pull workers, go to different workers), a gtid jump, and
consecutive batches that are no jump — to real `dispatch-push`, N `dispatch-pull` and
`web` processes. With 1 and with 3 pull workers, every new series, histogram, run record,
per-run occupancy map and clock jump in Redis, and their JSON routes, equal what was sent.
"""
import json
import random
import struct
import time
import urllib.error
import urllib.request

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.support import RedisTestMixin, RoleProcessesMixin, free_port, wait_for
from tests.test_pipeline import TestDispatcherFactory, frame

PMT, RHDR = 0x504D5420, 0x52484452
TRIGGER_NAMES = ("100L 100M 100H 20 20LB ESUML ESUMH OWLN OWLEL OWLEH PULGT PRESCL PED "
                 "PONG SYNC EXTA EXT2 EXT3 EXT4 EXT5 EXT6 EXT7 EXT8 SRAW NCD SOFGT "
                 "MISS").split()
FECD = {4: "N16", 17: "20LB", 19: "20", 28: "100L", 29: "100M", 31: "100H"}
RUN_A, RUN_B = 250001, 250002
JUMP_50 = 7777          # ticks the 50 MHz clock is pushed by at a forced jump
TICK = 1234             # 10 MHz ticks between consecutive events (and 5x at 50 MHz)


# -- records, field by field from the SPEC ----------------------------------------------

def event_record(run, subrun, gtid, trig, hits, clock10, clock50, polling):
    """A 'PMT ' record (SPEC §2.3, §2.3a): MTC words w0..w5 hold the clocks, gtid,
    trigger word and (w5 bit 29) the polling flag."""
    w0 = clock10 & 0xFFFFFFFF
    w1 = (clock10 >> 32) & 0x1FFFFF | (clock50 & 0x7FF) << 21
    w2 = clock50 >> 11
    w3 = gtid | (trig & 0xFF) << 24
    w4 = (trig >> 8) & 0x7FFFF
    w5 = 1 << 29 if polling else 0
    body = struct.pack(">HHIIHHI", 0, 0, run, 9, subrun, len(hits), 0)
    body += struct.pack(">6I", w0, w1, w2, w3, w4, w5)
    for crate, card, channel, qhs in hits:
        body += struct.pack(">III", channel << 16 | crate << 21 | card << 26 | 0x8000,
                            qhs << 16 | 0x7FF, 0x12345678)
    return struct.pack(">III", PMT, len(body), 0) + body


def run_header(run, run_mask, first_gtid):
    """An 'RHDR' record (SPEC §2.3a): 18 u32 after the header."""
    words = [20261130, 12345678, 1, run, 3, 0x5, run_mask, 0x7FFFF, first_gtid, first_gtid]
    payload = struct.pack(">18I", *(words + [0] * 8))
    return struct.pack(">III", RHDR, len(payload), 0) + payload


# -- the script: batches of records and what they must give ------------------------------

class Script:
    """The records to send, grouped in batches (sent with pauses, so that each is one
    batch of dispatch-push), and the expected results, computed here in plain Python."""

    def __init__(self, seed):
        rng = random.Random(seed)
        self.batches = []
        self.events = []        # (run, gtid, trig, hits, c10, c50, polling, orphan)
        self.jumps = []         # (previous gtid, gtid, kind)
        gtid = 0xFFFF00         # wraps at 2^24 on the way: no jump
        c10, c50 = 5_000_000_000_000, 123_456_789_000
        pushed = 0              # forced 50 MHz offset so far
        previous = None         # the previous event (gtid, c10, c50)
        plan = [rng.choice([1, 2, 40, 90]) for _ in range(36)]
        jump_inside = 5         # batch with a jump between two of its events
        jump_across = 11        # batch whose first event jumps from the previous batch
        gtid_jump_across = 17   # batch whose first gtid skips
        backwards_inside = 23   # a 10 MHz step back inside a batch
        change = 20             # run B starts with this batch
        plan[jump_inside] = plan[backwards_inside] = 40
        self.boundaries = 0     # boundaries between consecutive gtids: no jump
        for b, size in enumerate(plan):
            records = []
            run = RUN_A if b < change else RUN_B
            if b == 0:
                records.append(run_header(RUN_A, 1 << 2, (gtid + 1) & 0xFFFFFF))
            if b == change:
                records.append(run_header(RUN_B, 1 << 5 | 1 << 2, (gtid + 1) & 0xFFFFFF))
            j = 0                # events (not orphans) of this batch so far
            for i in range(size):
                if rng.random() < 0.08:  # an orphan: trigger word 0 and gtid 0
                    hits = self.hits(rng)
                    records.append(event_record(run, 1, 0, 0, hits, 0, 0, False))
                    self.events.append((run, 0, 0, hits, 0, 0, False, True))
                    continue
                step = 1
                kind = None
                if b == gtid_jump_across and j == 0:
                    step, kind = 1000, "gtid"
                gtid = (gtid + step) & 0xFFFFFF
                d = TICK + rng.randrange(3)
                c10 += d
                c50 += 5 * d
                if (b == jump_inside and j == 10) or (b == jump_across and j == 0):
                    pushed += JUMP_50
                    kind = "clocks disagree"
                event_c10 = c10
                if b == backwards_inside and j == 1:
                    event_c10 = c10 - 100 * TICK  # one event: the next one is no jump back
                    kind = "10MHz backwards"
                elif b == backwards_inside and j == 2:
                    kind = "clocks disagree"      # 10 MHz forward again by 101 TICK
                trig = rng.choice([1 | 8, 8 | 16, 1 | 2 | 8, 1 << 10, 1 << 12, 0,
                                   1 | 2 | 4 | 8 | 64])
                polling = rng.random() < 0.15
                hits = self.hits(rng)
                event = (run, gtid, trig, hits, event_c10, c50 + pushed, polling, False)
                records.append(event_record(run, 2, gtid, trig, hits, event_c10, c50 + pushed,
                                            polling))
                if previous is not None:
                    if kind is not None:
                        self.jumps.append((previous[0], gtid, kind))
                    elif j == 0:
                        self.boundaries += 1
                self.events.append(event)
                previous = (gtid, event_c10, c50 + pushed)
                j += 1
            self.batches.append(records)

    @staticmethod
    def hits(rng):
        out = []
        for _ in range(rng.choice([0, 1, 3, 8, 20])):
            out.append((rng.randrange(19), rng.randrange(16), rng.randrange(32),
                        rng.randrange(2048)))
        for channel in FECD:
            if rng.random() < 0.3:
                out.append((17, 15, channel, rng.randrange(2048)))
        if rng.random() < 0.2:
            out.append((17, 15, 7, 5))  # a FEC/D channel that is no trigger sum
        rng.shuffle(out)
        return out

    # -- expected values, in plain Python ----------------------------------------------------

    @staticmethod
    def types(trig, polling):
        names = [TRIGGER_NAMES[b] for b in range(27) if trig >> b & 1]
        if trig == 0:
            names.append("NONE")
        if polling:
            names.append("polling")
        return names

    @staticmethod
    def pmt(hits):
        return [h for h in hits if (h[0], h[1]) != (17, 15)]

    def expected(self):
        return expected_of(self.events)


def expected_of(events):
    """What the pull workers must make of events [(run, gtid, trig, hits, c10, c50,
    polling, orphan)], in plain Python (SPEC §3)."""
    fields = {name: str(bit) for bit, name in enumerate(TRIGGER_NAMES)}
    fields.update({"NONE": "NONE", "polling": "polling", "TOTAL": "TOTAL"})
    trig, nhit, charge = {}, {}, {}
    hist = {}                  # type -> {nhit: events}
    fecd = {}
    orphans = 0
    runs = {}
    occupancy = {}             # (run, type) -> ({channel: hits}, events)
    for run, gtid, word, hits, c10, c50, polling, orphan in events:
        for c, k, ch, q in hits:
            if (c, k) == (17, 15) and ch in FECD:
                fecd[FECD[ch]] = fecd.get(FECD[ch], 0) + 1
        pmt = Script.pmt(hits)
        if orphan:
            orphans += len(pmt)
            continue
        r = runs.setdefault(run, {"events": {}, "nhit": {}})
        for name in Script.types(word, polling) + ["TOTAL"]:
            f = fields[name]
            trig[f] = trig.get(f, 0) + 1
            nhit[f] = nhit.get(f, 0) + len(pmt)
            charge[f] = charge.get(f, 0) + sum(h[3] for h in pmt)
            hist.setdefault(name, {})
            hist[name][len(pmt)] = hist[name].get(len(pmt), 0) + 1
            r["events"][name] = r["events"].get(name, 0) + 1
            r["nhit"][name] = r["nhit"].get(name, 0) + len(pmt)
            if name != "TOTAL":
                per, events = occupancy.get((run, name), ({}, 0))
                for c, k, ch, q in hits:
                    i = c << 9 | k << 5 | ch
                    per[i] = per.get(i, 0) + 1
                occupancy[(run, name)] = (per, events + 1)
    return {"trig": trig, "nhit": nhit, "charge": charge, "hist": hist, "fecd": fecd,
            "orphans": orphans, "runs": runs, "occupancy": occupancy}


# -- the test ----------------------------------------------------------------------------

class StreamAnalysesTests(RoleProcessesMixin, RedisTestMixin, unittest.TestCase):
    timeout = 240

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.processes = []


    def get(self, path):
        with urllib.request.urlopen(self.web_base + path, timeout=10) as r:
            return json.load(r)

    def sum_keys(self, pattern, field=None):
        """Σ over the keys of a pattern of an int value (or hash field)."""
        total = 0
        for key in self.sync.command("KEYS", pattern):
            value = self.sync.command("HGET", key, field) if field else \
                self.sync.command("GET", key)
            total += int(value or 0)
        return total

    def hash_sums(self, pattern):
        out = {}
        for key in self.sync.command("KEYS", pattern):
            for f, v in self.sync.hgetall(key).items():
                out[f] = out.get(f, 0) + int(v)
        return out

    def run_occupancy(self, run, field):
        from minard.store.runs import decode_part
        key = "minard:runocc:%d:%s" % (run, field)
        hits, events = {}, 0
        for f in self.sync.command("HKEYS", key) or []:
            h, e = decode_part(self.sync.get_bytes("HGET", key, f))
            for i in h.nonzero()[0].tolist():
                hits[i] = hits.get(i, 0) + int(h[i])
            events += e
        return hits, events

    @defer.inlineCallbacks
    def run_script(self, workers):
        script = Script(seed=13 + workers)
        expected = script.expected()
        factory = TestDispatcherFactory(12)
        port_number = free_port()
        zmq = "tcp://127.0.0.1:%d" % free_port()
        listening = reactor.listenTCP(port_number, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        for i in range(workers):
            self.spawn("dispatch-pull", "--zmq", zmq, "--name", "pull-%d" % i)
        self.spawn("dispatch-push", "--host", "127.0.0.1", "--port", str(port_number),
                   "--zmq", zmq)
        web_port = free_port()
        self.spawn("web", "--listen", "tcp:%d:interface=127.0.0.1" % web_port, "--log-dir",
                   self.mktemp().rsplit("/", 1)[0], "--programs", "etc/programs.ini")
        self.web_base = "http://127.0.0.1:%d/" % web_port
        yield wait_for(lambda: factory.connections and
                       len(factory.connections[0].handshake_done()) >= 3, timeout=30)
        yield wait_for(lambda: all(self.sync.command("EXISTS", "minard:stats:pull-%d" % i)
                                   for i in range(workers)), timeout=30)
        yield task.deferLater(reactor, 0.5, lambda: None)
        started = time.time()
        for records in script.batches:
            data = b"".join(frame(12, b"RECHDR" if r[:4] == b"RHDR" else b"RAWDATA", r)
                            for r in records)
            factory.connections[0].transport.write(data)
            yield task.deferLater(reactor, 0.04, lambda: None)  # one batch of the push
        ended = time.time()
        n_events = expected["trig"]["TOTAL"]
        yield wait_for(lambda: self.sum_keys("ts:1:*:trig", "TOTAL") >= n_events, timeout=30)
        # the clock sweep pairs the loose ends once every worker is CLOCK_END_SETTLE s past
        # them; the per-run occupancy is written every RUN_OCCUPANCY_WRITE s
        yield wait_for(lambda: self.sum_keys("ts:1:*:CLOCK_JUMPS") >= len(script.jumps) and
                       self.run_occupancy(RUN_B, "3")[1] == expected["occupancy"][
                           (RUN_B, "20")][1], timeout=60)
        yield task.deferLater(reactor, 2.0, lambda: None)  # nothing more may come

        # every batch went somewhere; with 3 workers, each worker had some
        for i in range(workers):
            stats = self.sync.hgetall("minard:stats:pull-%d" % i)
            self.assertGreater(int(stats.get("events", 0)), 0, i)
            self.assertEqual(sum(int(v) for k, v in stats.items() if k.startswith("corrupt")),
                             0, stats)
        # trig, trig:nhit, trig:charge with NONE and polling
        for name, suffix in (("trig", "trig"), ("nhit", "trig:nhit"),
                             ("charge", "trig:charge")):
            got = self.hash_sums("ts:1:*:%s" % suffix)
            got = {f: v for f, v in got.items() if f not in ("run", "subrun", "gtid")}
            self.assertEqual(got, expected[name], name)
        self.assertEqual(self.hash_sums("ts:1:*:trig:fecd"), expected["fecd"])
        self.assertEqual(self.hash_sums("ts:65536:*:trig:fecd"), expected["fecd"])
        self.assertEqual(self.sum_keys("ts:1:*:DISPATCH_ORPHANS"), expected["orphans"])
        self.assertEqual(self.sum_keys("ts:4:*:DISPATCH_ORPHANS"), expected["orphans"])
        # nhit histograms: all events (compat) and per event type, every hash interval
        fields = {name: str(bit) for bit, name in enumerate(TRIGGER_NAMES)}
        fields.update({"NONE": "NONE", "polling": "polling"})
        for interval in (5, 60, 86400):
            total = {int(k): v for k, v in self.hash_sums("ts:%d:*:nhit:hist" % interval).items()}
            self.assertEqual(total, expected["hist"]["TOTAL"], interval)
            for name, want in expected["hist"].items():
                if name == "TOTAL":
                    continue
                got = {int(k): v for k, v in self.hash_sums(
                    "minard:nhit:%d:*:%s" % (interval, fields[name])).items()}
                self.assertEqual(got, want, (interval, name))
        # clock jumps: exactly the forced ones, wherever their events went
        self.assertEqual(self.sum_keys("ts:1:*:CLOCK_JUMPS"), len(script.jumps))
        self.assertEqual(self.sum_keys("ts:16:*:CLOCK_JUMPS"), len(script.jumps))
        listed = [json.loads(j) for j in self.sync.command("LRANGE", "minard:clockjumps", 0, -1)]
        self.assertEqual(sorted((j["previous_gtid"], j["gtid"], j["kind"]) for j in listed),
                         sorted(script.jumps))
        for j in listed:
            self.assertTrue(started - 1 <= j["time"] <= ended + 1, j)
            if j["kind"] == "clocks disagree" and j["gtid"] != listed[0]["gtid"] and \
                    abs(j["d50"] - 5 * j["d10"]) == JUMP_50:
                self.assertIn(j["d10"], range(TICK, TICK + 3))
        self.assertGreater(script.boundaries, 10)
        # a gtid that skips at a batch boundary is never paired by its worker: the clock
        # sweep judged it (and, with 3 workers, the boundaries between workers)
        across = sum(int(self.sync.hgetall("minard:stats:pull-%d" % i).get(
            "clock_jumps_across_batches", 0)) for i in range(workers))
        self.assertGreaterEqual(across, 1)
        # one alarm for the burst (the jumps come within CLOCK_JUMP_BURST s)
        alarms = [json.loads(self.sync.command("GET", k))
                  for k in self.sync.command("KEYS", "alarms:[0-9]*")]
        clock_alarms = [a for a in alarms if a["message"].startswith("clock jumps - ")]
        self.assertEqual(len(clock_alarms), 1, alarms)
        self.assertEqual(clock_alarms[0]["level"], 40)
        # run records
        self.assertEqual(self.sync.command("ZRANGE", "minard:runs", 0, -1),
                         [str(RUN_A), str(RUN_B)])
        for run, want in expected["runs"].items():
            record = self.sync.hgetall("minard:run:%d" % run)
            events = {k[7:]: int(v) for k, v in record.items() if k.startswith("events:")}
            nhit = {k[5:]: int(v) for k, v in record.items() if k.startswith("nhit:")}
            self.assertEqual(events, {fields.get(n, n): c for n, c in want["events"].items()})
            self.assertEqual(nhit, {fields.get(n, n): c for n, c in want["nhit"].items()})
            self.assertEqual(int(record["first_gtid"]) > 0, True)
            self.assertEqual(int(record["run_mask"]), 4 if run == RUN_A else 36)
            self.assertEqual((int(record["source_mask"]), int(record["crate_mask"]),
                              int(record["date"])), (5, 0x7FFFF, 20261130))
            self.assertTrue(started - 1 <= int(record["start"]) / 1e6 <=
                            int(record["stop"]) / 1e6 <= ended + 1, record)
        # per-run occupancy by event type: the workers' partials add up to the hits sent
        for (run, name), (hits, events) in expected["occupancy"].items():
            self.assertEqual(self.run_occupancy(run, fields[name]), (hits, events),
                             (run, name))
        self.assertEqual(len(self.sync.command("KEYS", "minard:runocc:*")),
                         len(expected["occupancy"]))

        # -- the JSON routes -------------------------------------------------------------------
        runs = self.get("get_runs")
        self.assertEqual([r["run"] for r in runs["runs"]], [RUN_B, RUN_A])
        self.assertEqual(runs["current"], RUN_B)
        b = runs["runs"][0]
        self.assertEqual(b["events"], expected["runs"][RUN_B]["events"])
        self.assertEqual(b["run_type"], ["Physics", "ECA"])
        self.assertAlmostEqual(b["mean_nhit"], expected["runs"][RUN_B]["nhit"]["TOTAL"] /
                               expected["runs"][RUN_B]["events"]["TOTAL"])
        self.assertEqual(b["seconds_with_events"] + b["seconds_without_data"], b["seconds"])
        self.assertGreaterEqual(b["seconds_with_events"], 1)
        one = self.get("get_run?run=%d" % RUN_A)
        self.assertEqual(one["events"], expected["runs"][RUN_A]["events"])
        self.assertEqual(sorted(one["occupancy_types"]),
                         sorted(n for r, n in expected["occupancy"] if r == RUN_A))
        hits, events = expected["occupancy"][(RUN_A, "100L")]
        occ = self.get("run_occupancy?run=%d&trigger=100L" % RUN_A)
        self.assertEqual(occ["events"], events)
        self.assertEqual({i: h for i, h in enumerate(occ["hits"]) if h}, hits)
        self.assertEqual([i for i, v in enumerate(occ["values"]) if v is not None],
                         sorted(hits))
        current = self.get("run_occupancy?run=current&trigger=20")
        self.assertEqual(current["run"], RUN_B)
        with self.assertRaises(urllib.error.HTTPError) as cm:
            self.get("run_occupancy?run=%d&trigger=PONG" % RUN_A)
        self.assertEqual(cm.exception.code, 404)
        jumps = self.get("get_clock_jumps")["jumps"]
        self.assertEqual(sorted((j["previous_gtid"], j["gtid"], j["kind"]) for j in jumps),
                         sorted(script.jumps))
        window = "start=%d&stop=%d" % (int(started) - 70, int(ended) + 70)
        metric = self.get("metric?expr=FECD/100L,DISPATCH_ORPHANS,NONE,polling,CLOCK_JUMPS"
                          "&step=1&" + window)["values"]
        self.assertEqual(round(sum(v or 0 for v in metric["FECD/100L"])),
                         expected["fecd"]["100L"])
        self.assertEqual(round(sum(v or 0 for v in metric["DISPATCH_ORPHANS"])),
                         expected["orphans"])
        self.assertEqual(round(sum(v or 0 for v in metric["NONE"])), expected["trig"]["NONE"])
        self.assertEqual(round(sum(v or 0 for v in metric["polling"])),
                         expected["trig"]["polling"])
        self.assertEqual(round(sum(v or 0 for v in metric["CLOCK_JUMPS"])), len(script.jumps))
        hist = self.get("query?name=nhit_hist&trigger=PULGT&" + window)
        self.assertEqual(dict(zip(hist["nhit"], hist["events"])), expected["hist"]["PULGT"])
        hist = self.get("query?name=nhit_hist&trigger=TOTAL&" + window)
        self.assertEqual(dict(zip(hist["nhit"], hist["events"])), expected["hist"]["TOTAL"])
        for path, code in (("get_run?run=abc", 400), ("get_run?run=999", 404),
                           ("get_run", 400), ("run_occupancy?run=%d" % RUN_A, 400),
                           ("run_occupancy?run=%d&trigger=XYZ" % RUN_A, 404),
                           ("query?name=nhit_hist&trigger=XYZ", 404),
                           ("get_runs?limit=0", 400), ("get_clock_jumps?limit=x", 400),
                           ("metric?expr=FECD/X&start=1&stop=10&step=1", 400)):
            with self.assertRaises(urllib.error.HTTPError) as cm:
                self.get(path)
            self.assertEqual(cm.exception.code, code, path)
            self.assertIn("error", json.load(cm.exception))

    def test_one_worker(self):
        return self.run_script(1)

    def test_three_workers(self):
        return self.run_script(3)


# -- units: the decoder, the accumulator (split at every point), the clock judgement ----

from minard.aggregate import clockjumps  # noqa: E402
from minard.aggregate.events import SecondAccumulator  # noqa: E402
from minard.aggregate.runs import RunFollower  # noqa: E402
from minard.wire import sno  # noqa: E402


def small_script(seed):
    """The records of a Script (RHDRs and events), flattened, and the script."""
    script = Script(seed)
    return [r for batch in script.batches for r in batch], script


class DecodeTests(unittest.TestCase):
    def test_fields_of_hand_built_records(self):
        hits = [(17, 15, 28, 100), (3, 4, 5, 200), (17, 15, 4, 7), (17, 14, 28, 9)]
        records = [
            run_header(77, 0x24, 1000),
            event_record(77, 2, 1001, 9, hits, (1 << 52) + 3, (1 << 42) + 5, True),
            event_record(77, 2, 0, 0, [(17, 15, 19, 50), (1, 1, 1, 60)], 0, 0, False),
            event_record(78, 3, 1002, 0, [], 12, 34, False),
        ]
        b = sno.decode_batch(records)
        self.assertEqual((b.n_events, b.n_orphans, b.n_pmt_events), (3, 1, 2))
        self.assertEqual(b.trig.tolist(), [9, 0, 0])
        self.assertEqual(b.gtid.tolist(), [1001, 0, 1002])
        self.assertEqual(b.run.tolist(), [77, 77, 78])
        self.assertEqual(b.polling.tolist(), [True, False, False])
        self.assertEqual(b.clock10.tolist(), [(1 << 52) + 3, 0, 12])
        self.assertEqual(b.clock50.tolist(), [(1 << 42) + 5, 0, 34])
        self.assertEqual(b.orphan.tolist(), [False, True, False])
        self.assertEqual(b.hits.tolist(), [4, 2, 0])
        # nhit and charge leave the FEC/D (crate 17, card 15) out, not card 14 of crate 17
        self.assertEqual(b.nhit.tolist(), [2, 1, 0])
        self.assertEqual(b.charge.tolist(), [209, 60, 0])
        self.assertEqual(b.fecd_hits.tolist(), [0, 2, 4])
        self.assertEqual(b.last, (78, 3, 1002))
        self.assertEqual(b.run_headers, [{
            "date": 20261130, "time": 12345678, "subfile": 1, "run": 77,
            "calibration_trial": 3, "source_mask": 5, "run_mask": 0x24,
            "crate_mask": 0x7FFFF, "first_gtid": 1000, "valid_gtid": 1000}])
        self.assertEqual(sorted(b.channels.tolist()), sorted(
            c << 9 | k << 5 | ch for c, k, ch, _ in hits + [(17, 15, 19, 0), (1, 1, 1, 0)]))

    def test_a_short_run_header_is_corrupt(self):
        short = run_header(1, 2, 3)[:-4]
        b = sno.decode_batch([short, event_record(1, 0, 5, 1, [], 0, 0, False)])
        self.assertEqual((b.corrupt, b.run_headers, b.n_events), ({"rhdr_short": 1}, [], 1))

    def test_unaligned_records_decode_the_same(self):
        records, _ = small_script(3)
        a = sno.decode_batch(records)
        b = sno.decode_batch([b"\x00\x01\x02"] + records)
        for name in ("trig", "gtid", "run", "polling", "clock10", "clock50", "nhit",
                     "charge", "hits", "orphan", "hit_bits", "fecd_hits"):
            self.assertEqual(getattr(a, name).tolist(), getattr(b, name).tolist(), name)
        self.assertEqual(a.run_headers, b.run_headers)


def accumulate(parts, tolerance=None, follower=None):
    """A SecondAccumulator fed `parts` (lists of records) as batches received one
    microsecond apart; returns (the accumulator, its payload document)."""
    follower = follower or RunFollower("w")
    acc = SecondAccumulator(1_796_000_000, follower=follower, tolerance=tolerance)
    for k, part in enumerate(parts):
        acc.add(sno.decode_batch(part), 1_796_000_000_000_000 + k)
    import numpy as np
    doc = json.loads(acc.payload("f", np.random.default_rng(0), writer="w"))
    return acc, doc


def judged_ends(ends, tolerance):
    """What the clock sweep makes of a worker's loose ends (clock_sweep.lua's walk, in
    plain Python): the number of jumps among the tail -> head pairs."""
    jumps = 0
    for a, b in zip(ends, ends[1:]):
        if a[0] == "T" and b[0] == "H":
            kind, _, _ = clockjumps.pair_kind(a[2], a[3], a[4], b[2], b[3], b[4], tolerance)
            jumps += kind is not None
    return jumps


class AccumulatorSplitTests(unittest.TestCase):
    """The same records in one batch or split anywhere give the same second."""

    def same(self, one, split, what):
        a, b = one[1], split[1]
        for key in ("trig", "nhit", "charge", "hist", "events"):
            self.assertEqual(a.get(key), b.get(key), (what, key))
        x, y = a.get("x", {}), b.get("x", {})
        for key in ("orphans", "fecd", "types"):
            self.assertEqual(x.get(key), y.get(key), (what, key))
        self.assertEqual([r[0] for r in x.get("runs", [])], [r[0] for r in y.get("runs", [])])
        self.assertEqual([r[3:] for r in x.get("runs", [])], [r[3:] for r in y.get("runs", [])],
                         what)
        self.assertEqual(x.get("headers", [[0]])[0][1:], y.get("headers", [[0]])[0][1:])
        tol = clockjumps.Tolerance()
        self.assertEqual(x.get("jumps", 0) + judged_ends(x.get("ends", []), tol),
                         y.get("jumps", 0) + judged_ends(y.get("ends", []), tol), what)
        self.assertEqual(one[0].occupancy.tolist(), split[0].occupancy.tolist(), what)
        self.assertEqual(one[0].fold()[1:], split[0].fold()[1:], what)
        fa, fb = one[0].follower, split[0].follower
        self.assertEqual(sorted(fa.runs), sorted(fb.runs))
        for run in fa.runs:
            ra, rb = fa.runs[run], fb.runs[run]
            self.assertEqual(ra.events, rb.events, (what, run))
            self.assertEqual(sorted(ra.hits), sorted(rb.hits))
            for t in ra.hits:
                self.assertEqual(ra.hits[t].tolist(), rb.hits[t].tolist(), (what, run, t))

    def test_every_split_point(self):
        records, script = small_script(5)
        records = records[:140]
        one = accumulate([records])
        expected = expected_of(script.events[:sum(1 for r in records if r[:4] == b"PMT ")])
        self.assertEqual(one[1]["trig"], expected["trig"])
        for k in range(1, len(records)):
            self.same(one, accumulate([records[:k], records[k:]]), k)

    def test_many_batches_and_chunks(self):
        from minard.aggregate import events as E
        records, _ = small_script(6)
        one = accumulate([records])
        saved = E.CHUNK_EVENTS
        E.CHUNK_EVENTS = 7  # a chunk every few batches
        self.addCleanup(setattr, E, "CHUNK_EVENTS", saved)
        rng = random.Random(1)
        cuts = sorted(rng.sample(range(1, len(records)), 40))
        parts = [records[a:b] for a, b in zip([0] + cuts, cuts + [len(records)])]
        self.same(one, accumulate(parts), "chunks")

    def test_many_trigger_words_take_the_direct_path(self):
        """Random trigger words (more groups than MAX_BATCH_GROUPS): the same sums."""
        rng = random.Random(9)
        records, events = [], []
        for g in range(1, 400):
            trig = rng.randrange(1 << 27)
            hits = Script.hits(rng)
            polling = rng.random() < 0.3
            records.append(event_record(RUN_A, 0, g, trig, hits, 0, 0, polling))
            events.append((RUN_A, g, trig, hits, 0, 0, polling, False))
        acc, doc = accumulate([records[:150], records[150:]])
        expected = expected_of(events)
        self.assertEqual(doc["trig"], expected["trig"])
        self.assertEqual(doc["nhit"], expected["nhit"])
        self.assertEqual(doc["charge"], expected["charge"])
        fields = {name: str(bit) for bit, name in enumerate(TRIGGER_NAMES)}
        fields.update({"NONE": "NONE", "polling": "polling"})
        for name, hist in expected["hist"].items():
            if name != "TOTAL":
                pairs = doc["x"]["types"][fields[name]]
                self.assertEqual(dict(zip(pairs[::2], pairs[1::2])), hist, name)
        run = acc.follower.runs[RUN_A]
        for (r, name), (hits, n) in expected["occupancy"].items():
            t = TRIGGER_NAMES.index(name) if name in TRIGGER_NAMES else \
                (27 if name == "polling" else 28)
            self.assertEqual(run.events[t], n, name)
            got = run.hits[t]
            self.assertEqual({i: int(got[i]) for i in got.nonzero()[0].tolist()}, hits, name)


class ClockJudgementTests(unittest.TestCase):
    def test_vectorised_and_scalar_agree(self):
        import numpy as np
        rng = random.Random(3)
        tol = clockjumps.Tolerance(1000, 100)
        for trial in range(400):
            n = rng.randrange(2, 30)
            g = [rng.choice([0, (1 << 24) - 1, rng.randrange(1 << 24)])]
            c10 = [rng.choice([rng.randrange(1 << 53), (1 << 53) - 3])]
            c50 = [rng.choice([rng.randrange(1 << 43), (1 << 43) - 2])]
            for _ in range(n - 1):
                g.append((g[-1] + rng.choice([1, 1, 1, 1, 2, 0, -1, 1 << 23])) & 0xFFFFFF)
                d = rng.choice([rng.randrange(0, 10 ** 7), rng.randrange(0, 10 ** 11), 0, 1])
                c10.append((c10[-1] + d + rng.choice([0, 0, 1, -1, -5, 20, -(1 << 52)]))
                           % (1 << 53))
                c50.append((c50[-1] + 5 * d + rng.choice([0, 0, 3, -3, 60, 10 ** 6,
                                                          5000 * d // 10 ** 6])) % (1 << 43))
            got = clockjumps.jumps_in(np.array(g, np.uint32), np.array(c10, np.uint64),
                                      np.array(c50, np.uint64), tol).tolist()
            want = [i for i in range(n - 1) if clockjumps.pair_kind(
                g[i], c10[i], c50[i], g[i + 1], c10[i + 1], c50[i + 1], tol)[0]]
            self.assertEqual(got, want, trial)

    def test_kinds_and_tolerance(self):
        tol = clockjumps.Tolerance(1000, 100)
        kind = clockjumps.pair_kind
        self.assertEqual(kind(5, 100, 500, 6, 110, 550, tol), (None, 10, 50))
        self.assertEqual(kind(5, 100, 500, 7, 110, 550, tol)[0], "gtid")
        self.assertEqual(kind(5, 100, 500, 6, 90, 450, tol)[0], "10MHz backwards")
        self.assertEqual(kind(5, 100, 500, 6, 110, 400, tol)[0], "50MHz backwards")
        # 1000 ns fixed: 10 ticks of 100 ns = 50 of 20 ns; 60 ticks of 50 MHz is 1200 ns
        self.assertEqual(kind(5, 100, 500, 6, 110, 560, tol)[0], None)  # 200 ns apart
        self.assertEqual(kind(5, 100, 500, 6, 110, 610, tol)[0], "clocks disagree")
        # over a long pause (1 s = 10^7 ticks), 100 ppm of it (100 µs) is allowed
        self.assertEqual(kind(5, 0, 0, 6, 10 ** 7, 5 * 10 ** 7 + 4000, tol)[0], None)
        self.assertEqual(kind(5, 0, 0, 6, 10 ** 7, 5 * 10 ** 7 + 6000, tol)[0],
                         "clocks disagree")
        # the 50 MHz count rolls over at 2^43, the gtid at 2^24: no jump
        self.assertEqual(kind((1 << 24) - 1, 0, (1 << 43) - 5, 0, 1, 0, tol), (None, 1, 5))

    def test_ini_section(self):
        self.assertEqual(clockjumps.parse_section(None), clockjumps.Tolerance(1000, 100))
        self.assertEqual(clockjumps.parse_section({"tolerance-ns": "250", "tolerance-ppm": "0"}),
                         clockjumps.Tolerance(250, 0))
        for section, text in (({"tolerance": "1"}, "unknown key 'tolerance'"),
                              ({"tolerance-ns": "fast"}, "tolerance-ns must be a number"),
                              ({"tolerance-ns": "-1"}, "between 0 and"),
                              ({"tolerance-ppm": "nan"}, "between 0 and")):
            with self.assertRaises(ValueError) as cm:
                clockjumps.parse_section(section)
            self.assertIn(text, str(cm.exception))
            self.assertNotIn("\n", str(cm.exception))


from tests.support import RedisConnectionMixin  # noqa: E402


class ClockSweepTests(RedisConnectionMixin, unittest.TestCase):
    """clock_sweep.lua against a real Redis: the push order, the workers' progress, and
    the same judgement as clockjumps.pair_kind."""

    def setUp(self):
        # "now" when the test runs, not when the module was imported (a whole suite runs
        # for many minutes before this class: its loose ends were then judged stale)
        self.T0 = int(time.time()) - 30
        return super().setUp()

    @defer.inlineCallbacks
    def flush(self, writer, second, ends, id_):
        from minard.store import analyses
        doc = {"id": id_, "t": second, "events": 0, "x": {"w": writer, "ends": ends}}
        yield defer.gatherResults(analyses.flush_calls(self.redis, doc))
        yield analyses.progress(self.redis, writer, second)

    @defer.inlineCallbacks
    def test_pairs_judged_in_push_order_once_everyone_passed(self):
        from minard.store import analyses
        tol = clockjumps.Tolerance(1000, 100)
        rng = random.Random(2)
        # batches alternating between two workers, one microsecond apart: (tail, head)
        # pairs across every boundary, some jumps among them
        stamp = self.T0 * 1_000_000
        gtid, c10, c50 = 10, 10 ** 12, 5 * 10 ** 12
        ends = {"a": [], "b": []}
        pairs = []
        for k in range(60):
            head = (gtid, c10, c50)
            size = rng.randrange(1, 5)
            for _ in range(size - 1):
                gtid, c10, c50 = gtid + 1, c10 + 100, c50 + 500
            tail = (gtid, c10, c50)
            writer = "ab"[k % 2]
            ends[writer] += [["H", stamp, head[0], head[1], head[2], 7],
                             ["T", stamp, tail[0], tail[1], tail[2], 7]]
            stamp += 1
            step = rng.choice([(1, 100, 500), (1, 100, 500), (1, 100, 600), (2, 100, 500),
                               (1, -50, 500), (1, 100, 400), (1, 10 ** 7, 5 * 10 ** 7 + 9000)])
            nxt = (gtid + step[0], c10 + step[1], c50 + step[2])
            if k < 59:
                pairs.append((tail, nxt))
            gtid, c10, c50 = nxt
        want = sum(1 for a, b in pairs if clockjumps.pair_kind(*a, *b, tol)[0])
        self.assertGreater(want, 5)
        yield self.flush("a", self.T0, ends["a"], "a1")
        yield self.flush("b", self.T0, ends["b"], "b1")
        # nobody is CLOCK_END_SETTLE s past them yet: nothing judged
        jumps, burst, first = yield analyses.sweep(self.redis, tol)
        self.assertEqual((jumps, burst), (0, False))
        self.assertEqual(self.sync.command("ZCARD", "minard:clock:ends"), 120)
        yield self.flush("a", self.T0 + 20, [], "a2")
        jumps, burst, first = yield analyses.sweep(self.redis, tol)
        self.assertEqual(jumps, 0)  # b has not passed them
        yield self.flush("b", self.T0 + 20, [], "b2")
        jumps, burst, first = yield analyses.sweep(self.redis, tol)
        self.assertEqual(jumps, want)
        self.assertTrue(burst)
        self.assertEqual(first["across"], 1)
        # the last tail waits for a head that may still come; everything else is gone
        self.assertEqual(self.sync.command("ZCARD", "minard:clock:ends"), 1)
        listed = [json.loads(j) for j in self.sync.command("LRANGE", "minard:clockjumps", 0, -1)]
        judged = [(a[0], b[0]) + clockjumps.pair_kind(*a, *b, tol) for a, b in pairs]
        judged = [j for j in judged if j[2]]
        # the first CLOCK_JUMP_DETAILS of a sweep are listed (all are counted)
        from minard.constants import CLOCK_JUMP_DETAILS
        self.assertEqual(sorted((j["previous_gtid"], j["gtid"], j["kind"], j["d10"], j["d50"])
                                for j in listed), sorted(judged[:CLOCK_JUMP_DETAILS]))
        self.assertEqual(int(self.sync.command("GET", "ts:1:%d:CLOCK_JUMPS" % self.T0)), want)
        # a repeat of a flush adds nothing; a second sweep finds nothing more
        yield self.flush("a", self.T0, ends["a"], "a1")
        jumps, burst, _ = yield analyses.sweep(self.redis, tol)
        self.assertEqual((jumps, burst), (0, False))

    @defer.inlineCallbacks
    def test_a_pause_longer_than_the_window_is_no_pair(self):
        from minard.constants import CLOCK_PAIR_WINDOW
        from minard.store import analyses
        tol = clockjumps.Tolerance()
        s = self.T0 * 1_000_000
        late = s + (CLOCK_PAIR_WINDOW + 1) * 1_000_000
        yield self.flush("a", self.T0, [["T", s, 5, 0, 0, 1]], "x1")
        yield self.flush("a", self.T0 + CLOCK_PAIR_WINDOW + 1,
                         [["H", late, 9000, 1, 1, 1], ["T", late, 9000, 1, 1, 1]], "x2")
        yield self.flush("a", self.T0 + 100, [], "x3")
        jumps, burst, _ = yield analyses.sweep(self.redis, tol)
        self.assertEqual((jumps, burst), (0, False))
