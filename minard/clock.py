"""Two clocks, kept apart (issue 12: wall-clock steps).

* Timers run on a monotonic clock: `monotonic_timers(reactor)` makes the reactor's
  `seconds()` — what callLater, LoopingCall and TimerService schedule by —
  `time.monotonic`. Twisted follows `time.time` by default, so a wall clock stepped back
  an hour stopped every timer (flushes, heartbeats, /stream, the watchdog) for an hour.
* Buckets and stamps use the wall clock (`wall()`, unix seconds): a second of data is
  the second it happened in. Components take a `wall` callable beside their scheduling
  `clock`; it defaults to `clock.seconds`, so tests drive both with one task.Clock.

A step of the wall clock is then only a jump in the stamps, which each consumer of them
handles (the pull worker detects a step back and never writes a second twice).
"""
import time

wall = time.time


def monotonic_timers(reactor):
    """Schedule the reactor's timers on time.monotonic. Timers already set (by twistd or
    a library at import) are moved to the monotonic clock with the same time left."""
    if getattr(reactor, "seconds", None) is time.monotonic:
        return reactor
    offset = time.monotonic() - reactor.seconds()
    reactor.seconds = time.monotonic
    for call in reactor.getDelayedCalls():
        call.time += offset  # the same shift for all: the heap's order holds
        call.seconds = time.monotonic
    return reactor
