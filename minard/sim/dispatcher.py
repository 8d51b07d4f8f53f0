"""A ControlHost dispatcher (CASPUR dialect) serving many clients, fed by a source of
records: the synthetic detector, or frames replayed from a `--capture` file.

Like the real dispatcher with a `w` subscription, it never blocks on a slow client: while
a client's socket buffer is full, that client's portions are dropped (and counted).
"""
from twisted.internet import protocol, task
from twisted.logger import Logger

from minard.sim.clients import DroppingClient
from minard.wire.controlhost import CASPUR, CorruptStream, FrameDecoder, tag_bytes, tag_text

#: How often the source is asked for records (per second).
TICKS_PER_SECOND = 50


class DispatcherClient(DroppingClient):
    """One subscriber. Learns its tags from Subscrib; gets data only after Always."""

    log = Logger()

    def connectionMade(self):
        self.decoder = FrameDecoder(CASPUR)
        self.tags = set()
        self.always = False
        self.name = None
        self.dropped = 0
        DroppingClient.connectionMade(self)

    def dataReceived(self, data):
        try:
            frames = self.decoder.feed(data)
        except CorruptStream as e:
            self.log.warn("dropping a client that sent a corrupt stream: {e}", e=e)
            self.transport.abortConnection()
            return
        for tag, payload in frames:
            name = tag_text(tag)
            if name == "Subscrib":
                words = payload.decode("ascii", "replace").split()
                self.tags = {tag_bytes(t[:8]) for t in words[1::2]}
            elif name == "Always":
                self.always = True
            elif name == "MyId":
                self.name = payload.decode("ascii", "replace")

    def deliver(self, tag, data):
        if not self.always or tag not in self.tags:
            return
        if self.paused:
            self.dropped += 1
            return
        self.transport.write(data)


class DispatcherFactory(protocol.Factory):
    protocol = DispatcherClient

    def __init__(self):
        self.clients = set()

    def broadcast(self, tag, data):
        for client in list(self.clients):
            client.deliver(tag, data)


RAWDATA = tag_bytes("RAWDATA")
RECHDR = tag_bytes("RECHDR")


class DetectorSource:
    """Synthetic events at `rate` per second, as RAWDATA frames; the detector's run
    headers as RECHDR frames (take_headers)."""

    def __init__(self, detector, rate):
        self.detector = detector
        self.rate = rate
        self._carry = 0.0

    def take(self, seconds):
        wanted = self.rate * seconds + self._carry
        n = int(wanted)
        self._carry = wanted - n
        if n <= 0:
            return b""
        records = self.detector.events(n, seconds)
        return b"".join(CASPUR.frame(RAWDATA, r) for r in records)

    def take_headers(self):
        return b"".join(CASPUR.frame(RECHDR, r) for r in self.detector.take_headers())


class ReplaySource:
    """Frames of a --capture file, `rate` frames per second, looping at the end."""

    def __init__(self, path, rate):
        with open(path, "rb") as f:
            data = f.read()
        decoder = FrameDecoder(CASPUR)
        frames = decoder.feed(data)
        if not frames:
            raise ValueError("%s holds no complete ControlHost frame" % (path,))
        self.frames = [CASPUR.frame(tag, payload) for tag, payload in frames]
        self.tags = [tag for tag, _ in frames]
        self.rate = rate
        self.position = 0
        self._carry = 0.0

    def take(self, seconds):
        wanted = self.rate * seconds + self._carry
        n = int(wanted)
        self._carry = wanted - n
        out = []
        for _ in range(n):
            out.append(self.frames[self.position])
            self.position = (self.position + 1) % len(self.frames)
        return b"".join(out)


class Feeder:
    """Moves data from a source to every client, TICKS_PER_SECOND times a second."""

    def __init__(self, factory, source, clock):
        self.factory = factory
        self.source = source
        self.loop = task.LoopingCall(self.tick)
        self.loop.clock = clock
        self.clock = clock
        self.last = None

    def start(self):
        self.last = self.clock.seconds()
        return self.loop.start(1.0 / TICKS_PER_SECOND, now=False)

    def stop(self):
        if self.loop.running:
            self.loop.stop()

    def tick(self):
        now = self.clock.seconds()
        elapsed = min(now - self.last, 1.0)  # after a stall, do not burst a backlog
        self.last = now
        if not self.factory.clients:
            return
        data = self.source.take(elapsed)
        headers = getattr(self.source, "take_headers", None)
        headers = headers() if headers is not None else b""
        if headers:  # a run starts: its header before its events
            self.factory.broadcast(RECHDR, headers)
        if data:
            self.factory.broadcast(RAWDATA, data)
