"""`simulator`: a stand-in for the detector on a laptop — a ControlHost dispatcher fed by
a synthetic detector (or a --replay file) and a data server sending CMOS and BASE records.
"""
from twisted.application.service import MultiService, Service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints

from minard.sim.detector import SyntheticDetector
from minard.sim.dispatcher import DetectorSource, DispatcherFactory, Feeder, ReplaySource
from minard.tap import OptionError
from minard.wire.controlhost import CorruptStream


class FeederService(Service):
    def __init__(self, feeder):
        self.feeder = feeder

    def startService(self):
        Service.startService(self)
        self.feeder.start()

    def stopService(self):
        Service.stopService(self)
        self.feeder.stop()


def make_service(options, reactor):
    service = MultiService()
    detector = SyntheticDetector(seed=options.get("seed"))
    if options.get("replay"):
        try:
            source = ReplaySource(options["replay"], options["rate"])
        except (OSError, ValueError, CorruptStream) as e:  # not a --capture file
            raise OptionError("--replay: %s" % (e,))
    else:
        source = DetectorSource(detector, options["rate"])
    factory = DispatcherFactory()
    StreamServerEndpointService(
        endpoints.serverFromString(reactor, options["dispatcher-listen"]), factory
    ).setServiceParent(service)
    FeederService(Feeder(factory, source, reactor)).setServiceParent(service)

    from minard.sim.dataserver import data_server_service
    data_server_service(options["data-listen"], detector, reactor).setServiceParent(service)
    return service
