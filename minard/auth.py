"""Users of the logging server: the `--auth-file` and the `minard-passwd` command.

One user per line, `user:scheme$params$salt$hash` (salt and hash in base64), e.g.
`snoplus:scrypt$n=16384,r=8,p=1$<salt>$<hash>`. Blank lines and lines starting with `#`
are ignored. Schemes: `scrypt` (what minard-passwd writes) and `pbkdf2-sha256`
(`pbkdf2-sha256$i=600000$...`). A password is checked with a slow salted hash and a
constant-time comparison; a successful check is remembered for a few minutes, keyed by a
fast hash of user, password and the stored line, so that a program posting a heartbeat
every 5 s does not cost 50 ms of CPU each time. The file is re-read when it changes, so
`minard-passwd` takes effect without a restart.

An unknown user costs exactly what a wrong password costs: the password is hashed against
a dummy entry of the same scheme and cost as a real user's (chosen per user name, so that
with users of several kinds an unknown name looks like a real user of one of them), so
the answer's timing does not tell who exists.
"""
import argparse
import base64
import getpass
import hashlib
import hmac
import os
import sys
import tempfile
import time

#: scrypt cost: n=2**14, r=8 -> 16 MiB and tens of ms per check.
SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
#: How long a successful check is remembered (s), and how many are remembered.
CACHE_SECONDS = 300
CACHE_SIZE = 1024
USER_ALPHABET = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-@")


class AuthFileError(Exception):
    """The auth file is unreadable or has a bad line; str() says where."""


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(text):
    return base64.b64decode(text.encode("ascii"), validate=True)


def _params(text):
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        out[key] = int(value)
    return out


def hash_password(password, salt=None):
    """The stored form `scrypt$n=..,r=..,p=..$salt$hash` of a password."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P, dklen=HASH_BYTES)
    return "scrypt$n=%d,r=%d,p=%d$%s$%s" % (SCRYPT_N, SCRYPT_R, SCRYPT_P, _b64(salt),
                                          _b64(digest))


def check_stored(stored):
    """Raise ValueError unless `stored` is a well-formed password hash."""
    scheme, params, salt, digest = stored.split("$")
    p = _params(params)
    _unb64(salt)
    if not _unb64(digest):
        raise ValueError("empty hash")
    if scheme == "scrypt":
        if set(p) != {"n", "r", "p"} or p["n"] < 2 or p["n"] & (p["n"] - 1):
            raise ValueError("scrypt needs n (a power of 2), r and p")
    elif scheme == "pbkdf2-sha256":
        if set(p) != {"i"} or p["i"] < 1:
            raise ValueError("pbkdf2-sha256 needs i (iterations)")
    else:
        raise ValueError("unknown scheme %r" % (scheme,))


def verify_password(password, stored):
    """True if `password` matches the stored hash (slow on purpose, constant-time compare)."""
    try:
        scheme, params, salt, digest = stored.split("$")
        p = _params(params)
        salt = _unb64(salt)
        digest = _unb64(digest)
    except ValueError:
        return False
    secret = password.encode("utf-8", "surrogatepass")
    try:
        if scheme == "scrypt":
            computed = hashlib.scrypt(secret, salt=salt, n=p["n"], r=p["r"], p=p["p"],
                                      dklen=len(digest), maxmem=256 * 1024 * 1024)
        elif scheme == "pbkdf2-sha256":
            computed = hashlib.pbkdf2_hmac("sha256", secret, salt, p["i"], len(digest))
        else:
            return False
    except (KeyError, ValueError, OverflowError, MemoryError):
        return False
    return hmac.compare_digest(computed, digest)


def parse_auth_file(text, path="<auth file>"):
    """The text of an auth file -> dict user -> stored hash."""
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not set(user) <= USER_ALPHABET:
            raise AuthFileError("%s line %d: expected user:scheme$params$salt$hash"
                                % (path, number))
        try:
            check_stored(stored)
        except (ValueError, KeyError) as e:
            raise AuthFileError("%s line %d: bad password hash for %r (%s)"
                                % (path, number, user, e))
        users[user] = stored
    return users


def read_auth_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            return parse_auth_file(f.read(), path)
    except (OSError, UnicodeDecodeError) as e:
        raise AuthFileError("cannot read %s: %s" % (path, e))


class Authenticator:
    """Checks user/password pairs against an auth file, re-reading it when it changes.

    `check(user, password)` is synchronous; `check_deferred` runs the slow hash in a
    thread (hashlib releases the GIL) so the reactor keeps serving other requests.
    """

    def __init__(self, path, clock=time.monotonic):
        self.path = path
        self.clock = clock
        self._stamp = None
        self.users = {}
        self._cache = {}  # fast key -> expiry time
        self._dummies = {}  # a real user's stored hash -> a dummy of the same kind and cost
        self._secret = os.urandom(16)  # which kind an unknown name gets: not predictable
        self.reload()

    def reload(self):
        """Read the file if it changed; a broken file keeps the previous users."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise AuthFileError("cannot read %s: %s" % (self.path, e))
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self.users = read_auth_file(self.path)
            self._stamp = stamp
            self._cache.clear()
            self._dummies = {}

    def _stored(self, user):
        """The stored hash of user, or for an unknown user a dummy of a real user's kind."""
        stored = self.users.get(user)
        if stored is not None:
            return stored
        kinds = sorted(self.users.values())
        if not kinds:
            return _dummy_hash()
        pick = hmac.new(self._secret, user.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()
        model = kinds[int.from_bytes(pick[:8], "big") % len(kinds)]
        if model not in self._dummies:
            self._dummies[model] = dummy_like(model)
        return self._dummies[model]

    def _maybe_reload(self):
        try:
            self.reload()
        except AuthFileError:
            pass  # keep the users we have; the operator sees the error at the next start

    def _cache_key(self, user, password, stored):
        data = b"\0".join(s.encode("utf-8", "surrogatepass") for s in (user, password, stored))
        return hashlib.sha256(data).digest()

    def cached(self, user, password):
        """True if this pair was verified recently; None if a slow check is needed.

        A hit keeps the pair remembered for another CACHE_SECONDS: a program posting every
        few seconds never needs a slow check again while the file is unchanged (the key
        includes the stored hash, so a changed password is never served from here)."""
        self._maybe_reload()
        stored = self._stored(user)  # the same work for an unknown user
        key = self._cache_key(user, password, stored)
        if user not in self.users:
            return None
        expiry = self._cache.get(key)
        now = self.clock()
        if expiry is not None and expiry > now:
            self._cache[key] = now + CACHE_SECONDS
            return True
        return None

    def _remember(self, user, password, stored):
        now = self.clock()
        if len(self._cache) >= CACHE_SIZE:
            self._cache = {k: v for k, v in self._cache.items() if v > now}
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
        self._cache[self._cache_key(user, password, stored)] = now + CACHE_SECONDS

    def _slow_check(self, user, password, stored, known):
        # an unknown user is checked against a dummy of a real user's kind and cost, so
        # the timing does not reveal who exists
        ok = verify_password(password, stored)
        return ok and known

    def check(self, user, password):
        if self.cached(user, password):
            return True
        stored = self._stored(user)
        ok = self._slow_check(user, password, stored, user in self.users)
        if ok:
            self._remember(user, password, stored)
        return ok

    def check_deferred(self, user, password):
        """A Deferred firing True/False; the slow hash runs in the reactor's thread pool."""
        from twisted.internet import defer, threads

        if self.cached(user, password):
            return defer.succeed(True)
        stored = self._stored(user)
        d = threads.deferToThread(self._slow_check, user, password, stored,
                                  user in self.users)

        def done(ok):
            if ok and self.users.get(user) == stored:
                self._remember(user, password, stored)
            return ok

        return d.addCallback(done)


def dummy_like(stored):
    """A stored hash of the same scheme, cost, salt and digest size as `stored` that no
    password matches (random salt and digest): checking against it costs the same."""
    scheme, params, salt, digest = stored.split("$")
    return "$".join((scheme, params, _b64(os.urandom(len(_unb64(salt)))),
                     _b64(os.urandom(len(_unb64(digest))))))


_DUMMY = []


def _dummy_hash():
    if not _DUMMY:
        _DUMMY.append(hash_password("minard-dummy-password", salt=b"\0" * SALT_BYTES))
    return _DUMMY[0]


class UsageParser(argparse.ArgumentParser):
    """argparse with minard's usage errors: one line on stderr, exit code 1."""

    def error(self, message):
        self.exit(1, "%s: error: %s\n" % (self.prog, message))


# -- minard-passwd ------------------------------------------------------------------------

def write_auth_file(path, users):
    """Replace the file atomically (mode 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".minard-passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# minard log-server users (minard-passwd FILE USER)\n")
            for user, stored in users.items():
                f.write("%s:%s\n" % (user, stored))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_password(stdin=None):
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Password again: ")
        if first != second:
            raise ValueError("the passwords differ")
        return first
    line = stdin.readline()
    return line.rstrip("\r\n")


def main(argv=None, stdin=None):
    parser = UsageParser(
        prog="minard-passwd",
        description="Add, replace or delete a user of the minard logging server. "
                    "The password is read from the terminal, or from the first line of "
                    "stdin when it is not a terminal.")
    parser.add_argument("file", help="the auth file (created if missing)")
    parser.add_argument("user", help="user name (letters, digits, _ . - @)")
    parser.add_argument("--delete", action="store_true", help="remove the user")
    args = parser.parse_args(argv)
    if not args.user or not set(args.user) <= USER_ALPHABET:
        parser.error("user: only letters, digits and _ . - @ are allowed")
    users = {}
    if os.path.exists(args.file):
        try:
            users = read_auth_file(args.file)
        except AuthFileError as e:
            parser.error(str(e))
    elif not os.path.isdir(os.path.dirname(os.path.abspath(args.file))):
        parser.error("cannot create %s: no such directory" % (args.file,))
    if args.delete:
        if args.user not in users:
            parser.error("no user %r in %s" % (args.user, args.file))
        del users[args.user]
    else:
        try:
            password = _read_password(stdin)
        except (ValueError, EOFError, KeyboardInterrupt) as e:
            parser.error(str(e) or "no password")
        if not password:
            parser.error("the password must not be empty")
        users[args.user] = hash_password(password)
    try:
        write_auth_file(args.file, users)
    except OSError as e:
        parser.error("cannot write %s: %s" % (args.file, e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
