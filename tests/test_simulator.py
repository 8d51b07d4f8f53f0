"""The synthetic detector, the simulated dispatcher, and capture -> replay."""
import os
import tempfile

import numpy as np
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from minard.constants import TRIGGER_BIT
from minard.sim.detector import SyntheticDetector
from minard.wire.sno import decode_batch
from tests.support import RedisTestMixin, RoleProcess, free_port, wait_for


class DetectorTests(unittest.TestCase):
    def test_event_mix(self):
        det = SyntheticDetector(seed=5)
        batch = decode_batch(det.events(20000))
        self.assertEqual(batch.n_events, 20000)
        self.assertEqual(batch.corrupt, {})

        def fraction(name):
            return float(((batch.trig >> TRIGGER_BIT[name]) & 1).mean())

        self.assertGreater(fraction("100L"), 0.5)
        self.assertGreater(fraction("20"), 0.7)
        self.assertTrue(0.02 < fraction("PULGT") < 0.09)
        self.assertTrue(0.01 < fraction("PED") < 0.06)
        self.assertTrue(0 < fraction("ESUMH") < 0.03)
        self.assertTrue(0 < fraction("OWLN") < 0.02)
        self.assertTrue(0 < float((batch.trig == 0).mean()) < 0.03)  # orphans
        self.assertTrue(15 < float(np.median(batch.nhit)) < 40)
        self.assertGreater(int(batch.nhit.max()), 1000)  # muons

    def test_hot_and_dead_channels(self):
        det = SyntheticDetector(seed=2)
        occupancy = np.bincount(decode_batch(det.events(5000)).channels, minlength=10240)
        for channel in det.dead_channels:
            self.assertEqual(occupancy[channel], 0)
        typical = np.median(occupancy[occupancy > 0])
        for channel in det.hot_channels:
            self.assertGreater(occupancy[channel], 20 * typical)
        self.assertEqual(occupancy[19 * 512:].sum(), 0)  # crate 19 absent

    def test_gtid_and_subrun_advance(self):
        det = SyntheticDetector(seed=1)
        det.gtid = (1 << 24) - 3
        first = decode_batch(det.events(5))
        self.assertEqual(first.last[2], 2)  # wrapped at 2^24
        subrun = det.subrun
        det.events_in_subrun = 10**9
        det.events(1)
        self.assertEqual(det.subrun, subrun + 1)


class SimulatorRoleTests(RedisTestMixin, unittest.TestCase):
    timeout = 120

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.processes = []
        self.directory = tempfile.mkdtemp(prefix="minard-sim-")

    def tearDown(self):
        for p in self.processes:
            p.stop()

    def spawn(self, role, *args):
        p = RoleProcess(role, *args, directory=self.directory).start()
        self.processes.append(p)
        return p

    def total(self):
        return sum(int(self.sync.command("HGET", k, "TOTAL") or 0)
                   for k in self.sync.command("KEYS", "ts:1:*:trig"))

    @defer.inlineCallbacks
    def test_simulator_feeds_pipeline_and_capture_replays(self):
        dispatcher = free_port()
        zmq = "tcp://127.0.0.1:%d" % free_port()
        capture = os.path.join(self.directory, "capture.dat")
        self.spawn("simulator", "--dispatcher-listen", "tcp:%d:interface=127.0.0.1" % dispatcher,
                   "--data-listen", "tcp:%d:interface=127.0.0.1" % free_port(),
                   "--rate", "3000", "--seed", "7")
        self.spawn("dispatch-pull", "--redis", self.redis_server.url, "--zmq", zmq,
                   "--name", "sim-pull")
        push = self.spawn("dispatch-push", "--redis", self.redis_server.url, "--zmq", zmq,
                          "--port", str(dispatcher), "--capture", capture)
        yield wait_for(lambda: self.total() > 5000, timeout=40)
        newest = max(self.sync.command("KEYS", "ts:1:*:trig"), key=lambda k: int(k.split(":")[2]))
        fields = self.sync.hgetall(newest)
        self.assertEqual(fields["run"], "100000")
        for bit in ("0", "3", "10", "12"):  # 100L, 20, PULGT, PED
            self.assertIn(bit, fields)
        push.stop()
        for p in self.processes:
            p.stop()
        captured = os.path.getsize(capture)
        self.assertGreater(captured, 5000 * 56)

        # replay the capture into an empty Redis: the same records come back
        self.sync.command("FLUSHALL")
        self.processes = []
        dispatcher = free_port()
        self.spawn("simulator", "--dispatcher-listen", "tcp:%d:interface=127.0.0.1" % dispatcher,
                   "--data-listen", "tcp:%d:interface=127.0.0.1" % free_port(),
                   "--rate", "2000", "--replay", capture)
        self.spawn("dispatch-pull", "--redis", self.redis_server.url, "--zmq", zmq,
                   "--name", "replay-pull")
        self.spawn("dispatch-push", "--redis", self.redis_server.url, "--zmq", zmq,
                   "--port", str(dispatcher))
        yield wait_for(lambda: self.total() > 2000, timeout=40)
        newest = max(self.sync.command("KEYS", "ts:1:*:trig"), key=lambda k: int(k.split(":")[2]))
        self.assertEqual(self.sync.hgetall(newest)["run"], "100000")
        yield task.deferLater(reactor, 0, lambda: None)
