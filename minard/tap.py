"""Command line of every minard process: `twistd -n minard --role=ROLE [options]`.

Each role accepts only its own options (SPEC §1.1). Values come from, in order of
precedence: the command line, the role's section of `--config FILE` (INI, keys are
the long option names), the defaults below. A bad value is a one-line usage error
naming the option (exit code 1), never a traceback.
"""
import importlib
import os
import sys
from urllib.parse import urlsplit

from twisted.python import usage

from minard import constants as C
from minard.programs import read_ini


class OptionError(Exception):
    """A bad option value; str() is the one-line reason."""


# -- value checkers: each takes the raw string and returns the typed value -------------

def port_number(text):
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise OptionError("must be a port number 1-65535")
    if not 0 < value < 65536:
        raise OptionError("must be a port number 1-65535")
    return value


def positive_float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise OptionError("must be a positive number")
    if not value > 0 or value != value or value == float("inf"):
        raise OptionError("must be a positive number")
    return value


def timeout_seconds(text):
    """Seconds, or 0 to switch the timeout off."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise OptionError("must be a number of seconds (0: off)")
    if not value >= 0 or value == float("inf"):
        raise OptionError("must be a number of seconds (0: off)")
    return value


def integer(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        raise OptionError("must be an integer")


def seed(text):
    value = integer(text)
    if value < 0:
        raise OptionError("must be a non-negative integer")
    return value


def event_rate(text):
    value = positive_float(text)
    if value > C.SIMULATOR_MAX_RATE:
        raise OptionError("must be at most %d events/s" % C.SIMULATOR_MAX_RATE)
    return value


def plain_text(text):
    if not text or not text.strip():
        raise OptionError("must not be empty")
    return text


def name_without_spaces(text):
    if not text or any(c.isspace() for c in text) or not text.isprintable():
        raise OptionError("must be a printable name without spaces")
    return text


def program_names(text):
    """Comma-separated program names (minard.sim.programs.parse_names) -> list."""
    from minard.sim.programs import StandInError, parse_names

    try:
        return parse_names(text)
    except StandInError as e:
        raise OptionError(str(e))


def dialect(text):
    if text not in ("caspur", "ligier"):
        raise OptionError("must be 'caspur' or 'ligier'")
    return text


def subscription(text):
    words = (text or "").split()
    if not words or len(words) % 2:
        raise OptionError("must be pairs of 'flag tag', e.g. 'w RAWDATA w RECHDR'")
    for flag, tag in zip(words[::2], words[1::2]):
        if flag == "a":
            # 'a' makes the dispatcher wait for this client: a slow minard stalls the DAQ
            raise OptionError("flag 'a' is refused: it makes the dispatcher wait for minard "
                              "and stalls the DAQ when minard is slow; use 'w'")
        if flag not in ("w", "s", "m"):
            raise OptionError("unknown subscription flag %r" % (flag,))
        if len(tag) > 8:
            raise OptionError("tag %r is longer than 8 characters" % (tag,))
    return text


def zmq_endpoint(text):
    parts = urlsplit(text or "")
    if parts.scheme not in ("tcp", "ipc", "inproc"):
        raise OptionError("must be a ZeroMQ endpoint like tcp://127.0.0.1:5560")
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise OptionError("must be a ZeroMQ endpoint like tcp://127.0.0.1:5560")
    return text


def redis_url(text):
    """redis://[[user]:password@]host[:port][/db], or rediss://…?ca=FILE[&cert=F&key=F]
    for TLS (minard/store/connection.py parse_redis_url). A unix: URL would be ignored
    by connect(), which speaks TCP only: it is refused."""
    from minard.store.connection import RedisURLError, parse_redis_url
    try:
        parse_redis_url(text or "")
    except RedisURLError as e:
        raise OptionError(str(e))
    return text


def server_endpoint(text):
    """A Twisted server endpoint string (tcp:8080, ssl:8443:privateKey=...)."""
    from twisted.internet import endpoints, reactor

    if not text:
        raise OptionError("must be a Twisted endpoint string like tcp:8080")
    try:
        endpoints.serverFromString(reactor, text)
    except Exception as e:  # serverFromString raises many kinds of error
        raise OptionError("is not a valid endpoint (%s)" % (e,))
    return text


def existing_file(text):
    if not text or not os.path.isfile(text):
        raise OptionError("no such file: %s" % (text,))
    return text


def writable_file(text):
    directory = os.path.dirname(os.path.abspath(text or ".")) if text else None
    if not text or not os.path.isdir(directory):
        raise OptionError("cannot write %s: no such directory" % (text,))
    return text


def yes_no(text):
    """'yes'/'no' (also true/false, 1/0, on/off) -> bool."""
    value = str(text).strip().lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off"):
        return False
    raise OptionError("must be yes or no")


def key_directory(text):
    """A directory of CURVE public key files (*.key, see minard/curve.py)."""
    if not text or not os.path.isdir(text):
        raise OptionError("no such directory: %s" % (text,))
    return text


def fault_list(text):
    """Simulator faults, 'command; command' (minard/sim/faults.py)."""
    from minard.sim.faults import FaultError, parse_faults
    try:
        parse_faults(text)
    except FaultError as e:
        raise OptionError(str(e))
    return text


def directory(text):
    if not text:
        raise OptionError("must be a directory")
    return text


#: ZeroMQ CURVE keys of a binding role (minard/curve.py) and of a connecting role.
CURVE_SERVER = [
    ("curve-secret", None, existing_file, "CURVE key pair of this end (NAME.key_secret "
     "made by minard-keys); with --curve-allowed the links are authenticated and encrypted"),
    ("curve-allowed", None, key_directory, "directory of the public keys (NAME.key) of the "
     "workers allowed to connect"),
    ("plaintext-beyond-loopback", "no", yes_no, "yes: bind a plain-text link beyond "
     "loopback on purpose (refused otherwise)"),
]
CURVE_CLIENT = [
    ("curve-secret", None, existing_file, "CURVE key pair of this worker (NAME.key_secret "
     "made by minard-keys); with --curve-server-key the link is authenticated and encrypted"),
    ("curve-server-key", None, existing_file, "public key (NAME.key) of the binding end"),
    ("plaintext-beyond-loopback", "no", yes_no, "yes: connect a plain-text link beyond "
     "loopback on purpose (refused otherwise)"),
]

# -- the options of each role -----------------------------------------------------------
# (name, default, checker, help). A default of None means "optional, absent".

COMMON = [
    ("redis", C.DEFAULT_REDIS, redis_url, "Redis URL (password as redis://:secret@host:port/db)"),
    ("config", None, existing_file, "INI file with a section per role; command line wins"),
]

ROLES = {
    "dispatch-push": [
        ("host", "127.0.0.1", plain_text, "ControlHost dispatcher host"),
        ("port", str(C.DISPATCHER_PORT), port_number, "ControlHost dispatcher port"),
        ("dialect", "caspur", dialect, "dispatcher framing: caspur or ligier"),
        ("subscription", "w RAWDATA w RECHDR", subscription, "ControlHost subscription"),
        ("zmq", C.EVENTS_ZMQ, zmq_endpoint, "ZeroMQ PUSH endpoint to bind"),
        ("capture", None, writable_file, "also append every received frame to FILE"),
        ("idle-timeout", "%g" % C.DISPATCHER_IDLE_TIMEOUT, timeout_seconds,
         "reconnect when no record came for this many seconds (a stopped detector sends "
         "none: then one reconnection per period; 0: off, TCP keepalive still notices a "
         "dead host)"),
    ] + CURVE_SERVER,
    "dispatch-pull": [
        ("zmq", C.EVENTS_ZMQ, zmq_endpoint, "ZeroMQ PULL endpoint to connect to"),
        ("name", "dispatch-pull-0", name_without_spaces, "worker name (heartbeat, stats)"),
    ] + CURVE_CLIENT,
    "data-producer": [
        ("host", "127.0.0.1", plain_text, "data server host"),
        ("port", str(C.DATA_SERVER_PORT), port_number, "data server port"),
        ("cmos-zmq", C.CMOS_ZMQ, zmq_endpoint, "ZeroMQ PUSH endpoint for CMOS records"),
        ("base-zmq", C.BASE_ZMQ, zmq_endpoint, "ZeroMQ PUSH endpoint for BASE records"),
        ("idle-timeout", "%g" % C.DATA_SERVER_SILENCE, timeout_seconds,
         "reconnect when no CMOS or BASE record came for this many seconds (0: off)"),
    ] + CURVE_SERVER,
    "data-consumer": [
        ("port", "5557", port_number, "pull from tcp://127.0.0.1:PORT (5557 CMOS, 5558 BASE)"),
        ("zmq", None, zmq_endpoint, "ZeroMQ PULL endpoint (overrides --port)"),
    ] + CURVE_CLIENT,
    "web": [
        ("listen", "tcp:8080", server_endpoint, "Twisted endpoint to serve on"),
        ("redis-replica", None, redis_url, "read the pages' data from this Redis replica "
         "(the pages say when it lags); writes still go to --redis"),
        ("log-dir", "/var/log/snoplus", directory, "directory of the DAQ programs' logs"),
        ("programs", "etc/programs.ini", existing_file, "known DAQ programs"),
        ("auth-file", None, existing_file, "users who may mask channels on the Channel "
         "health page (the log server's users file, minard-passwd); without it, nobody"),
    ],
    "log-server": [
        ("listen", "tcp:8081", server_endpoint, "Twisted endpoint to serve on"),
        ("log-dir", "/var/log/snoplus", directory, "directory for the DAQ programs' logs"),
        ("programs", "etc/programs.ini", existing_file, "known DAQ programs"),
        ("auth-file", None, existing_file, "users and salted password hashes (minard-passwd)"),
    ],
    "simulator": [
        ("dispatcher-listen", "tcp:%d" % C.DISPATCHER_PORT, server_endpoint,
         "endpoint of the simulated ControlHost dispatcher"),
        ("data-listen", "tcp:%d" % C.DATA_SERVER_PORT, server_endpoint,
         "endpoint of the simulated data server"),
        ("rate", "1000", event_rate, "events per second"),
        ("seed", None, seed, "random seed"),
        ("replay", None, existing_file, "serve a file written by --capture instead"),
        ("stand-in-for", None, program_names,
         "post the heartbeats of these programs of programs.ini (comma-separated) to the "
         "log server of the [monitor] section: the DAQ programs of a system without a DAQ"),
        ("faults", None, fault_list, "faults to put in at start, e.g. 'kill-card 3/7; hot "
         "5/2/14; drift 2/3/4' (minard/sim/faults.py)"),
        ("control", None, server_endpoint, "endpoint taking fault commands while running, "
         "e.g. tcp:5561:interface=127.0.0.1 (python -m minard.sim.faults)"),
    ],
}

#: Which module under minard.services builds each role.
ROLE_MODULES = {role: role.replace("-", "_") for role in ROLES}


def _usage_error(message):
    """Print a one-line usage error and exit 1 (twistd would print its whole help)."""
    sys.stderr.write("minard: error: %s\n" % (message,))
    sys.stderr.flush()
    raise SystemExit(1)


def _role_from_args(args):
    for i, arg in enumerate(args):
        if arg.startswith("--role="):
            return arg.split("=", 1)[1]
        if arg == "--role" and i + 1 < len(args):
            return args[i + 1]
    return None


def _make_parser(role):
    table = COMMON + ROLES.get(role, [])
    params = [["role", None, None, "one of: %s" % ", ".join(ROLES)]]
    for name, default, _check, text in table:
        shown = " (default: %s)" % default if default is not None else ""
        params.append([name, None, None, text + shown])

    class RoleParser(usage.Options):
        optParameters = params
        synopsis = "twistd -n minard --role=ROLE [options]   (roles: %s)" % ", ".join(ROLES)

        def parseArgs(self, *extra):
            if extra:
                raise usage.UsageError("unexpected argument %r" % (extra[0],))

    return RoleParser, table


class Options(dict):
    """The options of one minard process, a dict of long option name -> typed value.

    twistd instantiates this and calls parseOptions(argv). The role is looked up first so
    that each role's --help and validation list only its own options.
    """

    def __init__(self):
        super().__init__()
        self.role = None

    def __str__(self):
        parser, _ = _make_parser(self.role)
        return str(parser())

    def parseOptions(self, args=None):
        if args is None:
            args = sys.argv[1:]
        args = list(args)
        role = _role_from_args(args)
        if role is not None and role not in ROLES:
            _usage_error("--role: unknown role %r (one of: %s)" % (role, ", ".join(ROLES)))
        self.role = role
        parser_class, table = _make_parser(role)
        parser = parser_class()
        try:
            parser.parseOptions(args)
        except usage.UsageError as e:
            text = str(e)
            if text.startswith("option ") and "not recognized" in text and role:
                text += " (not an option of role %s)" % (role,)
            _usage_error(text)
        if role is None:
            _usage_error("--role is required (one of: %s)" % ", ".join(ROLES))
        try:
            self.update(resolve(role, table, parser.opts))
        except OptionError as e:
            _usage_error(str(e))
        self["role"] = role

    # twistd looks for these on its sub-options
    subCommand = None
    subOptions = None


def resolve(role, table, given):
    """Merge command line, config file and defaults; check every value."""
    config_values = {}
    config_file = given.get("config")
    if config_file is not None:
        try:
            existing_file(config_file)
        except OptionError as e:
            raise OptionError("--config: %s" % (e,))
        config_values = read_config(config_file, role, {name for name, *_ in table})
    values = {}
    for name, default, check, _text in table:
        raw = given.get(name)
        source = "--%s" % name
        if raw is None and name in config_values:
            raw = config_values[name]
            source = "%s in [%s] of %s" % (name, role, config_file)
        if raw is None:
            raw = default
            if raw is None:
                values[name] = None
                continue
        try:
            values[name] = check(raw)
        except OptionError as e:
            raise OptionError("%s: %s" % (source, e))
    values["config-sections"] = config_values.get(None, {})
    return values


def read_config(path, role, known):
    """The role's section of an INI file, checked: an unknown key is an error."""
    try:
        parser = read_ini(path)
    except ValueError as e:
        raise OptionError("--config: %s" % (e,))
    values = {}
    if parser.has_section(role):
        for key, value in parser.items(role):
            if key not in known or key == "config":
                raise OptionError("--config: %s: unknown option %r in [%s]" % (path, key, role))
            values[key] = value
    # other sections (e.g. [monitor]) are passed through for the services that want them
    values[None] = {s: dict(parser.items(s)) for s in parser.sections() if s not in ROLES}
    return values


def makeService(options, reactor=None):
    """Build the MultiService of the role named in options."""
    if reactor is None:
        from twisted.internet import reactor
        from minard.clock import monotonic_timers
        monotonic_timers(reactor)  # timers immune to wall-clock steps (minard/clock.py)
    module = importlib.import_module("minard.services." + ROLE_MODULES[options["role"]])
    try:
        return module.make_service(options, reactor)
    except OptionError as e:  # e.g. an unreadable file named by an option, a bad [section]
        _usage_error(str(e))
