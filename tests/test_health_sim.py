"""The simulator's faults (minard/sim/faults.py): the commands, what they do to the
synthetic events and to the data server's records (decoded with minard.wire as minard
decodes them), and the simulator role's --faults and --control."""
import numpy as np
from twisted.internet import defer, threads
from twisted.trial import unittest

from minard import constants as C
from minard.sim.dataserver import CrateReadout
from minard.sim.detector import SyntheticDetector
from minard.sim.faults import (DRIFT_LIMIT, HOT_CMOS_RATE, ControlFactory, FaultError,
                               Faults, parse_faults, send)
from minard.tap import OptionError, fault_list
from minard.wire import datastream as ds
from minard.wire import sno
from tests.support import RoleProcess, free_port, wait_for


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def hits_of(records):
    """(channel index of every hit, nhit of every event), decoded by minard.wire.sno."""
    batch = sno.decode_batch(records)
    return batch.channels, np.asarray(batch.hits)


class CommandTests(unittest.TestCase):

    def setUp(self):
        self.clock = Clock()
        self.faults = Faults(self.clock)

    def test_commands_and_answers(self):
        f = self.faults
        self.assertFalse(f)
        self.assertEqual(f.command("kill-card 3/7"), "card 3/7 killed")
        self.assertEqual(f.command("hot 5/2/14"), "channel 5/2/14 hot (0.3 of the events)")
        self.assertEqual(f.command("drift 2/3/4 2"), "channel 2/3/4 base current drifting "
                                                     "2 counts/s")
        self.assertEqual(f.command("noisy 1/1/1"), "channel 1/1/1 noisy")
        self.assertEqual(f.command("list"), "kill-card 3/7; hot 5/2/14 0.3; drift 2/3/4 2; "
                                            "noisy 1/1/1")
        self.assertTrue(f)
        self.assertEqual(f.command("heal 5/2/14"), "5/2/14 healed")
        self.assertEqual(f.command("heal 3/7"), "3/7 healed")
        self.assertEqual(f.describe(), ["drift 2/3/4 2", "noisy 1/1/1"])
        self.assertEqual(f.command("heal"), "all faults healed")
        self.assertEqual(f.command("list"), "no faults")
        self.assertIn("kill-card C/K", f.command("help"))

    def test_bad_commands(self):
        for line, text in (("", "empty command"), ("explode 1/2", "unknown command"),
                           ("kill-card 3", "is not crate/card"),
                           ("kill-card 20/1", "crate 20 is out of range"),
                           ("hot 1/16/0", "card 16 is out of range"),
                           ("hot 1/1/32", "channel 32 is out of range"),
                           ("hot 1/1/1 2", "fraction must be between"),
                           ("drift 1/1/1 fast", "must be a number"),
                           ("kill-card", "kill-card takes crate/card"),
                           ("noisy 1/1/1 2", "noisy takes")):
            with self.assertRaises(FaultError) as e:
                self.faults.command(line)
            self.assertIn(text, str(e.exception), line)
        self.assertFalse(self.faults)

    def test_option_checker(self):
        self.assertEqual(parse_faults("kill-card 3/7; hot 5/2/14 ;"), ["kill-card 3/7",
                                                                       "hot 5/2/14"])
        self.assertEqual(fault_list("drift 2/3/4"), "drift 2/3/4")
        with self.assertRaises(OptionError):
            fault_list("kill-card 3/99")
        with self.assertRaises(FaultError):
            parse_faults("list")


class EventTests(unittest.TestCase):

    def setUp(self):
        self.detector = SyntheticDetector(seed=5)
        self.detector.faults = Faults(Clock())

    def test_a_dead_card_has_no_hits_and_nhit_is_kept(self):
        d = self.detector
        d.faults.command("kill-card 3/7")
        channels, nhit = hits_of(d.events(3000))
        self.assertFalse(((channels >> 5) == (3 << 4 | 7)).any())
        self.assertEqual(len(channels), nhit.sum())
        d.faults.command("revive-card 3/7")
        channels, _ = hits_of(d.events(3000))
        self.assertTrue(((channels >> 5) == (3 << 4 | 7)).any())

    def test_a_hot_channel_fires_in_its_share_of_the_events(self):
        d = self.detector
        hot = C.channel_index(5, 2, 14)
        before, _ = hits_of(d.events(4000))
        d.faults.command("hot 5/2/14 0.3")
        after, nhit = hits_of(d.events(4000))
        share = (after == hot).sum() / 4000.0
        self.assertTrue(0.25 < share < 0.33, share)  # events with at least two hits
        self.assertLess((before == hot).sum() / 4000.0, 0.05)


class ReadoutTests(unittest.TestCase):

    def setUp(self):
        self.clock = Clock(1000.0)
        self.detector = SyntheticDetector(seed=6)
        self.detector.faults = Faults(self.clock)
        self.readout = CrateReadout(self.detector)

    def read(self, crate, now):
        """{index: count}, {index: current} of one readout, decoded as minard does."""
        counts, currents = {}, {}
        for record_id, message in self.readout.read(crate, now):
            payload = message[12:]
            if record_id == C.RECORD_CMOS:
                got = ds.decode_cmos(payload)
                for i, c, ok in zip(got.index, got.count, got.valid):
                    if ok:
                        counts[int(i)] = int(c)
            else:
                got = ds.decode_base(payload)
                for i, v in zip(got.index, got.current):
                    currents[int(i)] = float(v)
        return counts, currents

    def test_a_dead_card_leaves_the_records(self):
        card = set(range(C.channel_index(3, 7, 0), C.channel_index(3, 7, 0) + 32))
        counts, currents = self.read(3, 1000.0)
        self.assertTrue(card & set(counts))
        self.detector.faults.command("kill-card 3/7")
        counts, currents = self.read(3, 1001.0)
        self.assertFalse(card & set(counts))
        self.assertFalse(card & set(currents))
        self.assertTrue(set(range(3 << 9, (3 << 9) + 64)) & set(counts))  # the others stay
        # cards after it are still counted (8 slots per record, packed)
        self.assertTrue(set(range(C.channel_index(3, 15, 0), C.channel_index(3, 15, 0) + 32))
                        & set(counts))

    def test_hot_rate_and_drift(self):
        hot = C.channel_index(4, 1, 2)
        drifting = C.channel_index(4, 1, 3)
        first, base0 = self.read(4, 1000.0)
        self.detector.faults.command("hot 4/1/2")
        self.detector.faults.command("drift 4/1/3 3")
        self.clock.t = 1000.0
        second, _ = self.read(4, 1002.0)
        self.assertGreater((second[hot] - first[hot]) % (1 << 31), HOT_CMOS_RATE * 2 * 0.9)
        _, base = self.read(4, 1010.0)
        self.assertTrue(25 <= base[drifting] - base0[drifting] <= 35,
                        (base[drifting], base0[drifting]))
        _, base = self.read(4, 5000.0)
        self.assertLessEqual(base[drifting] - base0[drifting], DRIFT_LIMIT + 5)


class SimulatorRoleTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_faults_option_and_control_endpoint(self):
        port = free_port()
        p = RoleProcess("simulator", "--dispatcher-listen",
                        "tcp:%d:interface=127.0.0.1" % free_port(), "--data-listen",
                        "tcp:%d:interface=127.0.0.1" % free_port(), "--rate", "5",
                        "--faults", "kill-card 3/7; hot 5/2/14",
                        "--control", "tcp:%d:interface=127.0.0.1" % port).start()
        self.addCleanup(p.stop)
        address = "127.0.0.1:%d" % port

        def ask(command):
            return threads.deferToThread(send, address, command)

        answers = []

        def up():
            try:
                answers.append(send(address, "list", timeout=1))
                return True
            except OSError:
                return False

        yield wait_for(up, timeout=30)
        self.assertEqual(answers[-1], "ok: kill-card 3/7; hot 5/2/14 0.3")
        answer = yield ask("drift 2/3/4 1")
        self.assertEqual(answer, "ok: channel 2/3/4 base current drifting 1 counts/s")
        answer = yield ask("kill-card 99/1")
        self.assertEqual(answer, "error: crate 99 is out of range (0-19)")
        answer = yield ask("heal")
        self.assertEqual(answer, "ok: all faults healed")
        self.assertTrue(p.alive(), p.log()[-2000:])

    def test_control_lines_are_bounded(self):
        from twisted.test import proto_helpers
        faults = Faults(Clock())
        proto = ControlFactory(faults).buildProtocol(None)
        transport = proto_helpers.StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"kill-card 1/1\n")
        self.assertEqual(transport.value(), b"ok: card 1/1 killed\n")
        transport.clear()
        proto.dataReceived(b"x" * 5000)
        self.assertTrue(transport.value().startswith(b"error: line longer than"))
        self.assertTrue(transport.disconnecting)
