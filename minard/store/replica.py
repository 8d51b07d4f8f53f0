"""How far a Redis replica lags behind its primary, as the pages' reader sees it.

A `web` process given `--redis-replica` reads every page's data from the replica and
writes (its stats) to the primary. Replication is asynchronous: a replica cut off from
its primary keeps answering with old data, and nothing in the data says so. So the web
process measures it end to end: every PROBE_INTERVAL s it writes its own wall time to
`minard:probe:<ident>` on the primary and reads the key back from the replica. The lag
is now − the newest time the replica has; before the first probe arrives it counts from
the start. The replica's own view (`master_link_status` of INFO replication) is kept too.

The lag is this host's clock minus this host's clock: no clock skew between hosts enters.
"""
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from minard import constants as C
from minard.store import keys

#: Seconds between two probes.
PROBE_INTERVAL = 1.0
#: How long a probe key lives on the primary (s).
PROBE_TTL = 120


class ReplicaLag(TimerService):
    """Measures the replica's lag (module docstring). `state()` -> dict:
    {"lag": seconds behind (float, None before the first measurement), "behind": bool
    (lag > C.REPLICA_LAG_WARN or the replica cannot be read), "link": the replica's
    master_link_status ("up", "down", or None when unknown)}."""

    log = Logger()

    def __init__(self, primary, replica, ident, wall, clock=None, interval=PROBE_INTERVAL):
        TimerService.__init__(self, interval, self.tick)
        if clock is not None:
            self.clock = clock
        self.primary = primary
        self.replica = replica
        self.key = keys.replica_probe(ident)
        self.wall = wall
        self.started = None
        self.lag = None
        self.link = None
        self.readable = False
        self._pending = None

    def startService(self):
        self.started = self.wall()
        TimerService.startService(self)

    def state(self):
        behind = (not self.readable or self.lag is None or self.lag > C.REPLICA_LAG_WARN
                  or self.link == "down")
        lag = None if self.lag is None else round(self.lag, 1)
        return {"lag": lag, "behind": behind, "link": self.link}

    def tick(self):
        if self._pending is not None:  # a stalled Redis: one probe at a time
            return None
        self._pending = self._probe()
        self._pending.addBoth(self._done)
        return None

    def _done(self, _):
        self._pending = None

    @defer.inlineCallbacks
    def _probe(self):
        now = self.wall()
        try:
            yield self.primary.set(self.key, "%.3f" % now, expire=PROBE_TTL)
        except Exception:
            pass  # the primary is away: the replica's lag grows, which is the truth
        try:
            seen = yield self.replica.get(self.key)
            info = yield self.replica.info("replication")
        except Exception:
            self.readable = False
            return
        self.readable = True
        newest = _number(seen)
        reference = newest if newest is not None else self.started
        self.lag = max(0.0, self.wall() - reference)
        self.link = _link_status(info)


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _link_status(info):
    """master_link_status of an INFO replication reply (None on a primary). txredisapi
    gives INFO as a dict; a plain string reply is read line by line."""
    if isinstance(info, dict):
        return info.get("master_link_status")
    for line in str(info or "").splitlines():
        if line.startswith("master_link_status:"):
            return line.split(":", 1)[1].strip()
    return None
