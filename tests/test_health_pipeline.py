"""Channel health end to end with real processes: the tests' own ControlHost dispatcher
and data server (independent of minard.sim) send a steady detector to `dispatch-push` →
`dispatch-pull` and `data-producer` → 2 × `data-consumer`; the `log-server` runs the
health service on 5-s buckets (`[health] interval = 5`: the same code path as 60 s, the
buckets the same workers finalise). Then one card is killed, one channel made hot and one
base current drifts: exactly those three findings appear within two finalised buckets,
each with one alarm; when the detector returns they close, one "cleared" each."""
import json
import os
import signal
import tempfile

import numpy as np
from twisted.internet import defer, endpoints, reactor, task
from twisted.trial import unittest

from minard import constants as C
from minard.store import keys
from tests.logserver_support import write_users
from tests.support import REPO, RedisTestMixin, RoleProcess, free_port, wait_for
from tests.test_datastream_pipeline import (FULL, TestServerFactory, base_record,
                                            cmos_record)
from tests.test_pipeline import TestDispatcherFactory

INTERVAL = 5
EVENTS_PER_TICK = 100     # every 0.1 s: 1000 events/s
HITS_PER_EVENT = 30
KILLED = (3, 7)
HOT = C.channel_index(5, 2, 14)
DRIFTING = C.channel_index(2, 3, 4)
DRIFT_PER_SECOND = 4.0    # ADC counts

#: One PMT record of HITS_PER_EVENT hits behind its CASPUR frame prefix (SPEC §2.1-2.3),
#: laid out by hand: all events have the same size, so a batch is one numpy array.
EVENT = np.dtype([("tag", "S8"), ("size", ">i4"),
                  ("rid", ">u4"), ("length", ">u4"), ("version", ">u4"),
                  ("info", ">u2"), ("dtype", ">u2"), ("run", ">u4"), ("evnum", ">u4"),
                  ("subrun", ">u2"), ("nhit", ">u2"), ("calpck", ">u4"), ("mtc", ">u4", 6),
                  ("hits", ">u4", (HITS_PER_EVENT, 3))])


class SteadyDetector:
    """The test's detector: hits spread over the PMT channels of the installed crates
    (each with its own weight), CMOS counters counting at steady rates, base currents
    with a little noise; and the faults this test puts in."""

    def __init__(self, seed=15):
        rng = self.rng = np.random.default_rng(seed)
        self.channels = np.array([i for i in range(C.N_CHANNELS)
                                  if i >> 9 in C.INSTALLED_CRATES])
        self.weight = rng.uniform(0.5, 1.5, len(self.channels))
        self.rate = rng.uniform(200, 1000, C.N_CHANNELS)
        self.current = rng.normal(0, 2, C.N_CHANNELS)
        self.count = rng.integers(0, 1 << 30, C.N_CHANNELS).astype(np.float64)
        self.gtid = 1
        self.killed = False
        self.hot = False
        self.drift_since = None
        self.last_read = {}

    def events(self, n):
        """n RAWDATA frames as bytes."""
        live = np.ones(len(self.channels), dtype=bool)
        if self.killed:
            live &= (self.channels >> 5) != (KILLED[0] << 4 | KILLED[1])
        p = np.where(live, self.weight, 0)
        hits = self.rng.choice(self.channels, size=(n, HITS_PER_EVENT), p=p / p.sum())
        if self.hot:
            hits[self.rng.random(n) < 0.3, 1] = HOT
        out = np.zeros(n, EVENT)
        out["tag"] = b"RAWDATA"
        out["size"] = EVENT.itemsize - 12
        out["rid"] = C.RECORD_PMT
        out["length"] = EVENT.itemsize - 24
        out["run"] = 100
        out["nhit"] = HITS_PER_EVENT
        gtid = self.gtid + np.arange(n)
        self.gtid += n
        out["mtc"][:, 3] = gtid | 1 << 24  # trigger bit 0 (100L)
        out["hits"][:, :, 0] = ((hits & 31) << 16 | (hits >> 9) << 21
                                | (hits >> 5 & 15) << 26)
        return out.tobytes()

    def crate_records(self, crate, now):
        """The CMOS and BASE records of one crate read at `now` (s)."""
        lo = crate << 9
        last = self.last_read.get(crate)
        self.last_read[crate] = now
        rate = self.rate[lo:lo + 512].copy()
        if self.hot and HOT >> 9 == crate:
            rate[HOT & 511] = 50000.0
        slots = 0xFFFF
        if self.killed and crate == KILLED[0]:
            slots &= ~(1 << KILLED[1])
            rate[KILLED[1] * 32:(KILLED[1] + 1) * 32] = 0
        if last is not None:
            self.count[lo:lo + 512] += self.rng.poisson(rate * (now - last))
        counts = self.count[lo:lo + 512].astype(np.int64) % (1 << 31)
        out = b""
        for first in (0, 8):
            mask = slots & (0xFF << first)
            present = [s for s in range(16) if mask >> s & 1]
            out += cmos_record(crate, mask, FULL,
                               [int(c) for s in present for c in counts[s * 32:(s + 1) * 32]])
        current = self.current[lo:lo + 512].copy()
        if self.drift_since is not None and DRIFTING >> 9 == crate:
            current[DRIFTING & 511] += DRIFT_PER_SECOND * (now - self.drift_since)
        raw = np.clip(np.rint(127 + current + self.rng.normal(0, 0.7, 512)), 0, 255)
        return out + base_record(crate, slots, FULL, raw.astype(np.uint8).tolist())


class HealthPipelineTests(RedisTestMixin, unittest.TestCase):
    timeout = 240

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.processes = []
        self.tmp = tempfile.mkdtemp(prefix="minard-health-")
        self.detector = SteadyDetector()
        self.sending = None

    def tearDown(self):
        if self.sending is not None and self.sending.running:
            self.sending.stop()
        for p in self.processes:  # all at once, then wait for each
            p.signal(signal.SIGTERM)
        codes = [p.stop() for p in self.processes]
        for p, code in zip(self.processes, codes):
            # stop() signals again a process still shutting down: Twisted then logs
            # ReactorNotRunning for the second SIGTERM, which is not a fault of minard's
            log = p.log()
            faults = log.count("Traceback") - log.count(
                "twisted.internet.error.ReactorNotRunning: ")
            if faults > 0 or code not in (0, None, -15):
                raise AssertionError("%s exited %s:\n%s" % (p.role, code, p.log()[-3000:]))

    def spawn(self, role, *args):
        p = RoleProcess(role, "--redis", self.redis_server.url, *args).start()
        self.processes.append(p)
        return p

    def health(self):
        state = self.sync.hgetall(keys.HEALTH_STATE)
        if not state:
            return None, []
        return (int(state["position"]),
                json.loads(self.sync.command("GET", keys.HEALTH_FINDINGS) or "[]"))

    def alarms(self):
        count = int(self.sync.command("GET", "alarms:count") or 0)
        out = []
        for i in range(count):
            text = self.sync.command("GET", "alarms:%d" % i)
            if text:
                out.append(json.loads(text))
        return [a for a in out if a["message"].startswith("channel-health")]

    @defer.inlineCallbacks
    def test_kill_a_card_make_a_channel_hot_let_a_base_current_drift(self):
        dispatcher = TestDispatcherFactory(12)
        dispatcher_port = free_port()
        listening = reactor.listenTCP(dispatcher_port, dispatcher, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        data_server = TestServerFactory()
        data_port = free_port()
        data_listening = yield endpoints.TCP4ServerEndpoint(
            reactor, data_port, interface="127.0.0.1").listen(data_server)
        self.addCleanup(data_listening.stopListening)

        config = os.path.join(self.tmp, "minard.ini")
        with open(config, "w") as f:
            f.write("[health]\ninterval = %d\nwarmup-buckets = 4\nbaseline-buckets = 10\n"
                    "[watchdog]\nenabled = no\n" % INTERVAL)
        events_zmq = "tcp://127.0.0.1:%d" % free_port()
        cmos_zmq = "tcp://127.0.0.1:%d" % free_port()
        base_zmq = "tcp://127.0.0.1:%d" % free_port()
        self.spawn("dispatch-pull", "--zmq", events_zmq, "--name", "pull-0")
        self.spawn("dispatch-push", "--host", "127.0.0.1", "--port", str(dispatcher_port),
                   "--zmq", events_zmq)
        self.spawn("data-consumer", "--zmq", cmos_zmq)
        self.spawn("data-consumer", "--zmq", base_zmq)
        self.spawn("data-producer", "--port", str(data_port), "--cmos-zmq", cmos_zmq,
                   "--base-zmq", base_zmq)
        self.spawn("log-server", "--listen", "tcp:%d:interface=127.0.0.1" % free_port(),
                   "--log-dir", os.path.join(self.tmp, "logs"), "--auth-file",
                   write_users(self.tmp), "--programs",
                   os.path.join(REPO, "etc", "programs.ini"), "--config", config)
        yield wait_for(lambda: dispatcher.connections and
                       len(dispatcher.connections[0].handshake_done()) >= 3, timeout=30)
        yield wait_for(lambda: data_server.subscriptions, timeout=30)
        yield wait_for(lambda: len(self.sync.command("KEYS", "minard:stats:*")) >= 6,
                       timeout=30)

        detector = self.detector
        ticks = [0]

        def send():
            dispatcher.connections[0].transport.write(detector.events(EVENTS_PER_TICK))
            ticks[0] += 1
            if ticks[0] % 10 == 0:  # every crate read once a second
                now = reactor.seconds()
                data_server.send(b"".join(detector.crate_records(crate, now)
                                          for crate in C.INSTALLED_CRATES))

        self.sending = task.LoopingCall(send)
        self.sending.start(0.1)

        # the steady detector: the baselines warm up, and nothing is found
        yield wait_for(lambda: self.health()[0] is not None, timeout=60)
        first = self.health()[0]
        yield wait_for(lambda: self.health()[0] >= first + 4, timeout=90)
        self.assertEqual(self.health()[1], [])
        self.assertEqual(self.alarms(), [])

        # the faults
        detector.killed = detector.hot = True
        detector.drift_since = reactor.seconds()
        fault_bucket = int(reactor.seconds()) // INTERVAL
        yield wait_for(lambda: self.health()[0] >= fault_bucket + 1, timeout=60)
        position, findings = self.health()
        self.assertEqual(sorted(f["key"] for f in findings),
                         ["base/2/3/4", "dark/3/7", "hot/5/2/14"],
                         "position %d, fault in bucket %d" % (position, fault_bucket))
        self.assertTrue(all(f["since"] >= fault_bucket * INTERVAL for f in findings))
        by_key = {f["key"]: f for f in findings}
        self.assertEqual(by_key["hot/5/2/14"]["index"], HOT)
        self.assertEqual(by_key["base/2/3/4"]["index"], DRIFTING)
        self.assertIn("cmos", by_key["dark/3/7"]["quantities"])
        alarms = self.alarms()
        self.assertEqual(len(alarms), 3, alarms)
        self.assertEqual(sorted(a["level"] for a in alarms), [30, 30, 40])
        for where in ("crate 3 card 7: card dark", "crate 5 card 2 channel 14 (2638): hot",
                      "crate 2 card 3 channel 4 (1124): base current out of range"):
            self.assertEqual(len([a for a in alarms if where in a["message"]]), 1, where)
        # the detector returns
        detector.killed = detector.hot = False
        detector.drift_since = None
        back_bucket = int(reactor.seconds()) // INTERVAL
        yield wait_for(lambda: self.health()[0] >= back_bucket + 2, timeout=60)
        self.assertEqual(self.health()[1], [])
        alarms = self.alarms()
        self.assertEqual(len(alarms), 6, alarms)
        cleared = alarms[3:]
        self.assertEqual([a["level"] for a in cleared], [21, 21, 21])
        self.assertTrue(all("cleared (back)" in a["message"] for a in cleared))
        closed = [json.loads(x) for x in self.sync.command("LRANGE", keys.HEALTH_CLOSED, 0, -1)]
        self.assertEqual(sorted(f["key"] for f in closed),
                         ["base/2/3/4", "dark/3/7", "hot/5/2/14"])
        self.assertTrue(all(f["until"] >= back_bucket * INTERVAL for f in closed))
        stats = self.sync.hgetall("minard:stats:log-server")
        self.assertEqual(int(stats.get("health_errors", 0)), 0)
