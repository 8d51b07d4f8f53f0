"""The stale-data watchdog (minard/watchdog.py): a Clock drives time, Redis is real."""
import json

from twisted.internet import defer, task
from twisted.trial import unittest

from minard.stats import Stats
from minard.store import keys
from minard.store.connection import connect
from minard.watchdog import Watchdog, parse_section
from tests.support import RedisTestMixin

START = 1_700_000_000


class WatchdogTests(RedisTestMixin, unittest.TestCase):

    def setUp(self):
        RedisTestMixin.setUp(self)
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)
        self.clock = task.Clock()
        self.clock.advance(START)
        self.stats = Stats("log-server")
        self.dog = Watchdog(self.redis, after=10, interval=1.0, clock=self.clock,
                            stats=self.stats)
        # what the detector side is doing; each simulated second writes Redis like a
        # pull worker (heartbeat, TOTAL) and the push side (dispatcher)
        self.workers_alive = True
        self.events = 5
        self.dispatcher_up = True

    def simulate_second(self):
        b = int(self.clock.seconds())
        if self.workers_alive:
            self.sync.command("SET", keys.pull_heartbeat(1, b), "1", "EX", "60")
            if self.events:
                self.sync.command("HINCRBY", keys.trig(1, b), "TOTAL", self.events)
        if self.dispatcher_up:
            self.sync.command("SET", keys.DISPATCHER, "builder1", "EX", "60")
        else:
            self.sync.command("DEL", keys.DISPATCHER)

    @defer.inlineCallbacks
    def advance(self, seconds):
        """Advance the clock one second at a time, letting each check finish."""
        for _ in range(seconds):
            self.simulate_second()
            self.clock.advance(1)
            if self.dog._pending is not None:
                yield self.dog._pending

    def alarms(self):
        count = int(self.sync.command("GET", "alarms:count") or 0)
        return [json.loads(self.sync.command("GET", "alarms:%d" % i)) for i in range(count)]

    @defer.inlineCallbacks
    def start(self):
        self.simulate_second()
        self.dog.startService()
        self.addCleanup(self.dog.stopService)
        if self.dog._pending is not None:
            yield self.dog._pending

    @defer.inlineCallbacks
    def test_quiet_while_data_flow(self):
        yield self.start()
        yield self.advance(60)
        self.assertEqual(self.alarms(), [])

    @defer.inlineCallbacks
    def test_no_events_alarm_once_then_cleared_once(self):
        yield self.start()
        yield self.advance(5)
        self.events = 0
        yield self.advance(9)
        self.assertEqual(self.alarms(), [])  # not yet: 10 s have not passed
        yield self.advance(60)
        alarms = self.alarms()
        self.assertEqual(len(alarms), 1)  # once, not every second
        self.assertEqual(alarms[0]["level"], 40)
        self.assertIn("no events", alarms[0]["message"])
        self.assertTrue(alarms[0]["message"].startswith("watchdog - "))
        self.events = 3
        yield self.advance(30)
        alarms = self.alarms()
        self.assertEqual(len(alarms), 2)
        self.assertEqual(alarms[1]["level"], 21)
        self.assertIn("arriving again", alarms[1]["message"])
        self.assertEqual(self.stats.counters.get("watchdog_alarms"), 2)
        # and a second outage gives a second alarm
        self.events = 0
        yield self.advance(15)
        self.assertEqual(len(self.alarms()), 3)

    @defer.inlineCallbacks
    def test_workers_gone_is_not_reported_as_zero_events(self):
        yield self.start()
        self.workers_alive = False
        yield self.advance(40)
        alarms = self.alarms()
        self.assertEqual(len(alarms), 1)
        self.assertIn("dispatch-pull", alarms[0]["message"])
        self.workers_alive = True
        yield self.advance(5)
        alarms = self.alarms()
        self.assertEqual([a["level"] for a in alarms], [40, 21])

    @defer.inlineCallbacks
    def test_dispatcher_missing(self):
        yield self.start()
        self.dispatcher_up = False
        self.events = 0
        yield self.advance(30)
        messages = sorted(a["message"] for a in self.alarms())
        self.assertEqual(len(messages), 2)
        self.assertTrue(any("dispatcher" in m for m in messages))
        self.assertTrue(any("no events" in m for m in messages))
        self.dispatcher_up = True
        self.events = 1
        yield self.advance(3)
        self.assertEqual(sorted(a["level"] for a in self.alarms()), [21, 21, 40, 40])

    def used_memory(self):
        info = self.sync.command("INFO", "memory")
        return int(info.split("used_memory:")[1].split()[0])

    @defer.inlineCallbacks
    def test_redis_memory_alarm_at_80_percent_once_then_cleared(self):
        for i in range(40):  # 20 MB of data, so that the test's own traffic is noise
            self.sync.command("SET", "data:%d" % i, "x" * 500000)
        used = self.used_memory()
        limit = int(used / 0.7)
        self.sync.command("CONFIG", "SET", "maxmemory", str(limit))
        self.addCleanup(self.sync.command, "CONFIG", "SET", "maxmemory", "0")
        yield self.start()
        yield self.advance(3)
        self.assertEqual(self.alarms(), [])
        for i in range(10):  # ~85 %
            self.sync.command("SET", "ballast:%d" % i, "x" * int(limit * 0.015))
        yield self.advance(3)
        alarms = self.alarms()
        self.assertEqual(len(alarms), 1)
        self.assertEqual(alarms[0]["level"], 40)
        self.assertIn("Redis uses 8", alarms[0]["message"])
        self.assertIn("maxmemory", alarms[0]["message"])
        self.sync.command("DEL", *["ballast:%d" % i for i in range(10)])
        yield self.advance(3)
        alarms = self.alarms()
        self.assertEqual([a["level"] for a in alarms], [40, 21])
        self.assertIn("back below 80 %", alarms[1]["message"])

    @defer.inlineCallbacks
    def test_redis_errors_are_caught(self):
        yield self.start()
        self.dog.redis = _Failing()
        yield self.advance(3)
        self.assertTrue(self.stats.counters["watchdog_errors"] >= 3)
        self.dog.redis = self.redis
        yield self.advance(3)
        self.assertEqual(self.alarms(), [])
        self.flushLoggedErrors()


class _Failing:
    def __getattr__(self, name):
        return lambda *a, **k: defer.fail(ConnectionError("redis is away"))


class SectionTests(unittest.TestCase):

    def test_defaults(self):
        self.assertEqual(parse_section(None), (True, 60))

    def test_values(self):
        self.assertEqual(parse_section({"enabled": "no", "after-seconds": "120"}), (False, 120))

    def test_errors(self):
        for section in ({"enabled": "maybe"}, {"after-seconds": "soon"},
                        {"after-seconds": "0"}, {"afters": "1"}):
            self.assertRaises(ValueError, parse_section, section)
