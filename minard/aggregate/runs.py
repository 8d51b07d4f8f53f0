"""Run history and per-run occupancy by event type (issue 13). Pure: no I/O.

A run's record (store/runs.py) is filled by every pull worker, each second, from what it
saw of the run: events and Σ nhit per event type, the first and last receipt time, the
seconds with events, and the run headers (RHDR: run type, source and crate masks, first
gtid). Run-number changes in the events start a run's record even without a header.

Per-run occupancy by event type: a worker follows a few runs at once (`RunFollower`):
per followed run and event type, the hits per channel index and the events behind them,
summed over the run. Each worker writes its own cumulative partial of each (run, type)
(a field of its own, overwritten: a retried write is harmless), and the readers add the
workers' partials. A run that is no longer followed (not seen for RUN_IDLE s while a new
one needs its place) is written one last time and forgotten; should it come back, its
new partials go to a new field (`<writer>#<k>`), so that fields always add up.
"""
import numpy as np

from minard.constants import (EVENT_TYPES, N_CHANNELS, RUN_IDLE, RUN_TYPE_BITS,
                              RUNS_FOLLOWED)

N_TYPES = len(EVENT_TYPES)  # 29


def run_type_names(run_mask):
    """The names of the run-type bits set in an RHDR RunMask (unknown bits as 'bit N')."""
    names = []
    for bit in range(32):
        if run_mask >> bit & 1:
            names.append(RUN_TYPE_BITS.get(bit, "bit %d" % bit))
    return names


class FollowedRun:
    """One worker's running partial of one run: hits per channel and events, per type."""

    __slots__ = ("run", "field", "hits", "events", "seen", "version", "written")

    def __init__(self, run, field):
        self.run = run
        self.field = field
        self.hits = {}          # type index -> int64[N_CHANNELS]
        self.events = {}        # type index -> events
        self.seen = None        # the last second it had events
        self.version = 0        # bumped by every add
        self.written = 0        # the version Redis has

    @property
    def dirty(self):
        return self.version != self.written

    def add(self, t, hits, events):
        h = self.hits.get(t)
        if h is None:
            h = self.hits[t] = np.zeros(N_CHANNELS, dtype=np.int64)
        if hits is not None:
            h += hits
        self.events[t] = self.events.get(t, 0) + int(events)
        self.version += 1


class RunFollower:
    """Which runs a worker follows, and their partials. `follow(run, second)` says
    whether the run's hits are followed (True) or only counted (False)."""

    def __init__(self, writer="local", followed=RUNS_FOLLOWED, idle=RUN_IDLE):
        self.writer = writer
        self.followed = followed
        self.idle = idle
        self.runs = {}          # run -> FollowedRun
        self.retired = []       # FollowedRun no longer followed, to be written once more
        self.generation = {}    # run -> partial fields used so far
        self.refused = 0        # events whose hits were not followed (no place)

    def follow(self, run, second):
        r = self.runs.get(run)
        if r is None:
            if len(self.runs) >= self.followed:
                oldest = min(self.runs.values(), key=lambda x: x.seen)
                if oldest.seen is not None and second - oldest.seen < self.idle:
                    return False
                del self.runs[oldest.run]
                if oldest.dirty:
                    self.retired.append(oldest)
            g = self.generation.get(run, 0)
            self.generation[run] = g + 1
            field = self.writer if g == 0 else "%s#%d" % (self.writer, g)
            r = self.runs[run] = FollowedRun(run, field)
        if r.seen is None or second > r.seen:
            r.seen = second
        return True

    def add(self, run, t, hits, events):
        """Hits per channel (or None) and events of type t of a followed run."""
        r = self.runs.get(run)
        if r is not None:
            r.add(t, hits, events)

    def collect(self):
        """(parts, token): parts [(run, type index, field, hits, events)] of every
        partial not yet written (the whole run so far, cumulative; encode them at once,
        the arrays go on growing); give `token` to written() when Redis has them."""
        out, token = [], []
        for r in list(self.runs.values()) + self.retired:
            if r.dirty:
                token.append((r, r.version))
                for t in sorted(r.hits):
                    out.append((r.run, t, r.field, r.hits[t], r.events.get(t, 0)))
        return out, token

    def written(self, token):
        """Redis has what collect() gave with this token: clean up to those versions; a
        retired run written in full is forgotten."""
        for r, version in token:
            r.written = max(r.written, version)
            if r in self.retired and not r.dirty:
                self.retired.remove(r)

    def unwritten(self):
        return bool(self.retired) or any(r.dirty for r in self.runs.values())
