"""What every minard process has besides its own work: a Redis connection, its
self-instrumentation (`minard:stats:<process>`) and its own heartbeat to the logging server.
"""
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger

from minard.stats import Stats, StatsPublisher
from minard.store.connection import connect

log = Logger()


class ProcessService(MultiService):
    """A MultiService that stops the services in `last` only after all the others have
    stopped: the stats publisher's final snapshot then counts what the process's work did
    while stopping (a pull worker's last flushes)."""

    last = ()

    def stopService(self):
        Service.stopService(self)
        first = [s for s in reversed(list(self)) if s not in self.last]
        d = defer.DeferredList([defer.maybeDeferred(s.stopService) for s in first])
        d.addCallback(lambda _: defer.DeferredList(
            [defer.maybeDeferred(s.stopService) for s in self.last if s.running]))
        return d


class ProcessBase:
    """The shared parts of one process: `service` (a MultiService to add to), `stats`,
    `redis`. `status` is a callable giving the text of this process's heartbeat."""

    def __init__(self, options, process, heartbeat_name=None, redis=None, status=None):
        self.options = options
        self.process = process
        self.service = ProcessService()
        self.stats = Stats(process)
        self.redis = redis if redis is not None else connect(options["redis"])
        publisher = StatsPublisher(self.stats, self.redis)
        publisher.setServiceParent(self.service)
        self.service.last = (publisher,)
        self.status = status or (lambda: "ok")
        monitor_section = (options.get("config-sections") or {}).get("monitor")
        if monitor_section and heartbeat_name:
            from minard import monitor
            heartbeat = monitor.from_config(monitor_section, heartbeat_name,
                                            lambda: self.status())
            if heartbeat is not None:
                heartbeat.setServiceParent(self.service)
