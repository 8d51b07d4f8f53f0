"""Stand-ins for the DAQ programs, for a system without a DAQ (scripts/run-local).

The simulator plays the detector; with `--stand-in-for builder,L2-client,...` it also
plays the DAQ programs of programs.ini that minard does not run itself: it posts their
heartbeats (status "ok", every [monitor] interval) to the log server of its `[monitor]`
section, over HTTP like the real programs' `curl -u ... /heartbeat`. A fresh local system
then shows every program OK and raises no alarm; stopping the simulator stops them too,
which is what a dead DAQ looks like (one "not responding" alarm per program).

Never in the production layout: there the real programs post.
"""
import re

from minard.programs import NAME_PATTERN

#: What the stand-ins post as their status.
STATUS = "ok"


class StandInError(ValueError):
    """A bad --stand-in-for or a missing [monitor] url; str() is the one-line reason."""


def parse_names(text):
    """Program names from a comma- or space-separated list (programs.ini spelling),
    repeats dropped; StandInError for an empty list or a name programs.ini cannot have."""
    names = []
    for name in re.split(r"[\s,]+", text or ""):
        if not name:
            continue
        if not NAME_PATTERN.match(name) or ".." in name:
            raise StandInError("bad program name %r" % (name,))
        if name not in names:
            names.append(name)
    if not names:
        raise StandInError("name at least one program of programs.ini")
    return names


def stand_in_service(names, monitor_section, reactor=None):
    """A MonitorService posting the heartbeat of each program in `names`, through one
    Poster made from the `[monitor]` section (url, user, password-file ...). StandInError
    when the section has no url; minard.monitor.ConfigError for a bad value."""
    from minard import monitor

    poster, interval = monitor.poster_from_config(monitor_section or {}, reactor)
    if poster is None:
        raise StandInError("needs the log server's url in the [monitor] section of --config")
    service = monitor.MonitorService(poster)
    for name in names:
        monitor.HeartbeatService(name=name, interval=interval, status=lambda: STATUS,
                                 poster=poster).setServiceParent(service)
    return service
