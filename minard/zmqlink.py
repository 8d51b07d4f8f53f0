"""ZeroMQ links between minard processes (SPEC §2.5), on txzmq.

Messages are multipart, raw bytes only: frame 0 = receipt time as int64 big-endian
nanoseconds since the epoch, frames 1..n = complete records. No pickle, ever.

PushLink never blocks the reactor: a send that would exceed the high-water mark fails
at once and the caller decides (hold and retry briefly, then drop and count).
PullLink reads a bounded number of messages per reactor turn, so that timers (the
per-second flush) keep running under a flood, and can be kicked: ZeroMQ's descriptor is
edge-triggered and may stay silent about messages that were already queued.
"""
import struct

from twisted.internet import reactor as global_reactor
from txzmq import ZmqEndpoint, ZmqFactory
from txzmq.connection import ZmqConnection
from zmq import constants, error

_STAMP = struct.Struct(">q")

#: Messages (batches) queued per socket before sends fail: with up to 4000 records a
#: batch, about a second of data at full rate (bounded memory: ~100 MB per side).
DEFAULT_HWM = 64
#: Messages a PullLink handles per reactor turn before yielding.
READS_PER_TURN = 8


def stamp(ns):
    return _STAMP.pack(ns)


def unstamp(frame):
    """The receipt time (ns) from frame 0, or None if the frame is not 8 bytes."""
    if len(frame) != 8:
        return None
    return _STAMP.unpack(frame)[0]


_factory = None


def factory():
    """The process's single ZeroMQ context."""
    global _factory
    if _factory is None:
        _factory = ZmqFactory()
        _factory.lingerPeriod = 1000  # on shutdown, give queued batches a second to leave
        _factory.registerForShutdown()
    return _factory


def _open(connection, address, bind, keys):
    """Create the socket, give it its CURVE keys (minard/curve.py ServerKeys or
    ClientKeys; None: plain text) before it binds or connects, then bind/connect."""
    ZmqConnection.__init__(connection, factory())
    if keys is not None:
        keys.apply(connection.socket)
    connection.addEndpoints([ZmqEndpoint("bind" if bind else "connect", address)])


class PushLink(ZmqConnection):
    """A bound PUSH socket. send(frames) -> True if queued, False if the HWM is reached.
    keys: CURVE keys of this end (curve.ServerKeys when bound), None for plain text."""

    socketType = constants.PUSH

    def __init__(self, address, hwm=DEFAULT_HWM, bind=True, keys=None):
        self.highWaterMark = hwm
        _open(self, address, bind, keys)

    def send(self, frames):
        sock = self.socket
        try:
            sock.send(frames[0], constants.NOBLOCK | constants.SNDMORE)
        except error.Again:
            return False
        last = len(frames) - 1
        for i in range(1, last):
            sock.send(frames[i], constants.SNDMORE)
        sock.send(frames[last], 0)
        return True

    def messageReceived(self, message):  # PUSH sockets receive nothing
        pass


class PullLink(ZmqConnection):
    """A connected PULL socket calling on_message(frames) for each message.
    keys: CURVE keys of this end (curve.ClientKeys when connecting), None for plain text."""

    socketType = constants.PULL

    def __init__(self, address, on_message, hwm=DEFAULT_HWM, bind=False, reactor=None,
                 keys=None):
        self.highWaterMark = hwm
        self.on_message = on_message
        self._reactor = reactor or global_reactor
        self._more = None
        _open(self, address, bind, keys)

    def doRead(self):
        if self.read_scheduled is not None:
            if not self.read_scheduled.called:
                self.read_scheduled.cancel()
            self.read_scheduled = None
        if self.drain(READS_PER_TURN) == READS_PER_TURN:
            # more may be waiting: come back on the next reactor turn, after timers ran
            if self._more is None or not self._more.active():
                self._more = self._reactor.callLater(0, self.doRead)

    def drain(self, limit=100000):
        """Read what is already queued, at most `limit` messages; returns how many."""
        sock = self.socket
        for count in range(limit):
            if self.factory is None:
                return count
            try:
                frames = sock.recv_multipart(constants.NOBLOCK)
            except error.Again:
                return count
            self.on_message(frames)
        return limit

    def kick(self):
        """Read whatever is queued (the descriptor may not have told us)."""
        if self.factory is not None:
            self.doRead()

    def messageReceived(self, message):
        self.on_message(message)
