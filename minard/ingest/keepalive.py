"""TCP keepalive with short timings for the upstream links (dispatcher, data server).

A builder that loses power or a cut cable sends no FIN and no RST: without keepalive the
socket looks healthy for hours (Linux's default first probe is after 2 h). With these
timings the kernel probes a link that has been quiet for KEEPALIVE_IDLE seconds and
resets it after KEEPALIVE_COUNT unanswered probes, KEEPALIVE_INTERVAL apart; the protocol
then sees connectionLost and ClientService reconnects. TCP_USER_TIMEOUT bounds the same
way the time our own unacknowledged bytes (the handshake, a subscription) may wait.

Keepalive cannot see a peer whose kernel answers but whose program is stuck (a hung
dispatcher, a relay that stopped forwarding): the protocols' idle timeouts catch those.
"""
import socket

from minard import constants as C


def keepalive_options(idle=C.KEEPALIVE_IDLE, interval=C.KEEPALIVE_INTERVAL,
                      count=C.KEEPALIVE_COUNT):
    """(level, option, value) for this platform; options it lacks are left out."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    # macOS spells TCP_KEEPIDLE as TCP_KEEPALIVE
    idle_option = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    for option, value in ((idle_option, idle),
                          (getattr(socket, "TCP_KEEPINTVL", None), interval),
                          (getattr(socket, "TCP_KEEPCNT", None), count),
                          (getattr(socket, "TCP_USER_TIMEOUT", None),
                           (idle + interval * count) * 1000)):
        if option is not None:
            options.append((socket.IPPROTO_TCP, option, int(value)))
    return options


def enable_keepalive(transport, **timings):
    """Set keepalive on the socket under `transport`. False when there is no socket (a
    test transport) or the system refuses: the link then relies on its idle timeout."""
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if not hasattr(sock, "setsockopt"):
        return False
    try:
        for level, option, value in keepalive_options(**timings):
            sock.setsockopt(level, option, value)
    except OSError:
        return False
    return True
