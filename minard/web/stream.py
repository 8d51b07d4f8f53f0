"""`/stream`: Server-Sent Events, one message a second, the same bytes for every client.

One snapshot is read from Redis per second (one round trip) while at least one client is
connected, serialised once, and written to every client. A page on a control-room screen
therefore costs one idle connection, not a poll per chart per second.

A client must keep up. Before each message the hub looks at what the client has not
taken yet of what was sent to it: the bytes still in Twisted's buffers and in the kernel's
send queue (SIOCOUTQ: unsent and unacknowledged), and the bytes its own kernel holds that
it has not read (how far the receive window it advertises, TCP_INFO's tcpi_snd_wnd, is
below the largest it advertised). A client that reads everything within a second has
nothing left by the next tick. One that has (more than `unread_slack` or two messages
unread, or anything on our side) is behind; it is dropped when what our side holds for
it exceeds `max_unsent`, or when it has been behind for `drop_after` seconds — whether it
never reads or reads too slowly (a client that pauses and resumes now and then is still
behind at every tick). Behind nginx the same holds: when the browser stalls, nginx's small
proxy buffer fills, nginx stops reading, and its window closes. The kernel send buffer
of each stream socket is kept small as well, so the memory a client can hold stays
bounded (about `max_unsent` plus one message).

Who may open a stream (per-address caps, the slots kept for loopback) is the site's
business (site.py); the hub only serves the clients it is given.
"""
import fcntl
import json
import socket
import sys
import termios
import time

from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from minard.constants import (STALE_AFTER, STALE_LOOKBACK, STREAM_DROP_AFTER,
                              STREAM_INTERVAL, STREAM_MAX_UNSENT, STREAM_SNDBUF,
                              STREAM_UNREAD_SLACK)

#: Ticks happen this far into each second, so the second just ended is flushed by then
#: (pull workers flush 0.3-0.5 s after a second ends, plus their Redis round trip; a late
#: one is caught by the message's `previous`, the second before read again).
TICK_PHASE = 0.85
#: New alarms carried by one message at most (the Alarms page fetches the rest itself).
ALARMS_PER_MESSAGE = 100
RETRY_MS = 2000
#: Dropped clients are counted (stream_dropped) and logged at most once per this many s.
DROP_LOG_INTERVAL = 60.0


class HubStopped(Exception):
    """No new stream: the hub is shutting down."""


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


def _transports(request):
    """The transports under a request's HTTP channel, outermost first (TLS, then TCP)."""
    out = []
    transport = getattr(getattr(request, "channel", None), "transport", None)
    while transport is not None and len(out) < 4:
        out.append(transport)
        transport = getattr(transport, "transport", None)
    return out


def _socket_of(transports):
    for transport in transports:
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            sock = handle()
            if isinstance(sock, socket.socket):
                return sock
    return None


#: ioctl: bytes in a socket's send queue (Linux SIOCOUTQ, the same number as TIOCOUTQ).
SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)


def _kernel_unsent(sock):
    """Bytes in a TCP socket's send queue not yet acknowledged by the peer (0 where the
    kernel cannot tell: then only Twisted's buffers count)."""
    if SIOCOUTQ is None:
        return 0
    try:
        got = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int.from_bytes(got, "little", signed=True)


#: struct tcp_info (linux/tcp.h): tcpi_snd_wnd, the receive window the peer advertised
#: last (the free space of its receive buffer), is the u32 at this offset (Linux >= 5.4;
#: an older kernel gives a shorter struct, and then only our own queue counts).
TCPI_SND_WND = 228


def _peer_window(sock):
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCPI_SND_WND + 4)
    except (OSError, AttributeError, ValueError):
        return None
    if len(info) < TCPI_SND_WND + 4:
        return None
    return int.from_bytes(info[TCPI_SND_WND:TCPI_SND_WND + 4], sys.byteorder)


@implementer(IPushProducer)
class StreamClient:
    """One connected /stream request."""

    def __init__(self, hub, request):
        self.hub = hub
        self.request = request
        self.transports = _transports(request)
        self.socket = _socket_of(self.transports)
        self.paused_since = None
        self.behind_since = None
        self.window_max = 0
        self.dropped_for = None  # why it was dropped: {"unsent", "unread", "behind"}
        self.sent = 0
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

    def unsent(self):
        """Bytes sent to this client that it has not taken yet: in Twisted's write buffers
        (TLS and TCP) and in the kernel's send queue."""
        total = 0
        for transport in self.transports:
            buffered = getattr(transport, "dataBuffer", None)
            if isinstance(buffered, bytes):  # a FileDescriptor (twisted.internet.abstract)
                total += len(buffered) - getattr(transport, "offset", 0) + \
                    getattr(transport, "_tempDataLen", 0)
        if self.socket is not None and self.socket.fileno() >= 0:
            total += _kernel_unsent(self.socket)
        return total

    def unread(self):
        """Bytes the client's kernel holds that the client has not read (about: the
        window is counted in the kernel's units, memory rather than data)."""
        if self.socket is None or self.socket.fileno() < 0:
            return 0
        window = _peer_window(self.socket)
        if window is None:
            return 0
        self.window_max = max(self.window_max, window)
        return self.window_max - window

    def send(self, data):
        """Write one message, or drop the client if it cannot keep up (module docstring)."""
        if self.gone:
            return
        now = self.hub.clock.seconds()
        unsent = self.unsent()
        unread = self.unread()
        if unsent > 0 or self.paused_since is not None or \
                unread > max(self.hub.unread_slack, 2 * len(data)):
            if self.behind_since is None:
                self.behind_since = now
            self.hub.count("stream_behind")
            if unsent > self.hub.max_unsent or now - self.behind_since >= self.hub.drop_after:
                self.dropped_for = {"unsent": unsent, "unread": unread,
                                    "behind": now - self.behind_since}
                self.hub.dropped(self.dropped_for)
                self.drop()
                return
        else:
            self.behind_since = None
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


def _limit_send_buffer(sock, size):
    """Keep the kernel send buffer of this socket small (bounded memory per client)."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        pass


class StreamHub:
    """Reads one snapshot a second while anyone listens and broadcasts it."""

    log = Logger()

    #: store.replica.ReplicaLag of a web process reading a replica (Site sets it)
    replica_lag = None

    def __init__(self, reads, clock, stats=None, interval=STREAM_INTERVAL,
                 drop_after=STREAM_DROP_AFTER, max_unsent=STREAM_MAX_UNSENT,
                 unread_slack=STREAM_UNREAD_SLACK, stale_after=STALE_AFTER,
                 sndbuf=STREAM_SNDBUF, wall=None):
        self.reads = reads
        self.clock = clock  # timers and durations (monotonic in the role: minard/clock.py)
        self.wall = wall or clock.seconds  # which second to read, server_time
        self.stats = stats
        self.interval = interval
        self.drop_after = drop_after
        self.max_unsent = max_unsent
        self.unread_slack = unread_slack
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
        self._drop_logged_at = None

    def count(self, name, amount=1):
        if self.stats is not None:
            self.stats.incr(name, amount)

    def dropped(self, why):
        """Count a client dropped for not keeping up; log it once per DROP_LOG_INTERVAL."""
        self.count("stream_dropped")
        now = self.clock.seconds()
        if self._drop_logged_at is None or now - self._drop_logged_at >= DROP_LOG_INTERVAL:
            self._drop_logged_at = now
            self.log.info("dropped a /stream client that cannot keep up ({unsent} bytes not "
                          "taken, about {unread} unread in its kernel, behind for {behind:.1f} "
                          "s); more are counted in stream_dropped, logged once a minute", **why)

    def _gauge(self):
        if self.stats is not None:
            self.stats.set("stream_clients", len(self.clients))

    # -- clients ---------------------------------------------------------------------------

    def add(self, request):
        if self.stopped:
            raise HubStopped()
        client = StreamClient(self, request)
        self.clients.add(client)
        self._gauge()
        self.count("stream_connections")
        if self.sndbuf:
            _limit_send_buffer(client.socket, self.sndbuf)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(lambda _: self.remove(client))
        hello = b"retry: %d\n\n" % RETRY_MS
        if self.last_message is not None and \
                self.clock.seconds() - self.last_message[0] < 2 * self.interval:
            hello += self.last_message[1]  # the current state at once, not in a second
        request.write(hello)
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
        now = self.wall()  # the phase is a fraction of the wall second
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
        now = self.wall()
        d = defer.maybeDeferred(self.snapshot, now)
        d.addErrback(self._failed, now)
        d.addCallback(self.broadcast, self.clock.seconds())
        d.addErrback(lambda f: self.log.failure("stream broadcast failed", f))

        def done(_):
            self._busy = False
        d.addBoth(done)
        return d

    def replica_state(self):
        """The Redis replica's lag when the pages read from one (store/replica.py
        ReplicaLag.state(): lag, behind, link), else None."""
        lag = self.replica_lag
        return None if lag is None else lag.state()

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
        snap["replica"] = self.replica_state()
        snap["alarms"] = []
        count = snap.pop("alarm_count")
        # no alarms:count yet means no alarm ever: the first one raised is alarms:0, and
        # it is sent like any other (it used to be taken as the starting point)
        seen = 0 if count is None else count
        if self.alarm_next is None or seen < self.alarm_next:
            self.alarm_next = seen  # first message, or the counter was reset
        elif seen > self.alarm_next:
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
            "replica": self.replica_state(),
            "alarms": [],
        }

    def broadcast(self, snap, now):
        data = sse_message(snap, event_id=snap.get("time"))
        self.last_message = (now, data)
        for client in list(self.clients):
            client.send(data)
        self.count("stream_messages", len(self.clients))
