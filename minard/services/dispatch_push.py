"""`dispatch-push`: ControlHost dispatcher -> ZeroMQ PUSH (SPEC §2.1, §2.5).

The role's wiring. The dispatcher client (minard.ingest.dispatcher) connects, reconnecting
with backoff, subscribes, asks for every portion (`Always`), names itself, and drops a
link that is corrupt, carries no records or falls silent (--idle-timeout); this module
forwards the RAWDATA/RECHDR records stamped with their receipt time, in batches. When no
worker keeps up, ZeroMQ's high-water mark is reached: the link stops reading the
dispatcher socket (TCP pushes back, and a `w` subscription lets the dispatcher drop for
us), holds one batch for up to HOLD_LIMIT seconds, then drops it and counts it. The
reactor never blocks and memory stays bounded. The `dispatcher` key lives only while the
link is up: set when it comes up, deleted the moment it is dropped. Every second in which
the link was up is recorded per bucket (LinkMarker, store.events.mark_link): a second
without that mark has unknown event rates (null), not zero.
"""
import time

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from minard import constants as C, curve, zmqlink
from minard.ingest import dispatcher
from minard.services.common import ProcessBase
from minard.stats import CorruptionLog
from minard.store import events, keys
from minard.wire.controlhost import CASPUR, DIALECTS

#: Records per ZeroMQ message at most; a batch also leaves after BATCH_DELAY seconds.
BATCH_RECORDS = 4000
BATCH_DELAY = 0.002
#: How long a batch refused by the high-water mark is held before it is dropped (s):
#: long enough for supervisord to restart a worker pool, short enough that a dead pool
#: shows up as counted drops here rather than as silent drops at the dispatcher.
HOLD_LIMIT = 5.0
RETRY_INTERVAL = 0.005
#: The dispatcher key: refreshed this often, living this long (SPEC §4).
DISPATCHER_REFRESH = 20
DISPATCHER_TTL = 60


class Forwarder:
    """Batches records and sends them over a PushLink, holding on back-pressure."""

    log = Logger()

    def __init__(self, link, stats, clock, now_ns=time.time_ns):
        self.link = link
        self.stats = stats
        self.clock = clock
        self.now_ns = now_ns
        self.records = []
        self.stamp = None
        self.held = None
        self.held_since = None
        self.transport = None      # the dispatcher connection to pause while holding
        self._send_call = None
        self._retry_call = None

    def add(self, records):
        if not records:
            return
        if not self.records:
            self.stamp = zmqlink.stamp(self.now_ns())
        self.records.extend(records)
        if len(self.records) >= BATCH_RECORDS:
            self.send_batch()
        elif self._send_call is None:
            self._send_call = self.clock.callLater(BATCH_DELAY, self.send_batch)

    def send_batch(self):
        if self._send_call is not None and self._send_call.active():
            self._send_call.cancel()
        self._send_call = None
        if not self.records:
            return
        message = [self.stamp] + self.records
        self.records = []
        if self.held is not None:
            self._hold(message)
            return
        if self.link.send(message):
            self.stats.incr("zmq_messages")
        else:
            self._hold(message)

    def _hold(self, message):
        if self.held is None:
            self.held = [message]
            self.held_since = self.clock.seconds()
            self.stats.incr("backpressure_events")
            if self.transport is not None:
                self.transport.pauseProducing()
            self._retry_call = self.clock.callLater(RETRY_INTERVAL, self.retry)
        else:
            self.held.append(message)

    def retry(self):
        self._retry_call = None
        while self.held:
            if self.link.send(self.held[0]):
                self.stats.incr("zmq_messages")
                self.held.pop(0)
            else:
                break
        if self.held and self.clock.seconds() - self.held_since >= HOLD_LIMIT:
            dropped = sum(len(m) - 1 for m in self.held)
            self.stats.incr("dropped_records", dropped)
            self.stats.incr("dropped_batches", len(self.held))
            self.log.warn("no pull worker keeps up: dropped {n} records", n=dropped)
            self.held = []
        if self.held:
            self._retry_call = self.clock.callLater(RETRY_INTERVAL, self.retry)
            return
        self.held = None
        if self.transport is not None:
            self.transport.resumeProducing()

    def stop(self):
        """Send what is batched (best effort) and cancel timers."""
        self.send_batch()
        for call in (self._send_call, self._retry_call):
            if call is not None and call.active():
                call.cancel()


class LinkMarker(Service):
    """Records every wall-clock second in which the dispatcher link was up
    (store.events.mark_link), so that a rate read later for a second without a mark is
    unknown (null), not 0: the pull workers cannot tell a quiet detector from a dead
    link, this process can. `is_up()` says whether the link is up now; `seen()` is called
    when the link comes up or goes down (that second had the link up for a while).

    Looks every LINK_MARK_PERIOD s (under a second, so no second is skipped), one script
    call in flight at a time; while Redis is away the unwritten seconds wait (at most
    LINK_MARK_PENDING, the oldest dropped and counted in `link_marks_dropped`)."""

    log = Logger()

    def __init__(self, redis, stats, is_up, reactor, wall=None,
                 period=C.LINK_MARK_PERIOD, max_pending=C.LINK_MARK_PENDING):
        self.redis = redis
        self.stats = stats
        self.is_up = is_up
        self.reactor = reactor
        self.wall = wall or time.time
        self.period = period
        self.max_pending = max_pending
        self.pending = set()
        self.last_marked = None
        self.since = None          # the first second this process looked at
        self.in_flight = None
        self.since_written = False
        self.loop = None

    def startService(self):
        Service.startService(self)
        self.since = int(self.wall())
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = self.reactor
        self.loop.start(self.period, now=True).addErrback(
            lambda f: self.log.failure("link marker stopped", f))

    def stopService(self):
        Service.stopService(self)
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.tick()  # the last second, best effort
        return self.in_flight

    def seen(self):
        """The link changed state in this second: it was up for part of it."""
        self._note(int(self.wall()))
        self.flush()

    def tick(self):
        if self.is_up():
            self._note(int(self.wall()))
        self.flush()

    def _note(self, second):
        if second == self.last_marked:
            return
        self.last_marked = second
        self.pending.add(second)
        if len(self.pending) > self.max_pending:
            for old in sorted(self.pending)[:len(self.pending) - self.max_pending]:
                self.pending.discard(old)
                self.stats.incr("link_marks_dropped")

    def flush(self):
        """Send the oldest pending seconds (the first call also sets LINK_SINCE, even
        with the link down: from then on a second without a mark is a link down)."""
        if self.in_flight is not None or (not self.pending and self.since_written):
            return
        seconds = sorted(self.pending)[:events.LINK_SECONDS_PER_CALL]
        since = min([self.since] + seconds)
        d = self.in_flight = defer.maybeDeferred(events.mark_link, self.redis, seconds, since)

        def done(_):
            self.in_flight = None
            self.since_written = True
            self.pending.difference_update(seconds)
            self.stats.incr("link_marks", len(seconds))

        def failed(f):
            self.in_flight = None
            self.stats.incr("redis_errors")

        d.addCallbacks(done, failed)


class DispatchPush(Service):
    """The listener of the dispatcher client: records to the Forwarder, frames to the
    capture file, and the `dispatcher` key, which lives only while the link is up (set
    when it comes up, deleted the moment it is dropped, not left to expire)."""

    log = Logger()
    #: CURVE keys of the bound event link (minard/curve.py ServerKeys); None: plain text.
    link_keys = None

    def __init__(self, options, reactor, stats, redis, link=None, marker=None):
        self.marker = marker  # a LinkMarker, told when the link comes up or goes down
        self.reactor = reactor
        self.stats = stats
        self.redis = redis
        self.host = options["host"]
        self.port = options["port"]
        self.dialect = DIALECTS[options["dialect"]]
        self.subscription = options["subscription"]
        self.idle_timeout = options.get("idle-timeout", C.DISPATCHER_IDLE_TIMEOUT)
        self.capture_path = options.get("capture")
        self.capture = None
        self.zmq_address = options["zmq"]
        self.link = link
        self.forwarder = None
        self.corruption = CorruptionLog(stats, clock=reactor.seconds)
        self.connection = None
        self.quiet = False  # reconnecting after an idle drop: the client logs those itself

    def client_factory(self):
        """The dispatcher client's factory, reporting to this service."""
        return dispatcher.DispatcherClientFactory(
            self, self.stats, self.reactor, dialect=self.dialect,
            subscription=self.subscription, idle_timeout=self.idle_timeout)

    def startService(self):
        Service.startService(self)
        if self.link is None:
            self.link = zmqlink.PushLink(self.zmq_address, keys=self.link_keys)
        self.forwarder = Forwarder(self.link, self.stats, self.reactor)
        if self.capture_path:
            self.capture = open(self.capture_path, "ab")

    def stopService(self):
        Service.stopService(self)
        if self.forwarder is not None:
            self.forwarder.stop()
        if self.capture is not None:
            self.capture.close()
            self.capture = None
        return self._forget_dispatcher()

    # -- DispatcherClientFactory listener --------------------------------------------------

    def on_frames(self, frames):
        if self.capture is not None:
            self.capture_frames(frames)

    def on_records(self, records):
        if records:
            self.quiet = False
            self.forwarder.add(records)

    def capture_frames(self, frames):
        """Append frames to the capture file in CASPUR framing (what --replay serves)."""
        try:
            self.capture.write(b"".join(CASPUR.frame(tag, payload) for tag, payload in frames))
        except OSError as e:  # a full disk is not corrupt input: count it as what it is
            self.stats.incr("capture_write_errors")
            self.corruption.trouble("capture_write_failed", str(e))

    def link_up(self, connection):
        self.connection = connection
        self.forwarder.transport = connection  # paused (with its idle clock) on back-pressure
        if not self.quiet:
            self.log.info("connected to dispatcher {host}:{port} ({dialect})", host=self.host,
                          port=self.port, dialect=self.dialect.name)
        self.refresh_dispatcher_key()
        if self.marker is not None:
            self.marker.seen()

    def link_down(self, connection):
        if self.connection is connection:
            self.connection = None
            self.forwarder.send_batch()
            self.forwarder.transport = None
            self.quiet = connection.idle_dropped
            if not self.quiet:
                self.log.info("lost the dispatcher link; reconnecting")
            self._forget_dispatcher()
            if self.marker is not None:
                self.marker.seen()

    def refresh_dispatcher_key(self):
        if self.connection is None:
            return
        d = self.redis.set(keys.DISPATCHER, self.host, expire=DISPATCHER_TTL)
        d.addErrback(lambda f: self.stats.incr("redis_errors"))

    def _forget_dispatcher(self):
        d = self.redis.delete(keys.DISPATCHER)
        d.addErrback(lambda f: self.stats.incr("redis_errors"))
        return d


def make_service(options, reactor):
    base = ProcessBase(options, "dispatch-push", heartbeat_name="minard-dispatch-push",
                       status=None)
    push = DispatchPush(options, reactor, base.stats, base.redis)
    push.marker = LinkMarker(base.redis, base.stats, lambda: push.connection is not None,
                             reactor)
    push.marker.setServiceParent(base.service)
    push.link_keys = curve.link_keys(options, "server", [options["zmq"]], base.stats, reactor,
                                     "dispatch-push")
    base.status = lambda: "ok" if push.connection is not None else "dispatcher link down"
    push.setServiceParent(base.service)
    endpoint = endpoints.HostnameEndpoint(reactor, options["host"], options["port"],
                                          timeout=10)
    dispatcher.client_service(endpoint, push.client_factory(), reactor).setServiceParent(
        base.service)
    TimerService(DISPATCHER_REFRESH, push.refresh_dispatcher_key).setServiceParent(base.service)
    return base.service
