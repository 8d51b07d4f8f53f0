"""A multi-host layout: the push host, worker hosts and the web host, each with its own files.

* the push host (A): dispatch-push and data-producer, binding their ZeroMQ links on A's
  address with CURVE (only the worker hosts' public keys may connect), the Redis primary
  (TLS, one ACL user per role), the simulator (not started, as in production);
* each worker host (B, D, ...): N dispatch-pull workers and the CMOS and BASE
  data-consumers, named after the host (dispatch-pull-B-0, data-consumer-cmos-B-0 ...),
  connecting to A with their host's CURVE key pair and writing to the primary as their
  roles' Redis users;
* the web host (C): web reading from a Redis replica on C (writes go to the primary), the
  log server, nginx (also over HTTPS: the other hosts post their heartbeats there).

    minard-deploy multi-host --out DIR --hosts A=10.0.0.1,B=10.0.0.2,C=10.0.0.3 \\
        --push-host A --web-host C --workers 4 --keys KEYS --tls TLS \\
        --redis-urls redis-urls.ini --redis-acl redis-users.acl

Inputs: CURVE key pairs in KEYS (`minard-keys KEYS dispatch-push data-producer B`: one
pair per binding role, one per worker host, named after it); TLS files in TLS (`ca.crt`,
and `NAME.crt` / `NAME.key` of the push and the web host, each naming the host's address);
the two files of one `minard-redis-acl` run. Output: DIR/NAME/root/... mirrors each host's
file system (/etc/minard/minard.ini ...), DIR/NAME/install.sh puts every file at its place
with its mode and group. Plain text beyond loopback (no --keys, no --tls) is refused unless
--plaintext-beyond-loopback says it is meant. README.md, "Beyond one server".
"""
import configparser
import dataclasses
import hashlib
import ipaddress
import os
import re
import shutil
from urllib.parse import unquote, urlsplit

from minard.deploy.layouts import (GROUP, NGINX_TLS_PORT, PRODUCTION, REPO, DeployError, Layout,
                                   Program, own_programs, supervisor_process_names)
from minard.deploy.render import (render_ini, render_nginx, render_redis, render_supervisord,
                                  render_template)

#: A host's name: in program names (dispatch-pull-B-0), key and certificate file names.
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
#: The CURVE key pairs of the binding roles (on the push host), by role.
SERVER_KEYS = {"dispatch-push": "dispatch-push", "data-producer": "data-producer"}
#: The roles of each kind of host, in minard.ini's order.
PUSH_ROLES = ("dispatch-push", "data-producer", "simulator")
WORKER_ROLES = ("dispatch-pull", "data-consumer")
WEB_ROLES = ("web", "log-server")
#: The Redis users the layout needs from the URLs file of minard-redis-acl.
REDIS_ROLES = ("dispatch-push", "data-producer", "dispatch-pull", "data-consumer", "web",
               "log-server")
REPLICA_USER = "replica"  # minard.store.acl.REPLICA_USER (masteruser of the replica)
#: The allowed clients' public keys on the push host: <etc>/curve/<WORKERS_DIR>/NAME.key
WORKERS_DIR = "workers"
CA_FILE = "ca.crt"


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    address: str  # IPv4: Redis and ZeroMQ bind to it

    def __str__(self):
        return "%s (%s)" % (self.name, self.address)


@dataclasses.dataclass(frozen=True)
class RedisUser:
    user: str
    password: str
    db: int = 0


@dataclasses.dataclass(frozen=True)
class MultiHost:
    """The description of a multi-host layout (module docstring). `base` gives the paths,
    ports and users of every host (PRODUCTION's by default)."""

    push: Host
    web: Host
    workers: tuple
    redis_users: dict  # role -> RedisUser (REDIS_ROLES)
    replica_password: str
    base: Layout = PRODUCTION
    pull_workers: int = 4
    cmos_workers: int = 2
    base_workers: int = 2
    curve: bool = True  # CURVE keys on the ZeroMQ links
    tls: bool = True  # TLS to Redis and for the heartbeats to the web host
    programs_source: str = os.path.join(REPO, "etc", "programs.ini")

    def __post_init__(self):
        hosts = self.hosts()
        if not self.workers:
            raise DeployError("no worker host: every host but the push and the web host is one")
        for host in hosts:
            if not HOST_NAME.match(host.name) or host.name in SERVER_KEYS:
                raise DeployError("bad host name %r: letters, digits, - and _ (at most 32), "
                                  "not %s" % (host.name, " or ".join(SERVER_KEYS)))
            check_address(host.address, host.name)
        for what, values in (("name", [h.name for h in hosts]),
                             ("address", [h.address for h in hosts])):
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise DeployError("two hosts with the %s %s" % (what, twice[0]))
        for what, n in (("--workers", self.pull_workers), ("--cmos-workers", self.cmos_workers),
                        ("--base-workers", self.base_workers)):
            if not 1 <= n <= 64:
                raise DeployError("%s must be 1-64 (per worker host), not %d" % (what, n))
        missing = [r for r in REDIS_ROLES if r not in self.redis_users]
        if missing:
            raise DeployError("no Redis user for %s" % ", ".join(missing))

    # -- the hosts -------------------------------------------------------------------------
    def hosts(self):
        return [self.push] + list(self.workers) + [self.web]

    def kind(self, host):
        if host == self.push:
            return "push"
        return "web" if host == self.web else "worker"

    def beyond_loopback(self):
        """The hosts whose address is not a loopback address."""
        return [h for h in self.hosts() if not ipaddress.ip_address(h.address).is_loopback]

    def layout(self, host):
        """The Layout of one host: the base's paths and ports, this host's counts."""
        return dataclasses.replace(
            self.base, kind="multi-host", pull_workers=self.pull_workers,
            cmos_workers=self.cmos_workers, base_workers=self.base_workers,
            programs=os.path.join(self.base.etc, "programs.ini"), log_server_interface="",
            infra=False, simulator_stand_ins=False, redis_in_ini=False)

    def describe(self, host):
        what = {"push": "push host (dispatch-push, data-producer, Redis primary)",
                "worker": "worker host (%d pull workers, %d CMOS + %d BASE consumers)"
                          % (self.pull_workers, self.cmos_workers, self.base_workers),
                "web": "web host (web on a Redis replica, log server, nginx)"}
        return "Host %s, the %s of a multi-host layout" % (host, what[self.kind(host)])

    # -- programs ------------------------------------------------------------------------
    def programs(self, host):
        """The supervisord `Program`s of a host, in file order."""
        kind = self.kind(host)
        ports = self.base.ports
        if kind == "push":
            return [Program("simulator", "simulator", "", 1, 120, False, in_group=False),
                    Program("dispatch-push", "dispatch-push", "", 1, 300),
                    Program("data-producer", "data-producer", "", 1, 310)]
        if kind == "web":
            return [Program("log-server", "log-server", "", 1, 100),
                    Program("web", "web", "", 1, 110)]
        infix = "-%s-" % host.name
        a = self.push.address
        return [
            Program("dispatch-pull", "dispatch-pull", "--name dispatch-pull%s%%(process_num)d"
                    % infix, self.pull_workers, 200, infix=infix),
            Program("data-consumer-cmos", "data-consumer", "--zmq tcp://%s:%d"
                    % (a, ports["cmos"]), self.cmos_workers, 210, infix=infix),
            Program("data-consumer-base", "data-consumer", "--zmq tcp://%s:%d"
                    % (a, ports["base"]), self.base_workers, 210, infix=infix),
        ]

    def process_names(self, host):
        """supervisord's process names on a host (`minard:dispatch-pull-B-0` ...)."""
        return supervisor_process_names(self.programs(host))

    def heartbeat_names(self):
        """{host: the programs.ini names its minard processes post heartbeats under}."""
        out = {}
        for host in self.hosts():
            kind = self.kind(host)
            if kind == "push":
                out[host] = ["minard-dispatch-push", "minard-data-producer"]
            elif kind == "web":
                out[host] = ["log", "minard-web"]
            else:
                out[host] = [n for p in self.programs(host) for n in p.process_names()]
        return out

    # -- Redis ---------------------------------------------------------------------------
    def redis_url(self, role, host=None, port=None, tls=None):
        """The Redis URL of a role: the primary (push host), or `host` (the replica)."""
        u = self.redis_users[role]
        tls = self.tls if tls is None else tls
        scheme = "rediss" if tls else "redis"
        query = "?ca=%s" % self.ca_path() if tls else ""
        return "%s://%s:%s@%s:%d/%d%s" % (scheme, u.user, u.password, host or self.push.address,
                                          port or self.base.ports["redis"], u.db, query)

    def ca_path(self):
        return os.path.join(self.base.tls_dir, CA_FILE)

    def cert_paths(self, host):
        return {"cert": os.path.join(self.base.tls_dir, host.name + ".crt"),
                "key": os.path.join(self.base.tls_dir, host.name + ".key"),
                "ca": self.ca_path()}

    # -- the files of a host -------------------------------------------------------------
    def render(self, host, programs_text=None):
        """{target path (absolute, on the host): text} of a host's configuration files."""
        layout = self.layout(host)
        kind = self.kind(host)
        p = layout.ports
        a = self.push.address
        common = dict(host_role=self.describe(host))
        files = {}
        programs = self.programs(host)
        files[os.path.join(layout.etc, "supervisord.conf")] = render_supervisord(
            layout, programs=programs, what_runs="the minard roles on this host", **common)
        roles = {"push": PUSH_ROLES, "worker": WORKER_ROLES, "web": WEB_ROLES}[kind]
        zmq = {"events": "tcp://%s:%d" % (a, p["events"]), "cmos": "tcp://%s:%d" % (a, p["cmos"]),
               "base": "tcp://%s:%d" % (a, p["base"])}
        curve_keys, plaintext = {}, ()
        beyond = not ipaddress.ip_address(a).is_loopback
        if self.curve:
            curve = layout.curve_dir
            for role in roles:
                if role in SERVER_KEYS:
                    curve_keys[role] = {
                        "secret": os.path.join(curve, SERVER_KEYS[role] + ".key_secret"),
                        "allowed": os.path.join(curve, WORKERS_DIR)}
                elif role in WORKER_ROLES:
                    server = "dispatch-push" if role == "dispatch-pull" else "data-producer"
                    curve_keys[role] = {
                        "secret": os.path.join(curve, host.name + ".key_secret"),
                        "server_key": os.path.join(curve, SERVER_KEYS[server] + ".key")}
        elif beyond:
            plaintext = tuple(r for r in roles if r in SERVER_KEYS or r in WORKER_ROLES)
        redis = {role: self.redis_url(role) for role in roles if role in REDIS_ROLES}
        replica = {}
        if kind == "web":
            # the replica is this host's own Redis, on loopback: plain, no certificate
            replica["web"] = self.redis_url("web", host="127.0.0.1", tls=False)
            monitor = {"url": "http://127.0.0.1:%d" % p["log"], "cafile": None}
        elif self.tls:
            monitor = {"url": "https://%s:%d/monitoring" % (self.web.address, NGINX_TLS_PORT),
                       "cafile": self.ca_path()}
        else:
            monitor = {"url": "http://%s:%d" % (self.web.address, p["log"]), "cafile": None}
        files[layout.ini] = render_ini(
            layout, roles=roles, what_runs="the roles on this host", redis=redis,
            redis_replica=replica, curve_keys=curve_keys, plaintext=plaintext,
            consumer_option="zmq", zmq=zmq, monitor=monitor,
            log_server_host="the web host %s" % self.web, **common)
        if kind in ("push", "web"):
            network = {"address": host.address, "aclfile": layout.redis_acl_file,
                       "tls": self.cert_paths(host) if self.tls else None,
                       "primary": kind == "push", "primary_address": a,
                       "masteruser": REPLICA_USER, "masterauth": self.replica_password}
            what = ": the primary" if kind == "push" else ": a replica of the primary"
            files[layout.redis_conf] = render_redis(layout, network=network, redis_what=what,
                                                    **common)
        if kind == "web":
            tls = None
            if self.tls:
                paths = self.cert_paths(host)
                tls = {"port": NGINX_TLS_PORT, "cert": paths["cert"], "key": paths["key"]}
            files[layout.nginx_conf] = render_nginx(layout, tls=tls, **common)
            if programs_text is None:
                with open(self.programs_source, encoding="utf-8") as f:
                    programs_text = f.read()
            files[layout.programs] = self.render_programs(programs_text)
        return files

    def render_programs(self, source_text):
        """The web host's programs.ini: the DAQ programs of `source_text` as they are, and
        a section for every minard process of the layout (machine = its host)."""
        single = set(own_programs(PRODUCTION))
        names = self.heartbeat_names()
        ours = {n for v in names.values() for n in v}
        drop = single | ours | {"log", "minard-web"}
        preamble, blocks = split_ini_sections(source_text)
        kept = [text for name, text in blocks if name not in drop
                and not _worker_name(name)]
        own = render_template("programs-own.ini.j2", hosts=self.hosts(), names=names,
                              describe=_program_description)
        body = "".join(kept).rstrip("\n") + "\n"
        return preamble + body + own

    def copies(self, host, keys_dir=None, tls_dir=None, acl_file=None):
        """{target path: (source file, mode, group)} of the key, certificate and ACL
        files a host needs (group "minard", "redis" or "root")."""
        layout = self.layout(host)
        kind = self.kind(host)
        out = {}
        if self.curve:
            curve = layout.curve_dir
            if kind == "push":
                for name in SERVER_KEYS.values():
                    out[os.path.join(curve, name + ".key_secret")] = (
                        os.path.join(keys_dir, name + ".key_secret"), 0o640, "minard")
                for worker in self.workers:
                    out[os.path.join(curve, WORKERS_DIR, worker.name + ".key")] = (
                        os.path.join(keys_dir, worker.name + ".key"), 0o644, "root")
            elif kind == "worker":
                out[os.path.join(curve, host.name + ".key_secret")] = (
                    os.path.join(keys_dir, host.name + ".key_secret"), 0o640, "minard")
                for name in SERVER_KEYS.values():
                    out[os.path.join(curve, name + ".key")] = (
                        os.path.join(keys_dir, name + ".key"), 0o644, "root")
        if self.tls:
            out[self.ca_path()] = (os.path.join(tls_dir, CA_FILE), 0o644, "root")
            if kind in ("push", "web"):
                paths = self.cert_paths(host)
                out[paths["cert"]] = (os.path.join(tls_dir, host.name + ".crt"), 0o644, "root")
                out[paths["key"]] = (os.path.join(tls_dir, host.name + ".key"), 0o640, "redis")
        if kind in ("push", "web"):
            out[layout.redis_acl_file] = (acl_file, 0o640, "redis")
        return out

    def modes(self, host):
        """{target path: (mode, group)} of the rendered files of a host: minard.ini holds
        Redis passwords, the replica's redis.conf its masterauth."""
        layout = self.layout(host)
        out = {layout.ini: (0o640, "minard"),
               os.path.join(layout.etc, "supervisord.conf"): (0o644, "root")}
        if self.kind(host) in ("push", "web"):
            out[layout.redis_conf] = (0o640, "redis")
        if self.kind(host) == "web":
            out[layout.nginx_conf] = (0o644, "root")
            out[layout.programs] = (0o644, "root")
        return out

    def directories(self, host):
        """[(directory, mode, group)] install.sh makes first."""
        layout = self.layout(host)
        out = [(layout.etc, 0o750, "minard")]
        if self.curve and self.kind(host) != "web":
            out.append((layout.curve_dir, 0o750, "minard"))
            if self.kind(host) == "push":
                out.append((os.path.join(layout.curve_dir, WORKERS_DIR), 0o755, "root"))
        if self.tls:
            out.append((self.base.tls_dir, 0o755, "root"))
        return out


def _worker_name(name):
    return re.match(r"^(dispatch-pull|data-consumer-cmos|data-consumer-base)-", name) is not None


def _program_description(name):
    fixed = {"log": "Logging server", "minard-web": "minard: main web site",
             "minard-dispatch-push": "minard: dispatcher to ZeroMQ",
             "minard-data-producer": "minard: data server to ZeroMQ"}
    if name in fixed:
        return fixed[name]
    for prefix, what in (("dispatch-pull-", "event aggregation worker"),
                         ("data-consumer-cmos-", "CMOS rate worker"),
                         ("data-consumer-base-", "base current worker")):
        if name.startswith(prefix):
            return "minard: %s %s" % (what, name[len(prefix):])
    return "minard"


def split_ini_sections(text):
    """(preamble, [(section name, text)]) of an INI text: a section's text runs from its
    header to the next header (its comments and blank lines included)."""
    header = re.compile(r"^\[([^\]]+)\]\s*$")
    preamble, blocks = [], []
    for line in text.splitlines(keepends=True):
        m = header.match(line)
        if m:
            blocks.append([m.group(1).strip(), [line]])
        elif blocks:
            blocks[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), [(name, "".join(lines)) for name, lines in blocks]


def check_address(address, name="?"):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if ip is None or ip.version != 4 or ip.is_unspecified or ip.is_multicast:
        raise DeployError("host %s: %r is not an IPv4 address of the host (Redis and ZeroMQ "
                          "bind to it)" % (name, address))
    return address


def parse_hosts(text):
    """'A=10.0.0.1,B=10.0.0.2' -> [Host]"""
    hosts = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, address = item.partition("=")
        if not sep or not name.strip() or not address.strip():
            raise DeployError("--hosts: %r is not NAME=ADDRESS" % item)
        hosts.append(Host(name.strip(), address.strip()))
    if not hosts:
        raise DeployError("--hosts: give NAME=ADDRESS,... (at least three hosts)")
    return hosts


# -- the files of minard-redis-acl ------------------------------------------------------------

def read_redis_urls(path):
    """({role: RedisUser}, replica password) from the URLs file of minard-redis-acl."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise DeployError("--redis-urls: cannot read %s: %s" % (path, str(e).splitlines()[0]))
    users = {}
    for role in REDIS_ROLES:
        if not parser.has_option(role, "redis"):
            raise DeployError("--redis-urls: %s has no `redis` in [%s] (make it with "
                              "minard-redis-acl)" % (path, role))
        url = parser.get(role, "redis")
        parts = urlsplit(url)
        db = parts.path.lstrip("/") or "0"
        if (parts.scheme not in ("redis", "rediss") or not parts.username or not parts.password
                or not db.isdigit()):
            raise DeployError("--redis-urls: [%s] redis = %s is not a URL with a user and a "
                              "password" % (role, _hide(url)))
        users[role] = RedisUser(unquote(parts.username), unquote(parts.password), int(db))
    if not parser.has_option("replica", "masterauth"):
        raise DeployError("--redis-urls: %s has no masterauth in [replica]" % path)
    return users, parser.get("replica", "masterauth")


def _hide(url):
    parts = urlsplit(url)
    return url.replace(parts.password, "***") if parts.password else url


def check_acl_file(path, users, replica_password):
    """The ACL file must hold each user of the URLs file with that password's SHA-256
    (both from one minard-redis-acl run)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DeployError("--redis-acl: cannot read %s: %s" % (path, e))
    rules = {}
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "user":
            rules[words[1]] = set(words[2:])
    wanted = [(u.user, u.password) for u in users.values()]
    wanted.append((REPLICA_USER, replica_password))
    for user, password in wanted:
        digest = "#" + hashlib.sha256(password.encode("utf-8")).hexdigest()
        if user not in rules:
            raise DeployError("--redis-acl: %s has no user %s" % (path, user))
        if digest not in rules[user] or "on" not in rules[user]:
            raise DeployError("--redis-acl: the password of user %s in %s is not the one of "
                              "--redis-urls: give the two files of one minard-redis-acl run"
                              % (user, path))


# -- checking the key and certificate files ---------------------------------------------------

def check_keys(layout, keys_dir):
    """Every CURVE key file the layout copies exists and holds what it should."""
    import zmq.auth

    names = list(SERVER_KEYS.values()) + [w.name for w in layout.workers]
    missing = [n for n in names if not (os.path.isfile(os.path.join(keys_dir, n + ".key")) and
                                        os.path.isfile(os.path.join(keys_dir, n + ".key_secret")))]
    if missing:
        raise DeployError("--keys: no key pair %s in %s: make them with `minard-keys %s %s`"
                          % (", ".join(missing), keys_dir, keys_dir, " ".join(missing)))
    for name in names:
        for suffix, secret in ((".key", False), (".key_secret", True)):
            path = os.path.join(keys_dir, name + suffix)
            try:
                public, secret_key = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as e:
                raise DeployError("--keys: %s is not a CURVE key file (%s)" % (path, e))
            if secret and secret_key is None:
                raise DeployError("--keys: %s holds no secret key" % path)


def check_tls(layout, tls_dir):
    """ca.crt, and a certificate (signed by it, naming the host's address) and key for the
    push and the web host."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    def load(path):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DeployError("--tls: cannot read %s: %s" % (path, e.strerror or e))
        try:
            return x509.load_pem_x509_certificate(data)
        except ValueError as e:
            raise DeployError("--tls: %s is not a PEM certificate (%s)" % (path, e))

    ca = load(os.path.join(tls_dir, CA_FILE))
    for host in (layout.push, layout.web):
        cert_path = os.path.join(tls_dir, host.name + ".crt")
        key_path = os.path.join(tls_dir, host.name + ".key")
        if not os.path.isfile(key_path):
            raise DeployError("--tls: no %s (the private key of %s)" % (key_path, cert_path))
        cert = load(cert_path)
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:
            raise DeployError("--tls: %s is not signed by %s" % (cert_path,
                                                                  os.path.join(tls_dir, CA_FILE)))
        try:
            sans = cert.extensions.get_extension_for_oid(
                ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
            names = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            names = []
        if host.address not in names:
            raise DeployError("--tls: %s does not name %s (subjectAltName IP addresses: %s): "
                              "clients check it; make it with subjectAltName=IP:%s"
                              % (cert_path, host.address, ", ".join(names) or "none",
                                 host.address))


# -- writing a layout -------------------------------------------------------------------------

def write(layout, out, keys_dir=None, tls_dir=None, acl_file=None, force=False):
    """Write DIR/NAME/root/<target path> and DIR/NAME/install.sh for every host; returns
    {host: [target paths]}. The tree is private (0700 directories, 0600 files): it holds
    passwords and secret keys."""
    out = os.path.abspath(out)
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise DeployError("%s is not empty (--force replaces the hosts' directories in it)"
                          % out)
    # everything is rendered and read before anything is written
    hosts = []
    for host in layout.hosts():
        modes = layout.modes(host)
        files = []  # (target, bytes, mode, group)
        for target, text in layout.render(host).items():
            files.append((target, text.encode("utf-8")) + modes[target])
        for target, (source, mode, group) in layout.copies(host, keys_dir, tls_dir,
                                                           acl_file).items():
            try:
                with open(source, "rb") as f:
                    files.append((target, f.read(), mode, group))
            except OSError as e:
                raise DeployError("cannot read %s: %s" % (source, e.strerror or e))
        hosts.append((host, files))
    os.makedirs(out, mode=0o700, exist_ok=True)
    written = {}
    for host, files in hosts:
        base = os.path.join(out, host.name)
        if os.path.exists(base):
            shutil.rmtree(base)
        root = os.path.join(base, "root")
        entries = []  # (target, mode, group)
        for target, data, mode, group in files:
            _write_private(_under(root, target), data)
            entries.append((target, mode, group))
        entries.sort()
        script = render_template(
            "install.sh.j2", host=host, describe=layout.describe(host),
            directories=layout.directories(host), entries=entries,
            allowed_dir=(os.path.join(layout.layout(host).curve_dir, WORKERS_DIR)
                         if layout.curve and layout.kind(host) == "push" else None),
            allowed=sorted(w.name + ".key" for w in layout.workers),
            restart=_restart_commands(layout, host), group=GROUP)
        path = os.path.join(base, "install.sh")
        _write_private(path, script.encode("utf-8"))
        os.chmod(path, 0o700)
        written[host] = [e[0] for e in entries]
    return written


def _restart_commands(layout, host):
    kind = layout.kind(host)
    out = []
    if kind in ("push", "web"):
        out.append("systemctl restart redis-server")
    if kind == "web":
        out.append("nginx -t && systemctl reload nginx")
    ctl = os.path.join(layout.base.repo, "scripts", "minard-ctl")
    out.append("%s update && %s restart %s:*   (the roles read their keys at start-up)"
               % (ctl, ctl, GROUP))
    return out


def _under(root, target):
    return os.path.join(root, target.lstrip("/"))


def _write_private(path, data):
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


# -- command line -----------------------------------------------------------------------------

def add_arguments(parser):
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="write DIR/NAME/... for each host")
    parser.add_argument("--hosts", required=True, metavar="NAME=ADDRESS,...",
                        help="NAME=ADDRESS,... of every host (IPv4 addresses)")
    parser.add_argument("--push-host", required=True, metavar="NAME",
                        help="the host of dispatch-push, data-producer and the Redis primary")
    parser.add_argument("--web-host", required=True, metavar="NAME",
                        help="the host of web (on a Redis replica), the log server and nginx; "
                             "every other host of --hosts is a worker host")
    parser.add_argument("--workers", type=int, default=4, metavar="N",
                        help="dispatch-pull workers per worker host (default 4)")
    parser.add_argument("--cmos-workers", type=int, default=2, metavar="N",
                        help="CMOS data-consumers per worker host (default 2)")
    parser.add_argument("--base-workers", type=int, default=2, metavar="N",
                        help="BASE data-consumers per worker host (default 2)")
    parser.add_argument("--keys", metavar="DIR",
                        help="CURVE key pairs made by minard-keys: dispatch-push, "
                             "data-producer and one per worker host, named after it")
    parser.add_argument("--tls", metavar="DIR",
                        help="ca.crt, and NAME.crt / NAME.key of the push and the web host "
                             "(each naming its address)")
    parser.add_argument("--redis-urls", required=True, metavar="FILE",
                        help="the --urls file of minard-redis-acl (each role's password)")
    parser.add_argument("--redis-acl", required=True, metavar="FILE",
                        help="the --acl-file of the same minard-redis-acl run (for Redis)")
    parser.add_argument("--programs", metavar="FILE",
                        default=os.path.join(REPO, "etc", "programs.ini"),
                        help="programs.ini with the DAQ programs (default etc/programs.ini)")
    parser.add_argument("--dispatcher", metavar="HOST", default=PRODUCTION.dispatcher_host,
                        help="ControlHost dispatcher host (default %s)"
                             % PRODUCTION.dispatcher_host)
    parser.add_argument("--data-server", metavar="HOST", default=PRODUCTION.dataserver_host,
                        help="data server host (default %s)" % PRODUCTION.dataserver_host)
    parser.add_argument("--plaintext-beyond-loopback", action="store_true",
                        help="render without --keys or --tls on purpose: records and "
                             "passwords then cross the network readable")
    parser.add_argument("--force", action="store_true",
                        help="replace the hosts' directories in a non-empty --out")


def from_arguments(args, base=PRODUCTION):
    """The MultiHost of the command line (checks every input file)."""
    hosts = parse_hosts(args.hosts)
    by_name = {h.name: h for h in hosts}
    for option, name in (("--push-host", args.push_host), ("--web-host", args.web_host)):
        if name not in by_name:
            raise DeployError("%s %s is not one of --hosts (%s)"
                              % (option, name, ", ".join(by_name)))
    if args.push_host == args.web_host:
        raise DeployError("--push-host and --web-host must be two hosts")
    users, replica_password = read_redis_urls(args.redis_urls)
    check_acl_file(args.redis_acl, users, replica_password)
    if not os.path.isfile(args.programs):
        raise DeployError("--programs: no such file: %s" % args.programs)
    base = dataclasses.replace(base, dispatcher_host=args.dispatcher,
                               dataserver_host=args.data_server)
    layout = MultiHost(
        push=by_name[args.push_host], web=by_name[args.web_host],
        workers=tuple(h for h in hosts if h.name not in (args.push_host, args.web_host)),
        redis_users=users, replica_password=replica_password, base=base,
        pull_workers=args.workers, cmos_workers=args.cmos_workers,
        base_workers=args.base_workers, curve=args.keys is not None,
        tls=args.tls is not None, programs_source=args.programs)
    beyond = layout.beyond_loopback()
    if beyond and not (layout.curve and layout.tls) and not args.plaintext_beyond_loopback:
        lacking = [what for what, given in (("--keys (ZeroMQ CURVE)", layout.curve),
                                            ("--tls (Redis TLS)", layout.tls)) if not given]
        raise DeployError(
            "%s beyond loopback: without %s records and passwords would cross the network "
            "readable. Give them (README.md, \"Beyond one server\"), or "
            "--plaintext-beyond-loopback to render plain text on purpose"
            % (", ".join(str(h) for h in beyond), " and ".join(lacking)))
    if layout.curve:
        check_keys(layout, args.keys)
    if layout.tls:
        check_tls(layout, args.tls)
    return layout


def run(args):
    layout = from_arguments(args)
    try:
        written = write(layout, args.out, keys_dir=args.keys, tls_dir=args.tls,
                        acl_file=args.redis_acl, force=args.force)
    except OSError as e:
        raise DeployError("cannot write %s: %s" % (args.out, e))
    for host, paths in written.items():
        print("%s: %s/%s (%d files; install: sh %s/%s/install.sh)"
              % (host, args.out, host.name, len(paths), args.out, host.name))
    if not (layout.curve and layout.tls):
        print("WARNING: plain text beyond loopback (%s)" % ", ".join(
            w for w, g in (("no CURVE keys", layout.curve), ("no TLS", layout.tls)) if not g))
    return 0
