"""What both simulated servers do with their clients: like the real dispatcher and data
server, never block on a slow one — while its socket buffer is full, its data are dropped."""
from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class DroppingClient(protocol.Protocol):
    """A client of a simulated server, registered in `factory.clients` while connected.
    `paused` is true while the transport's buffer is full: senders skip it then."""

    paused = False

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.factory.clients.add(self)

    def connectionLost(self, reason):
        self.factory.clients.discard(self)

    # IPushProducer: the transport tells us when its buffer is full
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.paused = True
