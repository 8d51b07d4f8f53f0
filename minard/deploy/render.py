"""Rendering: the configuration files of a `Layout` from the Jinja2 templates in
minard/deploy/templates/ (supervisord.conf.j2, nginx.conf.j2, redis.conf.j2,
minard.ini.j2). The functions here only gather the values a template needs; the text is
the template's. Undefined names are errors (StrictUndefined), nothing is HTML-escaped.

    render_supervisord(layout) render_nginx(layout) render_redis(layout) render_ini(layout)

The production files in etc/ are these renders of PRODUCTION (`write_production`); the
multi-host layout (multihost.py) renders the same templates with more values per host.
"""
import hashlib
import os

import jinja2

from minard import constants as C
from minard.deploy.layouts import (GROUP, GROUP_PRIORITY, MONITOR_USER, PREFIX, PRODUCTION,
                                   SECURITY_HEADERS, STREAM_READ_TIMEOUT, SUPERVISOR_USER,
                                   programs_of, stand_in_programs)

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")

#: Every role of a one-host layout, in minard.ini's order.
ALL_ROLES = ("dispatch-push", "dispatch-pull", "data-producer", "data-consumer", "web",
             "log-server", "simulator")

_environment = None


def environment():
    """The Jinja2 environment of the configuration templates (config files, not HTML: no
    autoescaping; an undefined name is an error)."""
    global _environment
    if _environment is None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
            autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        env.filters["basename"] = os.path.basename
        _environment = env
    return _environment


def render_template(name, **values):
    return environment().get_template(name).render(**values)


# -- supervisord ------------------------------------------------------------------------

#: The settings Redis and nginx share as programs of the local supervisord.
INFRA_COMMON = ("autostart = true\nautorestart = true\nstartsecs = 1\nstartretries = 100\n"
                "stopsignal = TERM\nstopwaitsecs = 30\nredirect_stderr = true\n"
                "stdout_logfile_maxbytes = 20MB\nstdout_logfile_backups = 2\n")


def render_supervisord(layout, programs=None, what_runs="every minard role", **extra):
    """supervisord.conf: every program of `programs` (default: the layout's, programs_of)
    under one group, and in the local system Redis and nginx (priorities: Redis first,
    nginx last)."""
    return render_template(
        "supervisord.conf.j2", layout=layout,
        programs=programs if programs is not None else programs_of(layout),
        what_runs=what_runs, supervisor_user=SUPERVISOR_USER, stop_wait=C.STOP_WAIT_SECONDS,
        group=GROUP, group_priority=GROUP_PRIORITY, infra_common=INFRA_COMMON, **extra)


def render_supervisor_secrets(layout, password):
    """(supervisord-auth.conf, supervisorctl.conf) texts for a supervisord password."""
    digest = hashlib.sha1(password.encode("utf-8")).hexdigest()
    auth = ("; supervisord inet server password (SHA-1 of it); keep this file root-only (0600)\n"
            "[inet_http_server]\nusername = %s\npassword = {SHA}%s\n" % (SUPERVISOR_USER, digest))
    ctl = ("; supervisorctl -c %s ...   (keep this file root-only, 0600)\n"
           "[supervisorctl]\nserverurl = http://127.0.0.1:%d\nusername = %s\npassword = %s\n"
           % (layout.supervisorctl_conf, layout.ports["supervisor"], SUPERVISOR_USER, password))
    return auth, ctl


# -- nginx --------------------------------------------------------------------------------

def render_nginx(layout, tls=None, **extra):
    """nginx.conf: the site under /monitoring/ and the log server's /log and /heartbeat.
    tls: None, or {"port", "cert", "key"} for a second, HTTPS server with the same
    locations (the web host of a multi-host layout)."""
    return render_template(
        "nginx.conf.j2", layout=layout, tls=tls, security_headers=SECURITY_HEADERS,
        prefix=PREFIX, max_body=C.MAX_BODY_BYTES, max_message=C.MAX_MESSAGE_BYTES,
        stream_timeout=STREAM_READ_TIMEOUT, **extra)


# -- Redis --------------------------------------------------------------------------------

def render_redis(layout, network=None, redis_what="", **extra):
    """redis.conf. network: None (loopback only, one host), or for a host of a
    multi-host layout a dict: address (bound beside loopback), tls (None or {"cert",
    "key", "ca"}), aclfile, primary (bool), and for a replica primary_address,
    masteruser, masterauth."""
    return render_template("redis.conf.j2", layout=layout, network=network,
                           redis_what=redis_what, **extra)


# -- minard.ini -----------------------------------------------------------------------------

def health_values():
    """[health]: channel health in the log server (minard/health/config.py has every
    key); the defaults, written out so that an operator sees what to tune. -> [(key, text)]"""
    from minard.health.config import HealthConfig

    def text(value):
        if isinstance(value, bool):
            return "yes" if value else "no"
        return "%g" % value if isinstance(value, float) else str(value)

    return [(key, text(value)) for key, value in HealthConfig().as_dict().items()]


def ini_values(layout):
    """The values minard.ini.j2 needs for a one-host layout (every role; the ZeroMQ links
    on loopback, no CURVE)."""
    p = layout.ports
    return dict(
        layout=layout, roles=ALL_ROLES, what_runs="every role",
        redis={role: layout.redis_url for role in ALL_ROLES} if layout.redis_in_ini else {},
        redis_replica={}, curve_keys={}, plaintext=(), consumer_option="port",
        log_server_host="this host",
        zmq={"events": "tcp://127.0.0.1:%d" % p["events"],
             "cmos": "tcp://127.0.0.1:%d" % p["cmos"], "base": "tcp://127.0.0.1:%d" % p["base"]},
        simulator_rate="%g" % layout.simulator_rate,
        stand_ins=stand_in_programs(layout) if layout.simulator_stand_ins else [],
        monitor={"url": "http://127.0.0.1:%d" % p["log"], "cafile": None},
        monitor_user=MONITOR_USER, heartbeat_interval="%g" % C.HEARTBEAT_INTERVAL,
        health=health_values())


def render_ini(layout, **overrides):
    """minard.ini: a section per role (keys = its long options), [monitor], [watchdog],
    [health]. `overrides` replace values of ini_values (the multi-host layout's)."""
    values = ini_values(layout)
    values.update(overrides)
    return render_template("minard.ini.j2", **values)


PRODUCTION_FILES = {
    "supervisord.conf": render_supervisord,
    "nginx.conf": render_nginx,
    "redis.conf": render_redis,
    "minard.ini": render_ini,
}


def write_production(directory):
    """Write the production files (etc/) into directory (made if missing)."""
    os.makedirs(directory, exist_ok=True)
    for name, render in PRODUCTION_FILES.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(render(PRODUCTION))
