"""Redis full with minard's own data (issue: per-channel store, "memory that cannot
surprise anyone"): with the production policy (noeviction) nothing of minard's is ever
evicted; writes are refused, the workers hold their seconds and partials, say so in their
status, and write everything, exactly once, when there is room again."""
import time

from twisted.internet import defer

from minard.store import channels, keys
from tests.support import wait_for
from tests.test_faults import FaultTestCase, sleep


def info(sync, section):
    out = {}
    for line in sync.command("INFO", section).splitlines():
        if ":" in line:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


class RedisFullTests(FaultTestCase):
    timeout = 150

    @defer.inlineCallbacks
    def test_nothing_of_minards_is_evicted_and_nothing_lost(self):
        self.sync.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        yield self.start_pipeline(2)
        yield self.feeder.run(7.0)
        # finalised occupancy, an alarm and a program heartbeat exist before Redis fills
        yield wait_for(lambda: self.sync.command("KEYS", "minard:chan:occupancy:5:*"),
                       timeout=20)
        self.sync.command("SET", keys.alarm(0), '{"id": 0}', "EX", 86400)
        self.sync.command("SET", keys.heartbeat("builder"), "ok", "EX", 600)
        before = set(self.sync.command("KEYS", "*"))
        before_minard = {k for k in before if k.startswith(("ts:", "minard:chan:", "alarms:",
                                                            "heartbeat:"))}
        used = int(info(self.sync, "memory")["used_memory"])
        self.sync.command("CONFIG", "SET", "maxmemory", str(used))  # full now
        full_since = time.time()
        yield self.feeder.run(5.0)  # events keep coming: every write is refused
        full_for = time.time() - full_since
        after = set(self.sync.command("KEYS", "*"))
        self.assertEqual(info(self.sync, "stats")["evicted_keys"], "0")
        self.assertEqual(before_minard - after, set())  # nothing of minard's went
        self.assertGreater(self.pull_stats("flush_errors"), 0)
        self.assertEqual(self.pull_stats("dropped_events"), 0)
        self.assertGreater(full_for, 4)
        # room again: every second held is written exactly once, and finalised
        self.sync.command("CONFIG", "SET", "maxmemory", "0")
        yield self.feeder.run(2.0)
        stored = yield self.settle(self.feeder.total(), timeout=30)
        self.assert_exact(stored)
        self.assert_alive()
        last = max(self.feeder.sent)
        yield wait_for(lambda: self.sync.command(
            "EXISTS", keys.channel_final("occupancy", 5, (last - 5) // 5)), timeout=30)
        sent_seconds = sorted(self.feeder.sent)
        for b in range(sent_seconds[0] // 5 + 1, (last - 5) // 5 + 1):
            blob = self.sync.get_bytes("GET", keys.channel_final("occupancy", 5, b))
            self.assertIsNotNone(blob, "5-s bucket %d was never finalised" % b)
            events = sum(self.feeder.sent.get(s, [0])[0] for s in range(5 * b, 5 * b + 5))
            self.assertEqual(channels.decode_final(blob)["denominator"], events,
                             "5-s bucket %d" % b)
        yield sleep(0)
