"""ZeroMQ CURVE on minard's links (event link push → pull, data link producer → consumer).

libzmq's CurveZMQ (RFC 26 of zeromq.org) authenticates and encrypts a link; pyzmq's
`zmq.auth` reads the key files and answers libzmq's ZAP requests. Key pairs are the
files `zmq.auth.create_certificates` writes (`minard-keys` makes them): `NAME.key` holds
the public key, `NAME.key_secret` the public and the secret key (mode 0600).

* The binding end (dispatch-push, data-producer) is the CURVE server: it has its own
  secret key file (`--curve-secret`) and accepts only the clients whose public key files
  are in `--curve-allowed` DIRECTORY (read at start-up: restart the process to add one).
  A refused peer is counted (`curve_refused` in the process's stats) and logged once per
  interval with the first characters of its key.
* The connecting end (dispatch-pull, data-consumer) is a CURVE client: its own secret key
  file (`--curve-secret`) and the server's public key file (`--curve-server-key`).
* Without keys a link is plain text. Binding or connecting a plain-text link beyond
  loopback (any address other than 127.0.0.0/8, ::1, localhost, ipc://, inproc://) is
  refused at start-up unless `--plaintext-beyond-loopback=yes` says it is meant.
"""
import os
import threading
from urllib.parse import urlsplit

from twisted.logger import Logger

from minard.tap import OptionError  # noqa: F401 (raised for bad key options)

#: The ZAP domain of minard's CURVE server sockets.
ZAP_DOMAIN = b"minard"
#: Characters of a refused key shown in the log (z85: 40 characters in all).
KEY_SHOWN = 8
#: A refused peer is logged at most once per this many seconds (each refusal counted).
REFUSED_LOG_INTERVAL = 60.0

LOOPBACK_HOSTS = {"localhost", "::1"}


def is_loopback(endpoint):
    """True when a ZeroMQ endpoint string stays on this host (tcp to a loopback address,
    ipc://, inproc://). `tcp://*:5560` and every other address are beyond loopback."""
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = (parts.hostname or "").lower()
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _load_pair(path, option):
    import zmq.auth
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise OptionError("%s: cannot read key file %s (%s)" % (option, path, e))
    return public, secret


class ServerKeys:
    """The binding end's CURVE keys: its own pair and the allowed clients' public keys
    (z85 bytes, 40 characters each)."""

    def __init__(self, public, secret, allowed):
        self.public = public
        self.secret = secret
        self.allowed = frozenset(allowed)

    @classmethod
    def load(cls, secret_file, allowed_dir):
        public, secret = _load_pair(secret_file, "--curve-secret")
        if secret is None:
            raise OptionError("--curve-secret: %s holds no secret key (give NAME.key_secret)"
                              % secret_file)
        import zmq.auth
        try:
            allowed = zmq.auth.load_certificates(allowed_dir)
        except (OSError, ValueError) as e:
            raise OptionError("--curve-allowed: cannot read %s (%s)" % (allowed_dir, e))
        if not allowed:
            raise OptionError("--curve-allowed: no public key files (*.key) in %s" % allowed_dir)
        return cls(public, secret, allowed)

    def apply(self, socket):
        """Make `socket` (not yet bound) a CURVE server in minard's ZAP domain."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN
        # without a ZAP handler libzmq would let any client in: refuse them instead
        socket.zap_enforce_domain = True


class ClientKeys:
    """The connecting end's CURVE keys: its own pair and the server's public key."""

    def __init__(self, public, secret, server_public):
        self.public = public
        self.secret = secret
        self.server_public = server_public

    @classmethod
    def load(cls, secret_file, server_key_file):
        public, secret = _load_pair(secret_file, "--curve-secret")
        if secret is None:
            raise OptionError("--curve-secret: %s holds no secret key (give NAME.key_secret)"
                              % secret_file)
        server_public, _ = _load_pair(server_key_file, "--curve-server-key")
        return cls(public, secret, server_public)

    def apply(self, socket):
        """Make `socket` (not yet connected) a CURVE client of the server's key."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server_public


def _check_plaintext(options, endpoints, what):
    if options.get("plaintext-beyond-loopback"):
        return
    for endpoint in endpoints:
        if endpoint and not is_loopback(endpoint):
            raise OptionError(
                "%s %s is beyond loopback and the link has no CURVE keys: give --curve-secret "
                "and %s (make them with minard-keys), or --plaintext-beyond-loopback=yes to "
                "send plain text on purpose" % (what, endpoint, what == "binding" and
                                                 "--curve-allowed" or "--curve-server-key"))


def _keys(options, endpoints, other, what, load):
    """The keys of --curve-secret and `other` (loaded by `load`), or None for a
    plain-text link (then only on loopback, unless forced); OptionError when only one
    of the two options is given."""
    secret, second = options.get("curve-secret"), options.get(other)
    if secret is None and second is None:
        _check_plaintext(options, endpoints, what)
        return None
    if secret is None or second is None:
        raise OptionError("--curve-secret and --%s go together" % other)
    return load(secret, second)


def server_keys(options, endpoints):
    """The ServerKeys of a binding role's options (--curve-secret, --curve-allowed), or
    None for a plain-text link. Raises OptionError with a one-line reason."""
    return _keys(options, endpoints, "curve-allowed", "binding", ServerKeys.load)


def client_keys(options, endpoints):
    """The ClientKeys of a connecting role's options (--curve-secret,
    --curve-server-key), or None for a plain-text link. Raises OptionError."""
    return _keys(options, endpoints, "curve-server-key", "connecting to", ClientKeys.load)


class RefusalCounter:
    """Counts refused CURVE peers in `stats` (curve_refused) and logs them at most once
    per REFUSED_LOG_INTERVAL seconds. `refused` may be called from any thread."""

    log = Logger()

    def __init__(self, stats, reactor, process):
        self.stats = stats
        self.reactor = reactor
        self.process = process
        self._last_logged = None
        self._unlogged = 0
        self._last_key = b""

    def refused(self, z85_key):
        self.reactor.callFromThread(self._count, z85_key)

    def _count(self, z85_key):
        if self.stats is not None:
            self.stats.incr("curve_refused")
        self._unlogged += 1
        self._last_key = z85_key
        now = self.reactor.seconds()
        if self._last_logged is not None and now - self._last_logged < REFUSED_LOG_INTERVAL:
            return
        self._last_logged = now
        self.log.warn("{process}: refused {count} ZeroMQ peer(s) whose CURVE key is not in "
                      "--curve-allowed (last key {key}…)", process=self.process,
                      count=self._unlogged,
                      key=self._last_key[:KEY_SHOWN].decode("ascii", "replace"))
        self._unlogged = 0


_authenticators = {}
_authenticators_lock = threading.Lock()


def start_authenticator(context, keys, counter):
    """Answer the ZAP requests of `context`'s CURVE server sockets (one authenticator per
    context, in its own thread, as pyzmq's ThreadAuthenticator does): a client key in
    keys.allowed passes, any other is refused and reported to counter.refused(key)."""
    from zmq.auth.thread import ThreadAuthenticator

    with _authenticators_lock:
        auth = _authenticators.get(id(context))
        if auth is None:
            auth = ThreadAuthenticator(context)
            auth.start()
            _authenticators[id(context)] = auth
        allowed = keys.allowed

        class Provider:
            def callback(self, domain, z85_key):
                if z85_key in allowed:
                    return True
                counter.refused(z85_key)
                return False

        auth.configure_curve_callback(domain=ZAP_DOMAIN.decode(), credentials_provider=Provider())
        return auth


def stop_authenticators():
    """Stop every authenticator thread (at reactor shutdown)."""
    with _authenticators_lock:
        for auth in _authenticators.values():
            auth.stop()
        _authenticators.clear()


def link_keys(options, side, endpoints, stats=None, reactor=None, process=""):
    """The CURVE keys a role's options give its ZeroMQ link(s) ("server": the binding end,
    whose ZAP authenticator is started here, before anything binds; "client": a
    connecting end), or None for plain text (loopback only unless forced). Raises
    OptionError (a one-line usage error)."""
    if side == "server":
        keys = server_keys(options, endpoints)
        if keys is not None:
            from minard import zmqlink
            if reactor is None:
                from twisted.internet import reactor
            start_authenticator(zmqlink.factory().context, keys,
                                RefusalCounter(stats, reactor, process))
            reactor.addSystemEventTrigger("before", "shutdown", stop_authenticators)
        return keys
    return client_keys(options, endpoints)


def make_keys(directory, names):
    """Create NAME.key and NAME.key_secret in directory for each name (refusing to
    overwrite); returns the paths written."""
    import zmq.auth
    os.makedirs(directory, exist_ok=True)
    written = []
    for name in names:
        public = os.path.join(directory, name + ".key")
        secret = public + "_secret"
        if os.path.exists(public) or os.path.exists(secret):
            raise OptionError("%s: a key named %r exists already (not overwritten)"
                              % (directory, name))
        old = os.umask(0o077)
        try:
            zmq.auth.create_certificates(directory, name)
        finally:
            os.umask(old)
        os.chmod(public, 0o644)
        os.chmod(secret, 0o600)
        written += [public, secret]
    return written


USAGE = """usage: minard-keys DIRECTORY NAME [NAME ...]

Makes a CURVE key pair per NAME for minard's ZeroMQ links: DIRECTORY/NAME.key (public;
copy it to the other end) and DIRECTORY/NAME.key_secret (secret, mode 0600; stays on
its host). The binding end (dispatch-push, data-producer) takes --curve-secret
NAME.key_secret and --curve-allowed DIR (the clients' NAME.key files); a connecting
end (dispatch-pull, data-consumer) takes --curve-secret and --curve-server-key
(the binding end's NAME.key)."""


def main(argv=None):
    import sys
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if len(argv) < 2:
        sys.stderr.write("minard-keys: error: give a directory and at least one name "
                         "(minard-keys --help)\n")
        return 2
    directory, names = argv[0], argv[1:]
    for name in names:
        if not name or "/" in name or name.startswith(".") or not name.isprintable():
            sys.stderr.write("minard-keys: error: bad key name %r\n" % (name,))
            return 2
    try:
        for path in make_keys(directory, names):
            print(path)
    except (OptionError, OSError) as e:
        sys.stderr.write("minard-keys: error: %s\n" % (e,))
        return 1
    return 0
