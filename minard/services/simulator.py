"""`simulator`: a stand-in for the detector on a laptop — a ControlHost dispatcher fed by
a synthetic detector (or a --replay file) and a data server sending CMOS and BASE records;
with --stand-in-for, the heartbeats of the DAQ programs too (minard/sim/programs.py).
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
    # faults put in on purpose: --faults at start, --control while running
    from minard.sim.faults import ControlFactory, Faults, parse_faults
    detector.faults = Faults(clock=reactor.seconds)
    for command in parse_faults(options.get("faults")):
        detector.faults.command(command)
    if options.get("control"):
        control = StreamServerEndpointService(
            endpoints.serverFromString(reactor, options["control"]),
            ControlFactory(detector.faults))
        control._raiseSynchronously = True  # a port in use stops the start
        control.setServiceParent(service)
    if options.get("stand-in-for"):  # the DAQ programs' heartbeats (minard/sim/programs.py)
        from minard.monitor import ConfigError
        from minard.sim.programs import StandInError, stand_in_service
        try:
            stand_in_service(options["stand-in-for"],
                             (options.get("config-sections") or {}).get("monitor"),
                             reactor).setServiceParent(service)
        except (StandInError, ConfigError) as e:
            raise OptionError("--stand-in-for: %s" % (e,))
    return service
