"""Faults put into the simulator on purpose, so that channel health (minard/health/) has
something to find on the local system and in tests.

    kill-card C/K            card K of crate C stops: no hits, its slot leaves the CMOS
                             and BASE records (no CMOS counts, no base current)
    revive-card C/K          it comes back
    hot C/K/CH [FRACTION]    channel CH fires in FRACTION of the events (default 0.3) and
                             its CMOS rate is HOT_CMOS_RATE
    drift C/K/CH [PER_S]     its base current drifts by PER_S ADC counts a second
                             (default 0.5), from now, up to DRIFT_LIMIT
    noisy C/K/CH             its CMOS rate comes in bursts (NOISY_BURST × its rate in
                             NOISY_PROBABILITY of the readouts)
    heal [C/K[/CH] | all]    undo the faults of a card, a channel, or all (default)
    list                     the faults in force
    help                     this list

Given to the simulator as `--faults "kill-card 3/7; hot 5/2/14"` (at start) or, while it
runs, as lines on its `--control` endpoint (loopback only, e.g.
`--control tcp:5561:interface=127.0.0.1`):

    python -m minard.sim.faults --control 127.0.0.1:5561 kill-card 3/7

Each command answers one line, `ok: ...` or `error: ...`.
"""
import argparse
import socket
import sys

import numpy as np
from twisted.internet import protocol
from twisted.protocols.basic import LineOnlyReceiver

from minard import constants as C

HOT_FRACTION = 0.3
HOT_CMOS_RATE = 50000.0  # Hz
DRIFT_PER_SECOND = 0.5   # ADC counts
DRIFT_LIMIT = 120.0      # ADC counts: the raw reading stays within 0..255
NOISY_BURST = 30.0
NOISY_PROBABILITY = 0.05
MAX_LINE = 1024
COMMANDS = ("kill-card C/K; revive-card C/K; hot C/K/CH [FRACTION]; drift C/K/CH [PER_S]; "
            "noisy C/K/CH; heal [C/K[/CH] | all]; list; help")


class FaultError(ValueError):
    """A command that cannot be done; str() says why."""


def parse_place(text, parts):
    """'C/K' (parts 2) or 'C/K/CH' (parts 3) -> a tuple of ints, checked."""
    pieces = text.replace(",", "/").split("/")
    if len(pieces) != parts or not all(p.strip().isdigit() for p in pieces):
        raise FaultError("%r is not %s" % (text, "crate/card" if parts == 2
                                            else "crate/card/channel"))
    values = tuple(int(p) for p in pieces)
    limits = (C.N_CRATES, C.N_CARDS, C.N_CHANNELS_PER_CARD)
    for name, v, limit in zip(("crate", "card", "channel"), values, limits):
        if not 0 <= v < limit:
            raise FaultError("%s %d is out of range (0-%d)" % (name, v, limit - 1))
    return values


def _number(text, name, low, high):
    try:
        value = float(text)
    except ValueError:
        raise FaultError("%s must be a number, not %r" % (name, text))
    if not low <= value <= high:
        raise FaultError("%s must be between %g and %g" % (name, low, high))
    return value


class Faults:
    """The faults in force. `clock()` is the simulator's time (drifts start from it).
    The hooks (adjust_hits, present_slots, cmos_rates, base_offsets) are what the
    synthetic detector and the simulated data server ask."""

    def __init__(self, clock):
        self.clock = clock
        self.dead_cards = set()   # (crate, card)
        self.hot = {}             # channel index -> fraction of events
        self.drift = {}           # channel index -> (ADC counts per second, since)
        self.noisy = set()
        self._pool = None         # (key, live channels off the dead cards)

    # -- commands ---------------------------------------------------------------------------

    def command(self, line):
        """Do one command line; its answer (without 'ok: '). FaultError if it cannot."""
        words = line.split()
        if not words:
            raise FaultError("empty command (try: help)")
        verb, args = words[0].lower(), words[1:]
        if verb == "help":
            return "commands: " + COMMANDS
        if verb == "list":
            return "; ".join(self.describe()) or "no faults"
        if verb in ("kill-card", "revive-card"):
            self._arity(verb, args, 1, 1)
            crate, card = parse_place(args[0], 2)
            if verb == "kill-card":
                self.dead_cards.add((crate, card))
                return "card %d/%d killed" % (crate, card)
            self.dead_cards.discard((crate, card))
            return "card %d/%d revived" % (crate, card)
        if verb in ("hot", "drift", "noisy"):
            self._arity(verb, args, 1, 1 if verb == "noisy" else 2)
            index = C.channel_index(*parse_place(args[0], 3))
            if verb == "hot":
                fraction = _number(args[1], "fraction", 0.001, 1.0) if len(args) > 1 \
                    else HOT_FRACTION
                self.hot[index] = fraction
                return "channel %s hot (%g of the events)" % (args[0], fraction)
            if verb == "drift":
                rate = _number(args[1], "counts per second", -100, 100) if len(args) > 1 \
                    else DRIFT_PER_SECOND
                self.drift[index] = (rate, self.clock())
                return "channel %s base current drifting %g counts/s" % (args[0], rate)
            self.noisy.add(index)
            return "channel %s noisy" % (args[0],)
        if verb == "heal":
            self._arity(verb, args, 0, 1)
            return self.heal(args[0] if args else "all")
        raise FaultError("unknown command %r (try: help)" % (verb,))

    @staticmethod
    def _arity(verb, args, low, high):
        if not low <= len(args) <= high:
            raise FaultError("%s takes %s" % (verb, {
                "kill-card": "crate/card", "revive-card": "crate/card",
                "hot": "crate/card/channel [fraction]",
                "drift": "crate/card/channel [counts per second]",
                "noisy": "crate/card/channel", "heal": "[crate/card[/channel] | all]"}[verb]))

    def heal(self, target="all"):
        if target == "all":
            self.dead_cards.clear()
            self.hot.clear()
            self.drift.clear()
            self.noisy.clear()
            return "all faults healed"
        parts = len(target.replace(",", "/").split("/"))
        if parts == 2:
            crate, card = parse_place(target, 2)
            first = C.channel_index(crate, card, 0)
            inside = lambda i: first <= i < first + C.N_CHANNELS_PER_CARD  # noqa: E731
            self.dead_cards.discard((crate, card))
        else:
            index = C.channel_index(*parse_place(target, 3))
            inside = lambda i: i == index  # noqa: E731
        for faults in (self.hot, self.drift):
            for i in [i for i in faults if inside(i)]:
                del faults[i]
        self.noisy = {i for i in self.noisy if not inside(i)}
        return "%s healed" % (target,)

    def describe(self):
        def where(i):
            return "%d/%d/%d" % (i >> 9, i >> 5 & 15, i & 31)
        out = ["kill-card %d/%d" % cc for cc in sorted(self.dead_cards)]
        out += ["hot %s %g" % (where(i), f) for i, f in sorted(self.hot.items())]
        out += ["drift %s %g" % (where(i), r) for i, (r, _) in sorted(self.drift.items())]
        out += ["noisy %s" % where(i) for i in sorted(self.noisy)]
        return out

    def __bool__(self):
        return bool(self.dead_cards or self.hot or self.drift or self.noisy)

    # -- hooks: the event stream -------------------------------------------------------------

    def _dead_card_ids(self):
        return np.array(sorted(c << 4 | k for c, k in self.dead_cards), dtype=np.int64)

    def adjust_hits(self, detector, channels, nhit):
        """Change the hits of one batch of events in place: hits of a dead card go to
        other live channels (nhit is kept), a hot channel takes the second hit of its
        share of the events (with at least two hits)."""
        if not self:
            return channels
        rng = detector.rng
        if self.dead_cards:
            ids = self._dead_card_ids()
            key = tuple(ids.tolist())
            if self._pool is None or self._pool[0] != key:
                live = detector.live_channels
                self._pool = (key, live[~np.isin(live >> 5, ids)])
            on_dead = np.isin(channels >> 5, ids)
            if on_dead.any():
                pool = self._pool[1]
                channels[on_dead] = pool[rng.integers(0, len(pool), int(on_dead.sum()))]
        if self.hot:
            second = np.cumsum(nhit) - nhit + 1
            two = nhit >= 2
            for index, fraction in self.hot.items():
                chosen = two & (rng.random(len(nhit)) < fraction)
                channels[second[chosen]] = index
        return channels

    # -- hooks: the data server ------------------------------------------------------------

    def present_slots(self, crate):
        """The slot mask of a crate's records: every slot but its dead cards'."""
        mask = (1 << C.N_CARDS) - 1
        for c, k in self.dead_cards:
            if c == crate:
                mask &= ~(1 << k)
        return mask

    def cmos_rates(self, crate, rates, rng):
        """The CMOS rates (Hz) of one readout of a crate's 512 channels."""
        if not (self.hot or self.noisy):
            return rates
        rates = rates.copy()
        lo = crate << 9
        for index in self.hot:
            if index >> 9 == crate:
                rates[index - lo] = HOT_CMOS_RATE
        for index in self.noisy:
            if index >> 9 == crate and rng.random() < NOISY_PROBABILITY:
                rates[index - lo] *= NOISY_BURST
        return rates

    def base_offsets(self, crate, now):
        """ADC counts added to a crate's 512 base currents at time `now`."""
        offsets = np.zeros(C.N_CARDS * C.N_CHANNELS_PER_CARD)
        for index, (rate, since) in self.drift.items():
            if index >> 9 == crate:
                offsets[index & 511] = float(np.clip(rate * (now - since),
                                                     -DRIFT_LIMIT, DRIFT_LIMIT))
        return offsets


def parse_faults(text):
    """Check a --faults text ('cmd; cmd'): the list of commands, or FaultError."""
    commands = [c.strip() for c in (text or "").split(";") if c.strip()]
    trial = Faults(clock=lambda: 0.0)
    for c in commands:
        if c.split()[0].lower() in ("list", "help"):
            raise FaultError("%r is not a fault" % (c,))
        trial.command(c)
    return commands


# -- the control endpoint -----------------------------------------------------------------

class ControlProtocol(LineOnlyReceiver):
    """One line in, one line out."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def lineReceived(self, line):
        text = line.decode("utf-8", "replace").strip()
        try:
            answer = "ok: " + self.factory.faults.command(text)
        except FaultError as e:
            answer = "error: %s" % (e,)
        self.sendLine(answer.encode("utf-8"))

    def lineLengthExceeded(self, line):
        self.sendLine(b"error: line longer than %d bytes" % MAX_LINE)
        self.transport.loseConnection()


class ControlFactory(protocol.Factory):
    protocol = ControlProtocol

    def __init__(self, faults):
        self.faults = faults


def send(address, command, timeout=10.0):
    """Send one command to a simulator's control endpoint ('host:port'); its answer."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout) as s:
        s.sendall(command.encode("utf-8") + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m minard.sim.faults",
        description="Break the simulator on purpose (its --control endpoint). Commands: "
                    + COMMANDS)
    parser.add_argument("--control", default="127.0.0.1:5561",
                        help="host:port of the simulator's --control (default %(default)s)")
    parser.add_argument("command", nargs="+", help="the command and its arguments")
    args = parser.parse_args(argv)
    try:
        answer = send(args.control, " ".join(args.command))
    except (OSError, ValueError) as e:
        sys.stderr.write("minard faults: cannot reach %s: %s\n" % (args.control, e))
        return 1
    print(answer)
    return 0 if answer.startswith("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
