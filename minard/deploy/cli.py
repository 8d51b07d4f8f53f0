"""The command line of minard.deploy (`python -m minard.deploy`, `minard-deploy`).

    minard-deploy production DIR          write the production files (etc/) into DIR
    minard-deploy local [start] [--dir run] [--port-offset N | --auto-ports]
                        [--detach] [--timeout S] [--rate EV/S] [--stale-after S]
    minard-deploy local stop|status [--dir run]
    minard-deploy multi-host --out DIR --hosts A=10.0.0.1,B=10.0.0.2,C=10.0.0.3
                        --push-host A --web-host C [--workers N] --keys DIR --tls DIR
                        --redis-urls FILE --redis-acl FILE [--plaintext-beyond-loopback]

`scripts/run-local` is `python -m minard.deploy local`.
"""
import argparse
import os
import sys

from minard.deploy.layouts import REPO, DeployError
from minard.deploy.local import _local_main
from minard.deploy.render import write_production


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(1, "%s: error: %s\n" % (self.prog, message))


def build_parser(prog="python -m minard.deploy"):
    from minard.deploy import multihost

    parser = _Parser(prog=prog, description="Deployment of minard: the configuration files "
                     "of a host, rendered from one description of it.")
    sub = parser.add_subparsers(dest="command", required=True)
    prod = sub.add_parser("production", help="write the production files into DIR")
    prod.add_argument("dir")
    local = sub.add_parser("local", help="the local system (scripts/run-local)")
    local.add_argument("action", nargs="?", default="start", choices=("start", "stop", "status"))
    local.add_argument("--dir", default=os.path.join(REPO, "run"),
                       help="where configs, logs and data go (default ./run)")
    group = local.add_mutually_exclusive_group()
    group.add_argument("--port-offset", type=int, default=0,
                       help="add N to every port (8080 -> 8080+N ...)")
    group.add_argument("--auto-ports", action="store_true", help="use any free ports")
    local.add_argument("--detach", action="store_true",
                       help="return once the system is live (stop: scripts/run-local stop)")
    local.add_argument("--timeout", type=float, default=90,
                       help="seconds to wait for live data (default 90)")
    local.add_argument("--rate", type=float, default=1000.0,
                       help="simulated events per second (default 1000)")
    local.add_argument("--stale-after", type=int, default=30,
                       help="seconds before the watchdog raises a stale-data alarm (default 30)")
    multihost.add_arguments(sub.add_parser(
        "multi-host", help="the files of each host of a multi-host layout",
        description=multihost.__doc__.split("\n\n")[0]))
    return parser


def main(argv=None, prog="python -m minard.deploy"):
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.command == "production":
        write_production(args.dir)
        return 0
    if args.command == "multi-host":
        from minard.deploy import multihost
        try:
            return multihost.run(args)
        except DeployError as e:
            sys.stderr.write("%s multi-host: error: %s\n" % (prog, e))
            return 1
    if args.timeout <= 0 or args.rate <= 0 or not 1 <= args.stale_after <= 86400:
        parser.error("--timeout and --rate must be positive, --stale-after 1-86400")
    try:
        return _local_main(args)
    except DeployError as e:
        sys.stderr.write("run-local: %s\n" % (e,))
        return 1


def entry_point():
    """`minard-deploy` (setup.py console script)."""
    return main(prog="minard-deploy")
