"""Channel health (minard/health/): the model judged with injected finalised arrays, and
the service against a real Redis with an injected clock (finalised buckets written as the
per-channel store writes them, alarms read back as the Alarms page reads them).

The steady detector here is written independently of minard.sim: per channel a fixed
occupancy, CMOS rate and base current, with Poisson hits and counts and Gaussian base
current noise."""
import json
import os
import tempfile

import numpy as np
import txredisapi
from twisted.internet import defer, task
from twisted.trial import unittest

from minard import constants as C
from minard.health import config as health_config
from minard.health.config import HealthConfig, parse_section
from minard.health.model import Baseline, HealthModel
from minard.health.service import SETTLE_DEADLINE, HealthService
from minard.store import channels, keys
from minard.store.connection import connect
from tests.logserver_support import write_users
from tests.support import REPO, RedisTestMixin, RoleProcess, free_port

N = C.N_CHANNELS
T0 = 1_700_000_040  # a multiple of 60


def card_channels(crate, card):
    first = C.channel_index(crate, card, 0)
    return np.arange(first, first + 32)


class SteadyDetector:
    """Finalised buckets of a steady detector (values as the per-channel store holds
    them: hits / events; mean CMOS rate over the bucket; mean base current), and faults."""

    def __init__(self, seed=1, interval=60, events_per_second=1000, hits_per_event=30):
        rng = self.rng = np.random.default_rng(seed)
        self.interval = interval
        self.events = events_per_second * interval
        installed = np.zeros(N, dtype=bool)
        for crate in C.INSTALLED_CRATES:
            installed[crate * 512:(crate + 1) * 512] = True
        self.installed = installed
        n = installed.sum()
        self.occupancy = np.where(installed, rng.uniform(0.5, 1.5, N) * hits_per_event / n, 0)
        self.rate = np.where(installed, rng.uniform(100, 1500, N), 0)
        self.current = np.where(installed, rng.normal(0, 2, N), np.nan)
        # a few permanently hot and dead channels, as a real detector has
        special = rng.choice(np.flatnonzero(installed), 20, replace=False)
        self.occupancy[special[:5]] *= 60
        self.rate[special[:5]] = 40000
        self.occupancy[special[5:]] = 0
        self.rate[special[5:]] = 0
        self.dead_cards = set()
        self.hot = {}        # channel -> (occupancy, rate)
        self.drift = {}      # channel -> offset (ADC counts)
        self.noisy = set()
        self.scale = 1.0     # a change of run conditions: every occupancy × scale

    def bucket(self, events=None):
        """{name: decoded-blob-like dict} of one bucket."""
        rng = self.rng
        events = self.events if events is None else events
        p = self.occupancy * self.scale
        r = self.rate.copy()
        for i, (occ, rate) in self.hot.items():
            p[i], r[i] = occ, rate
        for i in self.noisy:
            r[i] *= rng.choice([0.2, 1.0, 8.0])
        dead = np.zeros(N, dtype=bool)
        for crate, card in self.dead_cards:
            dead[card_channels(crate, card)] = True
        hits = rng.poisson(np.where(dead, 0, p) * events)
        occupancy = np.where(hits > 0, hits / max(events, 1), np.nan)
        samples = self.interval
        counts = rng.poisson(r * samples) / samples
        cmos = np.where((counts > 0) & ~dead, counts, np.nan)
        base = self.current + rng.normal(0, 0.1, N)
        for i, offset in self.drift.items():
            base[i] += offset
        base[dead] = np.nan
        return {"occupancy": {"values": occupancy, "denominator": float(events)},
                "cmos": {"values": cmos, "denominator": float(samples * N)},
                "base": {"values": base, "denominator": float(samples * N)}}

    def blobs(self, **kwargs):
        """The bucket as the per-channel store's finalised blobs."""
        out = {}
        for name, b in self.bucket(**kwargs).items():
            out[name] = channels.encode_final(b["values"], b["denominator"])
        return out


def run(model, detector, b, n, masked=None):
    """n buckets from b; returns (opened, closed, alarms) over all of them."""
    opened, closed, alarms = [], [], []
    for k in range(b, b + n):
        step = model.step(k, detector.bucket(), masked)
        model.commit(step)
        opened += step.opened
        closed += step.closed
        alarms += step.alarms
    return opened, closed, alarms


class ConfigTests(unittest.TestCase):

    def test_defaults(self):
        cfg = parse_section(None)
        self.assertEqual(cfg, HealthConfig())
        self.assertTrue(cfg.enabled)
        self.assertEqual(cfg.interval, 60)
        self.assertEqual(parse_section({"interval": "5", "hot-factor": "8",
                                        "enabled": "no"}),
                         HealthConfig(interval=5, hot_factor=8.0, enabled=False))

    def test_strict(self):
        for section, text in (({"hot": "5"}, "unknown key 'hot'"),
                              ({"enabled": "maybe"}, "enabled must be yes or no"),
                              ({"interval": "30"}, "interval must be one of 5, 60"),
                              ({"interval": "86400"}, "interval must be one of"),
                              ({"hot-factor": "x"}, "hot-factor must be a number"),
                              ({"warmup-buckets": "2.5"}, "warmup-buckets must be a whole"),
                              ({"dark-fraction": "1.5"}, "dark-fraction must be between"),
                              ({"min-hits": "nan"}, "min-hits must be a finite number"),
                              ({"release": "0"}, "release must be between")):
            with self.assertRaises(ValueError) as e:
                parse_section(section)
            self.assertIn(text, str(e.exception))
            self.assertTrue(str(e.exception).startswith("[health] "))

    def test_every_field_has_a_key(self):
        keys_ = set(HealthConfig().as_dict())
        self.assertEqual(keys_, health_config.KEYS)

    def test_the_production_ini_has_the_defaults(self):
        from minard.programs import read_ini
        parser = read_ini(os.path.join(REPO, "etc", "minard.ini"))
        self.assertEqual(parse_section(dict(parser.items("health"))), HealthConfig())

    def test_a_bad_section_stops_the_log_server(self):
        """A usage error naming the key, exit code 1, no traceback."""
        tmp = tempfile.mkdtemp(prefix="minard-health-ini-")
        ini = os.path.join(tmp, "minard.ini")
        with open(ini, "w") as f:
            f.write("[health]\nhot-factor = hot\n")
        p = RoleProcess("log-server", "--listen", "tcp:%d:interface=127.0.0.1" % free_port(),
                        "--log-dir", tmp, "--auth-file", write_users(tmp), "--programs",
                        os.path.join(REPO, "etc", "programs.ini"), "--config", ini).start()
        _, err = p.process.communicate(timeout=60)
        self.assertEqual(p.process.returncode, 1)
        self.assertIn(b"[health] hot-factor must be a number, not 'hot'", err)
        self.assertNotIn(b"Traceback", err)


class ModelTests(unittest.TestCase):
    """The judge alone: injected finalised arrays, buckets counted by hand."""

    def setUp(self):
        self.detector = SteadyDetector(seed=2)
        self.model = HealthModel(HealthConfig())
        run(self.model, self.detector, 1000, 15)  # warm up

    def test_steady_detector_gives_nothing(self):
        opened, closed, alarms = run(self.model, self.detector, 1015, 60)
        self.assertEqual(opened, [])
        self.assertEqual(alarms, [])

    def test_no_verdict_before_the_warmup(self):
        model = HealthModel(HealthConfig(warmup_buckets=10))
        self.detector.dead_cards.add((4, 4))
        opened, _, _ = run(model, self.detector, 1000, 10)
        self.assertEqual(opened, [])

    def test_card_killed_channel_hot_base_drift(self):
        """Exactly three findings, within two buckets, one alarm each; all three end
        when the detector returns, one 'cleared' each."""
        d = self.detector
        hot, drifting = C.channel_index(5, 2, 14), C.channel_index(2, 3, 4)
        d.dead_cards.add((3, 7))
        d.hot[hot] = (0.3, 50000.0)
        d.drift[drifting] = 20.0
        opened, closed, alarms = run(self.model, d, 1015, 2)
        self.assertEqual(sorted(f["key"] for f in opened),
                         ["base/2/3/4", "dark/3/7", "hot/5/2/14"])
        self.assertEqual(closed, [])
        self.assertEqual(len(alarms), 3)
        by_key = {f["key"]: f for f in opened}
        self.assertEqual(by_key["dark/3/7"]["quantities"], ["base", "cmos", "occupancy"])
        self.assertEqual(by_key["hot/5/2/14"]["quantities"], ["cmos", "occupancy"])
        self.assertEqual(by_key["base/2/3/4"]["index"], drifting)
        levels = sorted(level for level, _ in alarms)
        self.assertEqual(levels, [30, 30, 40])  # the dark card is DANGER
        text = [m for _, m in alarms if "crate 3 card 7" in m][0]
        self.assertIn("card dark since", text)
        self.assertIn("32 of 32 channels without hits", text)
        self.assertLess(abs(by_key["hot/5/2/14"]["details"]["occupancy"]["value"] - 0.3), 0.01)
        # still there, nothing new
        opened, closed, alarms = run(self.model, d, 1017, 3)
        self.assertEqual((opened, closed, alarms), ([], [], []))
        self.assertEqual(len(self.model.findings), 3)
        d.dead_cards.clear()
        d.hot.clear()
        d.drift.clear()
        opened, closed, alarms = run(self.model, d, 1020, 4)
        self.assertEqual(opened, [])
        self.assertEqual(sorted(f["key"] for f in closed),
                         ["base/2/3/4", "dark/3/7", "hot/5/2/14"])
        self.assertEqual([level for level, _ in alarms], [21, 21, 21])
        for f in closed:
            self.assertEqual(f["since"], 1015 * 60)
            self.assertEqual(f["until"], 1020 * 60)
            self.assertEqual(f["end"], "returned")
        self.assertEqual(self.model.findings, [])
        # and the baselines did not learn the faults: quiet afterwards
        opened, _, alarms = run(self.model, d, 1024, 30)
        self.assertEqual((opened, alarms), ([], []))

    def test_a_dark_crate_is_one_finding(self):
        for card in range(16):
            self.detector.dead_cards.add((9, card))
        opened, _, alarms = run(self.model, self.detector, 1015, 3)
        self.assertEqual([f["key"] for f in opened], ["dark/9"])
        self.assertEqual(len(alarms), 1)
        self.assertIn("crate 9: crate dark", alarms[0][1])
        self.assertIn("16 of 16 cards dark", alarms[0][1])

    def test_a_dead_channel_needs_two_buckets(self):
        i = C.channel_index(6, 1, 9)
        self.detector.occupancy[i] = 0
        self.detector.rate[i] = 0
        opened, _, _ = run(self.model, self.detector, 1015, 1)
        self.assertEqual(opened, [])
        opened, _, alarms = run(self.model, self.detector, 1016, 1)
        self.assertEqual([f["key"] for f in opened], ["dead/6/1/9"])
        self.assertEqual(opened[0]["since"], 1015 * 60)  # its first dead bucket
        self.assertEqual(opened[0]["quantities"], ["cmos", "occupancy"])
        self.assertIn("no hits", alarms[0][1])

    def test_noisy_channel(self):
        i = C.channel_index(8, 8, 8)
        self.detector.noisy.add(i)
        opened, _, _ = run(self.model, self.detector, 1015, 8)
        self.assertEqual([f["key"] for f in opened], ["noisy/8/8/8"])
        self.assertEqual(opened[0]["quantities"], ["cmos"])
        self.detector.noisy.clear()
        _, closed, _ = run(self.model, self.detector, 1023, 12)
        self.assertEqual([f["key"] for f in closed], ["noisy/8/8/8"])

    def test_a_drift_is_a_base_finding_not_noise(self):
        """A base current drifting a little each bucket: 'base current out of range' once
        it leaves its range, never 'noisy' (its jumps are steady, not noise)."""
        i = C.channel_index(2, 3, 4)
        opened = []
        for k in range(12):
            self.detector.drift[i] = 1.5 * (k + 1)
            o, _, _ = run(self.model, self.detector, 1015 + k, 1)
            opened += o
        self.assertEqual([f["key"] for f in opened], ["base/2/3/4"])

    def test_a_level_step_is_not_noise(self):
        """Occupancy and CMOS rate three times higher from one bucket on (under the hot
        thresholds' 5×): no finding at all."""
        i = C.channel_index(7, 3, 3)
        self.detector.hot[i] = (self.detector.occupancy[i] * 3, self.detector.rate[i] * 3)
        opened, _, _ = run(self.model, self.detector, 1015, 15)
        self.assertEqual(opened, [])

    def test_a_change_of_run_conditions_is_not_a_finding(self):
        self.detector.scale = 3.0  # every channel's occupancy × 3
        opened, _, _ = run(self.model, self.detector, 1015, 20)
        self.assertEqual(opened, [])

    def test_fewer_events_is_not_a_finding(self):
        for k in range(10):
            step = self.model.step(1015 + k, self.detector.bucket(events=600))
            self.model.commit(step)
            self.assertEqual(step.opened, [])

    def test_masked_channel_is_not_judged_and_masking_closes_its_finding(self):
        hot = C.channel_index(1, 2, 3)
        masked = np.zeros(N, dtype=bool)
        masked[hot] = True
        self.detector.hot[hot] = (0.3, 50000.0)
        opened, _, alarms = run(self.model, self.detector, 1015, 3, masked=masked)
        self.assertEqual((opened, alarms), ([], []))
        # its baseline did not learn the hot values: unmasked, it is found
        opened, _, _ = run(self.model, self.detector, 1018, 1)
        self.assertEqual([f["key"] for f in opened], ["hot/1/2/3"])
        _, closed, alarms = run(self.model, self.detector, 1019, 1, masked=masked)
        self.assertEqual([(f["key"], f["end"]) for f in closed], [("hot/1/2/3", "masked")])
        self.assertEqual(alarms[0][0], 21)
        self.assertIn("cleared (masked)", alarms[0][1])

    def test_crate_19_and_the_trigger_sum_card_are_never_judged(self):
        d = self.detector
        fecd = card_channels(*C.TRIGGER_SUM_CARD)
        d.occupancy[fecd] = 0.0036
        d.rate[fecd] = 500
        d.current[fecd] = 0
        run(self.model, d, 1015, 12)
        d.dead_cards.add(C.TRIGGER_SUM_CARD)
        d.hot[C.channel_index(19, 0, 0)] = (0.5, 1e5)
        opened, _, _ = run(self.model, d, 1027, 3)
        self.assertEqual(opened, [])

    def test_hysteresis_a_finding_ends_below_half_its_thresholds(self):
        hot = C.channel_index(4, 5, 6)
        base = self.detector.occupancy[hot]
        self.detector.hot[hot] = (base * 10, self.detector.rate[hot])
        opened, _, _ = run(self.model, self.detector, 1015, 1)
        self.assertEqual([f["key"] for f in opened], ["hot/4/5/6"])
        # 4× its baseline: under the 5× to open, over the 3× to stay
        self.detector.hot[hot] = (base * 4, self.detector.rate[hot])
        _, closed, _ = run(self.model, self.detector, 1016, 3)
        self.assertEqual(closed, [])
        self.detector.hot.clear()
        _, closed, _ = run(self.model, self.detector, 1019, 1)
        self.assertEqual([f["key"] for f in closed], ["hot/4/5/6"])

    def test_a_bucket_without_a_quantity_decides_nothing(self):
        self.detector.dead_cards.add((3, 7))
        run(self.model, self.detector, 1015, 2)
        self.assertEqual([f["key"] for f in self.model.findings], ["dark/3/7"])
        self.detector.dead_cards.clear()
        for k in range(3):  # no data at all: the finding stays open, baselines unchanged
            before = self.model.baselines["occupancy"].mean.copy()
            step = self.model.step(1017 + k, {"occupancy": None, "cmos": None, "base": None})
            self.model.commit(step)
            self.assertEqual((step.opened, step.closed), ([], []))
            np.testing.assert_array_equal(self.model.baselines["occupancy"].mean, before)
        _, closed, _ = run(self.model, self.detector, 1020, 1)
        self.assertEqual([f["key"] for f in closed], ["dark/3/7"])

    def test_alarm_flood_is_bounded(self):
        model = HealthModel(HealthConfig(max_alarms=5))
        run(model, self.detector, 1000, 15)
        for crate in (0, 2, 4, 6, 8, 10, 12, 14):  # 8 cards die in 8 crates
            self.detector.dead_cards.add((crate, 1))
        opened, _, alarms = run(model, self.detector, 1015, 2)
        self.assertEqual(len(opened), 8)
        self.assertEqual(len(alarms), 5)
        self.assertIn("4 more findings", alarms[-1][1])

    def test_baseline_bytes_round_trip(self):
        b = self.model.baselines["cmos"]
        blob = b.to_bytes(60)
        back = Baseline.from_bytes(blob, 60)
        for name in Baseline.__slots__:
            np.testing.assert_array_equal(getattr(back, name), getattr(b, name))
        with self.assertRaises(ValueError):
            Baseline.from_bytes(blob, 5)
        with self.assertRaises(ValueError):
            Baseline.from_bytes(blob[:-1], 60)


class ServiceTests(RedisTestMixin, unittest.TestCase):
    """The service against a real Redis: finalised blobs written where the per-channel
    store writes them, a task.Clock as the wall clock."""

    interval = 60

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.detector = SteadyDetector(seed=3)
        self.config = HealthConfig(warmup_buckets=5)
        self.services = []

    def service(self, config=None):
        s = HealthService(self.redis, config or self.config, clock=self.clock)
        self.services.append(s)
        return s

    def write_bucket(self, b, **kwargs):
        for name, blob in self.detector.blobs(**kwargs).items():
            self.sync.command("SET", keys.channel_final(name, self.interval, b), blob)

    @defer.inlineCallbacks
    def advance(self, buckets, service=None, write=True):
        """Let `buckets` buckets pass: each is written (finalised) when it ends, then
        the service looks."""
        service = service or self.services[-1]
        for _ in range(buckets):
            b = int(self.clock.seconds()) // self.interval
            if write:
                self.write_bucket(b)
            self.clock.advance(self.interval)
            yield service.run_once()

    def alarms(self):
        count = int(self.sync.command("GET", "alarms:count") or 0)
        return [json.loads(self.sync.command("GET", "alarms:%d" % i)) for i in range(count)]

    def state(self):
        return self.sync.hgetall(keys.HEALTH_STATE)

    def findings(self):
        return json.loads(self.sync.command("GET", keys.HEALTH_FINDINGS) or "[]")

    @defer.inlineCallbacks
    def test_findings_alarms_and_return(self):
        s = self.service()
        yield self.advance(8)
        self.assertEqual(self.alarms(), [])
        self.detector.dead_cards.add((3, 7))
        self.detector.hot[C.channel_index(5, 2, 14)] = (0.3, 5e4)
        fault = int(self.clock.seconds()) // 60
        yield self.advance(2)
        state = self.state()
        self.assertEqual(int(state["position"]), fault + 1)
        findings = self.findings()
        self.assertEqual(sorted(f["key"] for f in findings), ["dark/3/7", "hot/5/2/14"])
        alarms = self.alarms()
        self.assertEqual(len(alarms), 2)
        self.assertEqual(sorted(a["level"] for a in alarms), [30, 40])
        for a in alarms:
            self.assertTrue(a["message"].startswith("channel-health - crate "), a)
            self.assertTrue(a["time"].endswith("Z"))
        self.detector.dead_cards.clear()
        self.detector.hot.clear()
        yield self.advance(2)
        self.assertEqual(self.findings(), [])
        alarms = self.alarms()
        self.assertEqual([a["level"] for a in alarms[2:]], [21, 21])
        closed = [json.loads(x) for x in self.sync.command("LRANGE", keys.HEALTH_CLOSED, 0, -1)]
        self.assertEqual(sorted(f["key"] for f in closed), ["dark/3/7", "hot/5/2/14"])
        self.assertEqual(json.loads(self.state()["config"])["hot-factor"], 5.0)
        self.assertEqual(s.model.position, int(self.state()["position"]))

    @defer.inlineCallbacks
    def test_restart_resumes_where_it_stopped(self):
        """A service stopped and started again continues from its stored position with
        its stored baselines and findings: the same as one that never stopped."""
        twin = SteadyDetector(seed=3)
        reference = HealthModel(self.config)
        s = self.service()
        b0 = int(self.clock.seconds()) // 60
        yield self.advance(7)
        self.detector.dead_cards.add((2, 2))
        yield self.advance(2)
        # a new service (a restarted log server) picks up from Redis
        s2 = self.service()
        yield self.advance(3, service=s2)
        self.assertEqual(s2.model.position, b0 + 11)
        # the same buckets judged by one model without a restart
        for k in range(12):
            if k == 7:
                twin.dead_cards.add((2, 2))
            # (as the service reads them: float32 values of the finalised blobs)
            step = reference.step(b0 + k, {name: channels.decode_final(blob)
                                           for name, blob in twin.blobs().items()})
            reference.commit(step)
        self.assertEqual([f["key"] for f in s2.model.findings], ["dark/2/2"])
        self.assertEqual(s2.model.findings, reference.findings)
        for name in ("occupancy", "cmos", "base"):
            np.testing.assert_array_equal(s2.model.baselines[name].mean,
                                          reference.baselines[name].mean)
        self.assertEqual(len(self.alarms()), 1)  # one alarm, not one per service
        del s

    @defer.inlineCallbacks
    def test_two_instances_never_apply_a_bucket_twice(self):
        a, b = self.service(), self.service()
        yield self.advance(6, service=a)
        self.detector.dead_cards.add((1, 1))
        for _ in range(4):
        # both look at every bucket; only one applies it, the other reloads
            bucket = int(self.clock.seconds()) // 60
            self.write_bucket(bucket)
            self.clock.advance(60)
            yield defer.gatherResults([a.run_once(), b.run_once()])
        self.assertEqual(int(self.state()["applied"]), 10)
        alarms = self.alarms()
        self.assertEqual(len(alarms), 1)
        self.assertIn("crate 1 card 1", alarms[0]["message"])
        # the loser's staged values are gone, the winner's renamed into place
        self.assertEqual(self.sync.command("KEYS", "minard:health:staged:*"), [])
        for name in ("occupancy", "cmos", "base"):
            self.assertEqual(self.sync.command("TTL", keys.health_baseline(name)), -1)
        self.assertEqual(self.sync.command("TTL", keys.HEALTH_FINDINGS), -1)

    @defer.inlineCallbacks
    def test_a_staged_value_that_expired_changes_nothing(self):
        from minard.store import health as store
        s = self.service()
        yield self.advance(2)
        before = self.state()
        commands, script_keys, args = store.apply_commands(
            "t", before["position"], int(before["position"]) + 1, 60, T0, 3, 1, [], {},
            {"cmos": b"x" * 10}, [], [(40, "must not be raised")])
        for command in commands[1:]:  # the cmos baseline never staged
            self.sync.command(*command)
        reply = self.sync.command("EVAL", store.HEALTH_APPLY.text, len(script_keys),
                                  *(script_keys + args))
        self.assertEqual(reply, -1)
        self.assertEqual(self.state(), before)
        self.assertEqual(self.alarms(), [])
        del s

    @defer.inlineCallbacks
    def test_waits_for_a_bucket_being_finalised_then_gives_up_on_it(self):
        s = self.service()
        yield self.advance(3)
        b = int(self.clock.seconds()) // 60
        self.write_bucket(b)
        # CMOS of bucket b is still open (a consumer has not flushed past it)
        self.sync.command("DEL", keys.channel_final("cmos", 60, b))
        self.sync.command("ZADD", keys.channel_open("cmos"), (b + 1) * 60 - 1, "60:%d" % b)
        self.clock.advance(60)
        yield s.run_once()
        self.assertEqual(s.model.position, b - 1)
        # a live writer still before its end holds it too
        self.sync.command("ZREM", keys.channel_open("cmos"), "60:%d" % b)
        redis_now = int(self.sync.command("TIME")[0])
        self.sync.command("HSET", keys.channel_writers("cmos"), "c1", "%d %d" % (b * 60, redis_now))
        yield s.run_once()
        self.assertEqual(s.model.position, b - 1)
        # the writer has passed it: no CMOS data in b, judged with the rest
        self.sync.command("HSET", keys.channel_writers("cmos"), "c1",
                          "%d %d" % ((b + 1) * 60, redis_now))
        yield s.run_once()
        self.assertEqual(s.model.position, b)
        # a bucket that stays open is judged SETTLE_DEADLINE s after its end
        self.write_bucket(b + 1)
        self.sync.command("DEL", keys.channel_final("base", 60, b + 1))
        self.sync.command("ZADD", keys.channel_open("base"), (b + 2) * 60 - 1, "60:%d" % (b + 1))
        self.clock.advance(60)
        yield s.run_once()
        self.assertEqual(s.model.position, b)
        self.clock.advance(SETTLE_DEADLINE)
        yield s.run_once()
        self.assertEqual(s.model.position, b + 1)

    @defer.inlineCallbacks
    def test_catch_up_after_an_outage_is_bounded(self):
        from minard.stats import Stats
        s = self.service(HealthConfig(warmup_buckets=5, catch_up_buckets=4))
        s.stats = Stats("log-server")
        yield self.advance(3)
        position = s.model.position
        # 20 buckets pass while the service is away (their data were finalised)
        for _ in range(20):
            self.write_bucket(int(self.clock.seconds()) // 60)
            self.clock.advance(60)
        applied = []
        for _ in range(3):
            n = yield s.run_once()
            applied.append(n)
        newest = int(self.clock.seconds()) // 60 - 1
        self.assertEqual(newest - position, 20)
        self.assertEqual(sum(applied), 4)  # the last 4, at most 3 per tick
        self.assertEqual(applied[:2], [3, 1])
        self.assertEqual(s.model.position, newest)
        self.assertEqual(s.stats.counters["health_buckets_skipped"], 16)  # counted once

    @defer.inlineCallbacks
    def test_first_start_judges_from_now_not_the_past(self):
        for k in range(30):
            self.write_bucket(T0 // 60 - 30 + k)
        s = self.service()
        yield s.run_once()
        self.assertEqual(s.model.position, T0 // 60 - 1)
        self.assertEqual(int(self.state()["applied"]), 1)

    @defer.inlineCallbacks
    def test_another_interval_starts_afresh_and_closes_the_old_findings(self):
        s = self.service()
        yield self.advance(6)
        self.detector.dead_cards.add((3, 3))
        yield self.advance(2)
        self.assertEqual(len(self.findings()), 1)
        self.interval = 5
        self.detector = SteadyDetector(seed=4, interval=5)
        s5 = self.service(HealthConfig(interval=5, warmup_buckets=5))
        yield s5.load()
        self.assertIsNone(s5.model.position)
        yield self.advance(1, service=s5)
        self.assertEqual(self.findings(), [])
        self.assertEqual(int(self.state()["interval"]), 5)
        cleared = self.alarms()[-1]
        self.assertEqual(cleared["level"], 21)
        self.assertIn("baseline reset", cleared["message"])
        del s

    @defer.inlineCallbacks
    def test_masked_channels_are_read_from_redis(self):
        from minard.store import health as store
        s = self.service()
        yield self.advance(6)
        hot = C.channel_index(7, 7, 7)
        yield store.mask(self.redis, hot, "snoplus", T0, "known flasher")
        self.detector.hot[hot] = (0.3, 5e4)
        yield self.advance(3)
        self.assertEqual(self.alarms(), [])
        yield store.unmask(self.redis, hot)
        yield self.advance(1)
        self.assertEqual(len(self.alarms()), 1)
        del s

    @defer.inlineCallbacks
    def test_errors_are_counted_and_the_service_carries_on(self):
        from minard.stats import Stats
        s = self.service()
        s.stats = Stats("log-server")
        yield self.advance(2)
        self.sync.command("SET", keys.HEALTH_STATE, "not a hash")
        s.model = None  # (re)loading reads the state hash
        s.tick()
        yield s._pending
        self.assertEqual(s.stats.counters.get("health_errors"), 1)
        self.assertEqual(len(self.flushLoggedErrors(txredisapi.ResponseError)), 1)
        self.sync.command("DEL", keys.HEALTH_STATE)
        s.model = None
        yield self.advance(1)
        self.assertIsNotNone(s.model.position)


def seed_health(sync, now, interval=60, buckets=15):
    """Judge `buckets` buckets of a steady detector up to the newest that has ended at
    `now`, and store each with health_apply.lua as the service does. Faults: card 9/4
    dark for 3 buckets (closed), then card 3/7 dark, channel 5/2/14 hot and channel
    2/3/4's base current drifting (open), and channel 6/6/6 hot from the last bucket.
    Returns the model; its alarms are in Redis too."""
    from minard.store import health as store
    detector = SteadyDetector(seed=5, interval=interval)
    config = HealthConfig(interval=interval, warmup_buckets=5)
    model = HealthModel(config)
    last = int(now) // interval - 1
    stored = ""
    for k, b in enumerate(range(last - buckets + 1, last + 1)):
        if k == 6:
            detector.dead_cards.add((9, 4))
        if k == 9:
            detector.dead_cards.clear()
        if k == 11:
            detector.dead_cards.add((3, 7))
            detector.hot[C.channel_index(5, 2, 14)] = (0.3, 5e4)
            detector.drift[C.channel_index(2, 3, 4)] = 25.0
        if k == buckets - 1:
            detector.hot[C.channel_index(6, 6, 6)] = (0.2, 3e4)
        data = {name: channels.decode_final(blob) for name, blob in detector.blobs().items()}
        step = model.step(b, data)
        commands, script_keys, args = store.apply_commands(
            "seed", stored, b, interval, min(now, (b + 1) * interval + 3), step.applied,
            step.next_id, step.findings, config.as_dict(),
            {n: bl.to_bytes(interval) for n, bl in step.baselines.items()}, step.closed,
            step.alarms)
        for command in commands:
            sync.command(*command)
        assert sync.command("EVAL", store.HEALTH_APPLY.text, len(script_keys),
                            *(script_keys + args)) == 1
        model.commit(step)
        stored = str(b)
    return model
