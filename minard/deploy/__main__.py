"""python -m minard.deploy: see minard/deploy/cli.py."""
import sys

from minard.deploy.cli import main

sys.exit(main())
