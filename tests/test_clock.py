"""Timers on a monotonic clock, stamps on the wall clock (minard/clock.py; issue 12 item 6:
wall clock stepped back)."""
import time

from twisted.internet.base import DelayedCall
from twisted.trial import unittest

from minard.clock import monotonic_timers


class FakeReactor:
    def __init__(self):
        self.calls = []
        self.seconds = time.time

    def callLater(self, delay, f):
        c = DelayedCall(self.seconds() + delay, f, (), {}, lambda c: None, lambda c: None,
                        self.seconds)
        self.calls.append(c)
        return c

    def getDelayedCalls(self):
        return self.calls


class MonotonicTimersTests(unittest.TestCase):
    def test_reactor_schedules_on_monotonic_and_moves_existing_timers(self):
        r = FakeReactor()
        early = r.callLater(30, lambda: None)
        monotonic_timers(r)
        self.assertIs(r.seconds, time.monotonic)
        self.assertTrue(abs(early.getTime() - time.monotonic() - 30) < 1)
        monotonic_timers(r)  # idempotent
        self.assertTrue(abs(early.getTime() - time.monotonic() - 30) < 1)
