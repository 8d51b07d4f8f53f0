"""Deployment: the supervisord, nginx, Redis and minard configuration of minard's hosts,
rendered from one description of each host (`Layout`), and the one-command local system
behind `scripts/run-local`.

* minard/deploy/templates/  the files themselves, Jinja2 templates
* render.py                 what each template needs from a Layout; PRODUCTION_FILES
* layouts.py                Layout, PRODUCTION, local_layout, the programs of a layout
* multihost.py              a push host, worker hosts and a web host (README.md,
                            "Beyond one server")
* local.py                  LocalSystem: the local system under ./run (scripts/run-local)
* cli.py                    python -m minard.deploy / minard-deploy

The production files in `etc/` (supervisord.conf, nginx.conf, redis.conf, minard.ini) are
`render_*(PRODUCTION)`, written by `python -m minard.deploy production etc`; the tests check
that the files in the tree are exactly these renders, so the production configuration and
the local one (same templates, a `Layout` under ./run with the current user) cannot drift
apart. Edit the templates, then regenerate etc/.
"""
from minard.deploy.layouts import (  # noqa: F401
    DEFAULT_PORTS, GROUP, GROUP_PRIORITY, MONITOR_USER, NGINX_TLS_PORT, PORT_PURPOSE, PORTS,
    PREFIX, PRODUCTION, REPO, SECURITY_HEADERS, STREAM_READ_TIMEOUT, SUPERVISOR_USER,
    DeployError, Layout, Program, local_layout, own_programs, process_names, programs_of,
    role_programs, stand_in_programs)
from minard.deploy.render import (  # noqa: F401
    PRODUCTION_FILES, render_ini, render_nginx, render_redis, render_supervisor_secrets,
    render_supervisord, write_production)
from minard.deploy.local import (  # noqa: F401
    LocalSystem, choose_ports, free_ports, port_in_use)
from minard.deploy.cli import main  # noqa: F401
