"""`/stream`: Server-Sent Events, one message a second, the same bytes for every client.

One snapshot is read from Redis per second (one round trip) while at least one client is
connected, serialised once, and written to every client. A page on a control-room screen
therefore costs one idle connection, not a poll per chart per second.

Each client is registered with its HTTP channel as a streaming (push) producer. When a
client does not read, its transport's buffer fills and Twisted pauses the producer; a
paused client is skipped (it misses messages, which is fine: each message is the whole
current state), so nothing piles up in memory for it. A client that stays paused longer
than `drop_after` is disconnected. The kernel send buffer of each stream socket is kept
small so that the bytes a stalled client can hold stay bounded too.
"""
import json
import socket
import time

from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from minard.constants import (STALE_AFTER, STALE_LOOKBACK, STREAM_DROP_AFTER,
                              STREAM_INTERVAL, STREAM_MAX_CLIENTS, STREAM_SNDBUF)

#: Ticks happen this far into each second, so the second just ended is flushed by then
#: (pull workers flush 0.3-0.5 s after a second ends, plus their Redis round trip; a late
#: one is caught by the message's `previous`, the second before read again).
TICK_PHASE = 0.85
#: New alarms carried by one message at most (the Alarms page fetches the rest itself).
ALARMS_PER_MESSAGE = 100
RETRY_MS = 2000


class TooManyClients(Exception):
    pass


def _age_text(age):
    if age is None:
        return "more than %d s" % STALE_LOOKBACK
    if age < 120:
        return "%d s" % age
    if age < 7200:
        return "%d min" % (age // 60)
    return "%.1f h" % (age / 3600)


def staleness(now, last_events, last_heartbeat, stale_after=STALE_AFTER):
    """{"stale", "severe", "reason", "events_age", "heartbeat_age"}.

    last_* are the last seconds (bucket numbers) that had events / a pull-worker
    heartbeat, or None if none was seen. Ages count from the end of that second.
    """
    events_age = None if last_events is None else max(0, int(now - (last_events + 1)))
    beat_age = None if last_heartbeat is None else max(0, int(now - (last_heartbeat + 1)))
    reasons = []
    if beat_age is None or beat_age > stale_after:
        reasons.append("no pull-worker heartbeat for %s" % _age_text(beat_age))
    if events_age is None or events_age > stale_after:
        reasons.append("no events for %s" % _age_text(events_age))
    return {
        "stale": bool(reasons),
        "severe": beat_age is None or beat_age > stale_after,
        "reason": "; ".join(reasons),
        "events_age": events_age,
        "heartbeat_age": beat_age,
    }


def sse_message(payload, event_id=None):
    """One SSE message: `id:` and `data:` lines (JSON has no raw newlines)."""
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    head = b"id: %d\n" % event_id if event_id is not None else b""
    return head + b"data: " + data.encode("utf-8") + b"\n\n"


@implementer(IPushProducer)
class StreamClient:
    """One connected /stream request."""

    def __init__(self, hub, request):
        self.hub = hub
        self.request = request
        self.paused_since = None
        self.sent = 0
        self.skipped = 0
        self.finished = defer.Deferred()
        self.gone = False

    # IPushProducer: called by the HTTP channel when the transport buffer fills/drains
    def pauseProducing(self):
        if self.paused_since is None:
            self.paused_since = self.hub.clock.seconds()

    def resumeProducing(self):
        self.paused_since = None

    def stopProducing(self):
        self.hub.remove(self)

    def send(self, data):
        if self.gone:
            return
        if self.paused_since is not None:
            self.skipped += 1
            self.hub.count("stream_skipped")
            if self.hub.clock.seconds() - self.paused_since > self.hub.drop_after:
                self.hub.count("stream_dropped")
                self.drop()
            return
        try:
            self.request.write(data)
            self.sent += 1
        except Exception:  # the connection went away under us
            self.hub.remove(self)

    def drop(self):
        """Disconnect a client that cannot keep up."""
        channel = getattr(self.request, "channel", None)
        transport = getattr(channel, "transport", None)
        self.hub.remove(self)
        if transport is not None:
            abort = getattr(transport, "abortConnection", None) or transport.loseConnection
            abort()


def _limit_send_buffer(request, size):
    """Keep the kernel send buffer of this socket small (bounded memory per client)."""
    transport = getattr(request.channel, "transport", None)
    for _ in range(4):
        if transport is None:
            return
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            sock = handle()
            if isinstance(sock, socket.socket):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
                except OSError:
                    pass
                return
        transport = getattr(transport, "transport", None)


class StreamHub:
    """Reads one snapshot a second while anyone listens and broadcasts it."""

    log = Logger()

    def __init__(self, reads, clock, stats=None, interval=STREAM_INTERVAL,
                 max_clients=STREAM_MAX_CLIENTS, drop_after=STREAM_DROP_AFTER,
                 stale_after=STALE_AFTER, sndbuf=STREAM_SNDBUF):
        self.reads = reads
        self.clock = clock
        self.stats = stats
        self.interval = interval
        self.max_clients = max_clients
        self.drop_after = drop_after
        self.stale_after = stale_after
        self.sndbuf = sndbuf
        self.clients = set()
        self.loop = None
        self._start_call = None
        self._busy = False
        self.last_message = None  # (time, bytes) of the newest broadcast
        self.last_events = None
        self.last_heartbeat = None
        self.alarm_next = None
        self.stopped = False

    def count(self, name, amount=1):
        if self.stats is not None:
            self.stats.incr(name, amount)

    def _gauge(self):
        if self.stats is not None:
            self.stats.set("stream_clients", len(self.clients))

    # -- clients ---------------------------------------------------------------------------

    def add(self, request):
        if self.stopped or len(self.clients) >= self.max_clients:
            raise TooManyClients()
        client = StreamClient(self, request)
        self.clients.add(client)
        self._gauge()
        self.count("stream_connections")
        if self.sndbuf:
            _limit_send_buffer(request, self.sndbuf)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(lambda _: self.remove(client))
        request.write(b"retry: %d\n\n" % RETRY_MS)
        if self.last_message is not None and \
                self.clock.seconds() - self.last_message[0] < 2 * self.interval:
            client.send(self.last_message[1])
        self._start()
        return client

    def remove(self, client):
        if client.gone:
            return
        client.gone = True
        self.clients.discard(client)
        self._gauge()
        try:
            client.request.unregisterProducer()
        except Exception:
            pass
        if not client.finished.called:
            client.finished.callback(None)
        if not self.clients:
            self._stop()

    def close_all(self):
        """Shut down: end every stream (their requests finish normally)."""
        self.stopped = True
        for client in list(self.clients):
            self.remove(client)
        self._stop()

    # -- the timer ---------------------------------------------------------------------------

    def _start(self):
        if self.loop is not None or self._start_call is not None:
            return
        now = self.clock.seconds()
        delay = (TICK_PHASE - now) % self.interval if self.interval >= 1 else 0
        self._start_call = self.clock.callLater(delay, self._begin)

    def _begin(self):
        self._start_call = None
        if not self.clients:
            return
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = self.clock
        self.loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("stream timer stopped", f))

    def _stop(self):
        if self._start_call is not None and self._start_call.active():
            self._start_call.cancel()
        self._start_call = None
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None

    def tick(self):
        """Never raises: a failed snapshot becomes a message saying so."""
        if self._busy:
            self.count("stream_ticks_skipped")
            return None
        self._busy = True
        now = self.clock.seconds()
        d = defer.maybeDeferred(self.snapshot, now)
        d.addErrback(self._failed, now)
        d.addCallback(self.broadcast, now)
        d.addErrback(lambda f: self.log.failure("stream broadcast failed", f))

        def done(_):
            self._busy = False
        d.addBoth(done)
        return d

    @defer.inlineCallbacks
    def snapshot(self, now):
        started = time.monotonic()
        second = int(now) - 1
        snap = yield self.reads.stream_snapshot(second)
        if snap["last_events"] is not None:
            self.last_events = max(self.last_events or 0, snap["last_events"])
        if snap["last_heartbeat"] is not None:
            self.last_heartbeat = max(self.last_heartbeat or 0, snap["last_heartbeat"])
        snap["last_events"] = self.last_events
        snap["last_heartbeat"] = self.last_heartbeat
        snap["stale"] = staleness(now, self.last_events, self.last_heartbeat, self.stale_after)
        snap["heartbeat_age"] = snap["stale"]["heartbeat_age"]
        snap["server_time"] = round(now, 3)
        snap["alarms"] = []
        count = snap.pop("alarm_count")
        if count is not None:
            if self.alarm_next is None or count < self.alarm_next:
                self.alarm_next = count  # first message, or the counter was reset
            elif count > self.alarm_next:
                got = yield self.reads.alarms(start=self.alarm_next, limit=ALARMS_PER_MESSAGE)
                snap["alarms"] = got["alarms"]
                self.alarm_next = max(self.alarm_next, got["latest"] + 1)
        snap["latest_alarm"] = None if count is None else count - 1
        self.count("stream_snapshots")
        if self.stats is not None:
            self.stats.set("stream_snapshot_ms", round((time.monotonic() - started) * 1000, 2))
        return snap

    def _failed(self, failure, now):
        self.count("stream_snapshot_errors")
        self.log.warn("stream snapshot failed: {error}", error=failure.getErrorMessage())
        return {
            "time": int(now) - 1,
            "server_time": round(now, 3),
            "error": "cannot read Redis: %s" % (failure.getErrorMessage(),),
            "present": False,
            "stale": {"stale": True, "severe": True,
                      "reason": "the web server cannot read Redis",
                      "events_age": None, "heartbeat_age": None},
            "alarms": [],
        }

    def broadcast(self, snap, now):
        data = sse_message(snap, event_id=snap.get("time"))
        self.last_message = (now, data)
        for client in list(self.clients):
            client.send(data)
        self.count("stream_messages", len(self.clients))
