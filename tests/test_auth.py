"""The log server's auth file and minard-passwd (minard/auth.py)."""
import base64
import hashlib
import io
import os
import stat
import tempfile

from twisted.trial import unittest

from minard import auth


class FakeTTY(io.StringIO):
    def isatty(self):
        return False


class HashTests(unittest.TestCase):

    def test_round_trip(self):
        stored = auth.hash_password("s3cret ü")
        scheme, params, salt, digest = stored.split("$")
        self.assertEqual(scheme, "scrypt")
        self.assertEqual(params, "n=%d,r=%d,p=%d" % (auth.SCRYPT_N, auth.SCRYPT_R, auth.SCRYPT_P))
        self.assertEqual(len(base64.b64decode(salt)), auth.SALT_BYTES)
        self.assertEqual(len(base64.b64decode(digest)), auth.HASH_BYTES)
        self.assertTrue(auth.verify_password("s3cret ü", stored))
        self.assertFalse(auth.verify_password("s3cret u", stored))
        self.assertFalse(auth.verify_password("", stored))

    def test_salted(self):
        a, b = auth.hash_password("same"), auth.hash_password("same")
        self.assertNotEqual(a, b)
        self.assertNotEqual(a.split("$")[2], b.split("$")[2])

    def test_pbkdf2(self):
        salt = b"0123456789abcdef"
        digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000, 32)
        stored = "pbkdf2-sha256$i=1000$%s$%s" % (base64.b64encode(salt).decode(),
                                                 base64.b64encode(digest).decode())
        auth.check_stored(stored)
        self.assertTrue(auth.verify_password("pw", stored))
        self.assertFalse(auth.verify_password("pW", stored))

    def test_malformed_never_verifies(self):
        for stored in ("", "plain", "scrypt$n=2$!!$!!", "md5$x$YQ==$YQ==",
                       "scrypt$n=16384,r=8,p=1$YQ==", "scrypt$n=x$YQ==$YQ=="):
            self.assertFalse(auth.verify_password("pw", stored), stored)


class FileTests(unittest.TestCase):

    def test_parse(self):
        good = auth.hash_password("pw")
        users = auth.parse_auth_file("# comment\n\nsnoplus:%s\n  other:%s  \n" % (good, good))
        self.assertEqual(set(users), {"snoplus", "other"})

    def test_bad_lines_name_the_line(self):
        good = auth.hash_password("pw")
        for text in ("snoplus\n", "snoplus:plaintext\n", ":%s\n" % good,
                     "bad user:%s\n" % good, "u:md5$i=1$YQ==$YQ==\n"):
            with self.assertRaises(auth.AuthFileError) as cm:
                auth.parse_auth_file("# ok\n" + text, "users")
            self.assertIn("users line 2", str(cm.exception))


class AuthenticatorTests(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "users")
        auth.write_auth_file(self.path, {"snoplus": auth.hash_password("pw")})
        self.now = [1000.0]
        self.calls = []
        real = auth.verify_password

        def counting(password, stored):
            self.calls.append(password)
            return real(password, stored)

        self.patch(auth, "verify_password", counting)
        self.auth = auth.Authenticator(self.path, clock=lambda: self.now[0])

    def test_check(self):
        self.assertTrue(self.auth.check("snoplus", "pw"))
        self.assertFalse(self.auth.check("snoplus", "wrong"))
        self.assertFalse(self.auth.check("nobody", "pw"))

    def test_unknown_user_costs_a_hash_too(self):
        self.calls.clear()
        self.assertFalse(self.auth.check("nobody", "pw"))
        self.assertEqual(len(self.calls), 1)

    def test_success_is_cached_for_a_while(self):
        self.assertTrue(self.auth.check("snoplus", "pw"))
        self.assertEqual(len(self.calls), 1)
        for _ in range(10):
            self.assertTrue(self.auth.check("snoplus", "pw"))
        self.assertEqual(len(self.calls), 1)
        self.now[0] += auth.CACHE_SECONDS + 1
        self.assertTrue(self.auth.check("snoplus", "pw"))
        self.assertEqual(len(self.calls), 2)

    def test_failures_are_not_cached(self):
        self.auth.check("snoplus", "wrong")
        self.auth.check("snoplus", "wrong")
        self.assertEqual(len(self.calls), 2)

    def test_file_change_is_picked_up(self):
        self.assertTrue(self.auth.check("snoplus", "pw"))
        auth.write_auth_file(self.path, {"snoplus": auth.hash_password("new"),
                                         "second": auth.hash_password("x")})
        os.utime(self.path, ns=(1, 1))  # a different mtime even within one clock tick
        self.assertFalse(self.auth.check("snoplus", "pw"))  # the cache went with the file
        self.assertTrue(self.auth.check("snoplus", "new"))
        self.assertTrue(self.auth.check("second", "x"))

    def test_broken_file_keeps_the_old_users(self):
        with open(self.path, "a") as f:
            f.write("garbage line\n")
        self.assertTrue(self.auth.check("snoplus", "pw"))

    def test_check_deferred(self):
        d = self.auth.check_deferred("snoplus", "pw")
        d.addCallback(self.assertTrue)
        d.addCallback(lambda _: self.auth.check_deferred("snoplus", "nope"))
        d.addCallback(self.assertFalse)
        d.addCallback(lambda _: self.assertTrue(self.auth.cached("snoplus", "pw")))
        return d


class PasswdCommandTests(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "users")

    def run_main(self, *argv, stdin="pw\n"):
        return auth.main(list(argv), stdin=FakeTTY(stdin))

    def test_add_replace_delete(self):
        self.assertEqual(self.run_main(self.path, "snoplus", stdin="first\n"), 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        users = auth.read_auth_file(self.path)
        self.assertTrue(auth.verify_password("first", users["snoplus"]))
        self.run_main(self.path, "other", stdin="x\n")
        self.run_main(self.path, "snoplus", stdin="second\n")
        users = auth.read_auth_file(self.path)
        self.assertEqual(set(users), {"snoplus", "other"})
        self.assertTrue(auth.verify_password("second", users["snoplus"]))
        self.run_main(self.path, "other", "--delete")
        self.assertEqual(set(auth.read_auth_file(self.path)), {"snoplus"})

    def usage_error(self, *argv, stdin="pw\n"):
        with self.assertRaises(SystemExit) as cm:
            self.run_main(*argv, stdin=stdin)
        self.assertEqual(cm.exception.code, 1)

    def test_errors(self):
        self.usage_error(self.path, "snoplus", stdin="\n")         # empty password
        self.usage_error(self.path, "bad user")                    # bad name
        self.usage_error(self.path, "nobody", "--delete")          # no such user
        self.usage_error(os.path.join(self.dir, "no", "dir"), "u")  # no directory
        with open(self.path, "w") as f:
            f.write("garbage\n")
        self.usage_error(self.path, "snoplus")                     # unreadable file
        self.assertFalse(os.path.exists(os.path.join(self.dir, "no")))
