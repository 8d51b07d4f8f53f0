"""The command line: roles, their own options only, config files, one-line errors."""
import os
import subprocess
import tempfile

from twisted.trial import unittest

from minard import tap
from tests.support import REPO, twistd_command


def run_twistd(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.run(twistd_command() + list(args), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


class CommandLineTests(unittest.TestCase):
    def test_help_lists_roles(self):
        code, out, _ = run_twistd("minard", "--help")
        self.assertEqual(code, 0)
        for role in tap.ROLES:
            self.assertIn(role, out)

    def test_role_help_lists_only_its_options(self):
        code, out, _ = run_twistd("minard", "--role=dispatch-pull", "--help")
        self.assertEqual(code, 0)
        self.assertIn("--name", out)
        self.assertNotIn("--dialect", out)

    def test_bad_values_are_one_line_usage_errors(self):
        cases = [
            ("--role=dispatch-push", "--port", "99999"),
            ("--role=dispatch-push", "--dialect", "kafka"),
            ("--role=dispatch-pull", "--zmq", "not-an-endpoint"),
            ("--role=web", "--listen", "nonsense:1"),
            ("--role=simulator", "--rate", "-5"),
            ("--role=dispatch-pull", "--redis", "http://x"),
            ("--role=web", "--dialect", "caspur"),
            ("--role=nosuchrole",),
            ("--port", "5"),
            # review: values that used to be accepted and then misbehaved
            ("--role=dispatch-push", "--subscription", "a RAWDATA w RECHDR"),  # stalls DAQ
            ("--role=dispatch-pull", "--redis", "unix:///tmp/redis.sock"),  # was ignored
            ("--role=simulator", "--rate", "1e12"),  # would exhaust memory
            ("--role=simulator", "--seed", "-1"),  # was a traceback from numpy
        ]
        for args in cases:
            code, out, err = run_twistd("-n", "minard", *args)
            self.assertEqual(code, 1, args)
            lines = [line for line in err.splitlines() if line.strip()]
            self.assertEqual(len(lines), 1, (args, err))
            self.assertTrue(lines[0].startswith("minard: error: "), err)
            self.assertNotIn("Traceback", err + out)


    def test_busy_port_is_a_one_line_error(self):
        import socket
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        for args in (("--role=web", "--listen", "tcp:%d:interface=127.0.0.1" % port,
                      "--log-dir", "/tmp", "--programs", "etc/programs.ini"),
                     ("--role=dispatch-push", "--zmq", "tcp://127.0.0.1:%d" % port,
                      "--port", "1")):
            code, out, err = run_twistd("-n", "--pidfile=", "minard", *args)
            self.assertEqual(code, 1, args)
            self.assertIn("minard: error: ", out + err)
            self.assertNotIn("Traceback", out + err)


class ParseTests(unittest.TestCase):
    def parse(self, *args):
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self):
        o = self.parse("--role=dispatch-push")
        self.assertEqual((o["host"], o["port"], o["dialect"]), ("127.0.0.1", 5553, "caspur"))
        self.assertEqual(o["zmq"], "tcp://127.0.0.1:5560")
        self.assertEqual(o["redis"], "redis://127.0.0.1:6379/0")

    def test_config_file_and_command_line_precedence(self):
        with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as f:
            f.write("[dispatch-push]\nhost = builder1\nport = 6000\n"
                    "[monitor]\nurl = http://x\n")
        self.addCleanup(os.unlink, f.name)
        o = self.parse("--role=dispatch-push", "--config", f.name, "--port", "7000")
        self.assertEqual((o["host"], o["port"]), ("builder1", 7000))
        self.assertEqual(o["config-sections"]["monitor"]["url"], "http://x")

    def test_config_file_errors(self):
        with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as f:
            f.write("[dispatch-push]\nnonsense = 1\n")
        self.addCleanup(os.unlink, f.name)
        self.assertRaises(SystemExit, self.parse, "--role=dispatch-push", "--config", f.name)
        with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as g:
            g.write("[dispatch-push]\nport = abc\n")
        self.addCleanup(os.unlink, g.name)
        self.assertRaises(SystemExit, self.parse, "--role=dispatch-push", "--config", g.name)

    def test_replay_file_that_is_not_a_capture_is_a_usage_error(self):
        with tempfile.NamedTemporaryFile("wb", suffix=".cap", delete=False) as f:
            f.write(b"RAWDATA\0\x7f\xff\xff\xffjunk")  # a size no frame can have
        self.addCleanup(os.unlink, f.name)
        code, out, err = run_twistd("-n", "--pidfile=", "minard", "--role=simulator",
                                    "--replay", f.name, "--dispatcher-listen", "tcp:0",
                                    "--data-listen", "tcp:0")
        self.assertEqual(code, 1)
        self.assertEqual(err.strip().splitlines(), [
            "minard: error: --replay: frame size 2147483647 out of range 0..130000"])
        self.assertNotIn("Traceback", err + out)


class SubscriptionTests(unittest.TestCase):
    def test_only_non_blocking_flags(self):
        self.assertEqual(tap.subscription("w RAWDATA w RECHDR"), "w RAWDATA w RECHDR")
        with self.assertRaises(tap.OptionError) as e:
            tap.subscription("w RAWDATA a RECHDR")
        self.assertIn("stalls the DAQ", str(e.exception))
