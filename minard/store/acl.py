"""Redis ACL users, one per role, with least privilege (issue 14: Redis across hosts).

Each role connects as its own Redis user (`redis://<user>:<password>@host:port/db`). A
user may run only the commands its role runs, and write only the keys its role writes
(`~pattern`: read and write, as a script's declared keys need); every user may read
what its role reads (`%R~pattern`). So the web site
reads everything and writes only its own stats and replica probe, never `ts:*`; the
log server writes only its own keys (heartbeats, uptimes, alarms, its post and watchdog
records, channel health). The key patterns come from minard/store/keys.py; SPEC §4
lists the compat keys. `minard-redis-acl` writes the ACL file for redis.conf's
`aclfile` (passwords stored as SHA-256, as Redis expects after `#`) and each role's URL.

Administration (CONFIG, FLUSHALL, the migration of an old layout) stays with Redis's
`default` user, which the ACL file disables unless told otherwise.
"""
import hashlib
import secrets

#: Commands every role needs: connection handling and the scripts (loaded once, then
#: called by SHA: store/scripts.py). Scripts' own commands are checked against the
#: user's rules like any other command.
BASE_COMMANDS = ("+@connection", "-client", "+client|setname", "+client|id",
                 "+evalsha", "+evalsha_ro", "+eval", "+eval_ro", "+script|load",
                 "+script|exists", "+time", "+select")
#: Commands of a role that reads data.
READ_COMMANDS = ("+@read",)
#: Commands of a role that writes data (the keys it may write are still limited).
WRITE_COMMANDS = ("+@write", "-@dangerous")

#: The keys of minard's own layout (keys.py: per-channel store, flush markers, last
#: events, runs, link marks ...): the data writers (pull workers, data consumers) write
#: them; the compat keys of other programs (heartbeat:*, uptime:*, l2:*, nearline:*) and
#: the log server's records stay out of their reach.
MINARD_KEYS = ("minard:*",)

#: role -> (commands beyond BASE_COMMANDS, key patterns read, key patterns written)
ROLES = {
    "dispatch-push": (
        READ_COMMANDS + WRITE_COMMANDS,
        ("dispatcher", "minard:link:*"),
        ("dispatcher", "minard:link:*")),
    "dispatch-pull": (
        READ_COMMANDS + WRITE_COMMANDS,
        ("ts:*", "minard:*", "alarms:*"),
        ("ts:*", "alarms:*") + MINARD_KEYS),
    "data-producer": (
        WRITE_COMMANDS,
        (),
        ()),
    "data-consumer": (
        READ_COMMANDS + WRITE_COMMANDS,
        ("cmos:state:*", "minard:*"),
        ("cmos:state:*",) + MINARD_KEYS),
    "web": (
        READ_COMMANDS + WRITE_COMMANDS + ("+info",),
        ("*",),
        ("minard:probe:*", "minard:alarm:acks*", "minard:health:masks")),
    "log-server": (
        READ_COMMANDS + WRITE_COMMANDS + ("+info",),
        ("*",),
        ("heartbeat:*", "uptime:*", "alarms:*", "minard:post:*", "minard:watchdog:*",
         "minard:alarm:acks*", "minard:health:*")),
}


#: The user a Redis replica connects to its primary as (redis.conf `masteruser`).
REPLICA_USER = "replica"
REPLICA_RULES = "resetkeys resetchannels -@all +psync +replconf +ping"


#: Every role publishes its stats (minard/stats.py) under its own process name, which
#: for workers is chosen at deployment (--name): all may write the stats keys.
STATS_KEYS = ("minard:stats:*",)


def rules(role):
    """The ACL rules of a role's user (without `on` and the password), as one string."""
    if role == REPLICA_USER:
        return REPLICA_RULES
    commands, reads, writes = ROLES[role]
    parts = ["resetkeys", "resetchannels", "-@all"] + list(BASE_COMMANDS) + list(commands)
    parts += ["%%R~%s" % p for p in reads]
    # a key a role writes it may also read: scripts declare their keys read-write
    parts += ["~%s" % p for p in tuple(writes) + STATS_KEYS]
    return " ".join(parts)


def password_hash(password):
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def acl_file(passwords, default_password=None):
    """The text of a Redis ACL file: one user per role of `passwords` (role -> password),
    and the `default` user: off, or on with full rights and default_password (the
    administrator's, for redis-cli and minard-migrate-store)."""
    lines = []  # (an ACL file has no comments: Redis refuses to start on one)
    if default_password is None:
        lines.append("user default off resetkeys -@all")
    else:
        lines.append("user default on #%s ~* &* +@all" % password_hash(default_password))
    for role in sorted(passwords):
        lines.append("user %s on #%s %s" % (role, password_hash(passwords[role]), rules(role)))
    return "\n".join(lines) + "\n"


def new_passwords(roles=None):
    """A fresh random password per role and for the replica user (URL-safe, 256 bits)."""
    return {role: secrets.token_urlsafe(32) for role in (roles or list(ROLES) + [REPLICA_USER])}


def role_url(role, password, host, port, db=0, tls=None):
    """The Redis URL a role connects with (tls: None, or the rediss:// query string)."""
    scheme = "rediss" if tls is not None else "redis"
    query = "?" + tls if tls else ""
    return "%s://%s:%s@%s:%d/%d%s" % (scheme, role, password, host, port, db, query)


USAGE = """usage: minard-redis-acl --acl-file FILE --urls FILE --host HOST [--port N] [--db N]
                        [--ca FILE] [--force]

Makes a Redis user per minard role (and `replica` for a replica's masteruser) with a
fresh random password: --acl-file is for redis.conf's `aclfile` (passwords stored as
SHA-256), --urls an INI file with each role's `redis = URL` (mode 0600), to merge into
the role sections of minard.ini on each host. --ca makes them rediss:// (TLS) URLs
checked against that CA file. The `default` user gets a random administrator password
too ([admin] in --urls): redis-cli and minard-migrate-store use it."""


def main(argv=None):
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(prog="minard-redis-acl", usage=USAGE, add_help=True)
    parser.add_argument("--acl-file", required=True)
    parser.add_argument("--urls", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--db", type=int, default=0)
    parser.add_argument("--ca")
    parser.add_argument("--force", action="store_true")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code
    if not 0 < args.port < 65536 or args.db < 0:
        sys.stderr.write("minard-redis-acl: error: bad --port or --db\n")
        return 2
    if args.ca is not None and not os.path.isfile(args.ca):
        sys.stderr.write("minard-redis-acl: error: --ca: no such file: %s\n" % args.ca)
        return 2
    for path in (args.acl_file, args.urls):
        if os.path.exists(path) and not args.force:
            sys.stderr.write("minard-redis-acl: error: %s exists (--force replaces it, and "
                             "with it every password)\n" % path)
            return 1
    passwords = new_passwords()
    admin = secrets.token_urlsafe(32)
    tls = "ca=" + os.path.abspath(args.ca) if args.ca else None
    lines = ["# Redis URL of each minard role (minard-redis-acl): merge into minard.ini"]
    for role in sorted(ROLES):
        lines += ["", "[%s]" % role,
                  "redis = %s" % role_url(role, passwords[role], args.host, args.port,
                                          args.db, tls)]
    lines += ["", "# redis.conf of a replica: masteruser %s, masterauth below" % REPLICA_USER,
              "[replica]", "masterauth = %s" % passwords[REPLICA_USER],
              "", "[admin]", "redis = %s" % role_url("default", admin, args.host, args.port,
                                                    args.db, tls)]
    try:
        for path, text in ((args.acl_file, acl_file(passwords, default_password=admin)),
                           (args.urls, "\n".join(lines) + "\n")):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(path, 0o600)
    except OSError as e:
        sys.stderr.write("minard-redis-acl: error: %s\n" % (e,))
        return 1
    print("wrote %s and %s" % (args.acl_file, args.urls))
    return 0
