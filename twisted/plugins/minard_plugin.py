"""twistd plugin for minard: `twistd -n minard --role=ROLE [options]`.

Kept thin on purpose: the application is imported only when twistd actually
runs the minard command, never at plugin discovery time.
"""
from twisted.application.service import ServiceMaker

minard = ServiceMaker(
    "minard",
    "minard.tap",
    "SNO+ online monitoring (roles: dispatch-push, dispatch-pull, data-producer, "
    "data-consumer, web, log-server, simulator)",
    "minard",
)
