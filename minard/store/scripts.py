"""Lua scripts of the store, each in its own `.lua` file beside the module that runs it.

A `Script` reads its file once (at import), and is called through txredisapi's `eval`,
which sends EVALSHA after the first call on a connection and falls back to EVAL when the
server answers NOSCRIPT (a restarted Redis): the script text crosses the wire once per
connection, not once per call. A read-only script (`#!lua flags=no-writes`) is sent as
EVALSHA_RO, and EVAL_RO after NOSCRIPT (Redis 7).

Constants that a script needs (interval lists, TTLs, sizes) are substituted into the file
at load time from `$name` placeholders (`string.Template`), so each number keeps its one
home in `minard.constants`. In a file that takes constants, a Lua pattern's own `$`
anchor is written `$$`; a file without constants is used as it is.
"""
import hashlib
import os
import string

import txredisapi

HERE = os.path.dirname(os.path.abspath(__file__))


def lua_list(values):
    """A Python sequence of numbers as a Lua table literal: {1,2,4}."""
    return "{" + ",".join(str(v) for v in values) + "}"


def fragment(filename, directory=HERE):
    """A piece of Lua shared by several scripts (Redis scripts cannot import), given to
    Script as a constant: `Script("x.lua", live_writers=LIVE_WRITERS)`."""
    with open(os.path.join(directory, filename), encoding="utf-8") as f:
        return f.read()


#: slowest_live_writer(timeout, lag): the writers hash KEYS[1] read and pruned.
LIVE_WRITERS = fragment("live_writers.inc.lua")


class Script:
    """One Lua script: `Script("events_flush.lua", intervals=...)`, then `script(redis, keys,
    args)` -> Deferred of the script's reply."""

    def __init__(self, filename, directory=HERE, **constants):
        self.filename = filename
        with open(os.path.join(directory, filename), encoding="utf-8") as f:
            template = f.read()
        values = {k: (lua_list(v) if isinstance(v, (tuple, list)) else v)
                  for k, v in constants.items()}
        self.text = string.Template(template).substitute(values) if values else template
        self.sha = hashlib.sha1(self.text.encode("utf-8")).hexdigest()
        first = self.text.split("\n", 1)[0]
        #: A reader (`#!lua flags=no-writes`) runs as EVALSHA_RO / EVAL_RO: its keys are
        #: then read-only, which a Redis ACL user with read rights only may run.
        self.read_only = first.startswith("#!lua") and "no-writes" in first

    def __call__(self, redis, script_keys=(), args=()):
        if not self.read_only:
            return redis.eval(self.text, list(script_keys), list(args))
        keys_and_args = [len(script_keys)] + list(script_keys) + list(args)
        d = redis.execute_command("EVALSHA_RO", self.sha, *keys_and_args)

        def not_loaded(failure):
            failure.trap(txredisapi.ResponseError)
            if not str(failure.value).startswith("NOSCRIPT"):
                return failure
            return redis.execute_command("EVAL_RO", self.text, *keys_and_args)

        d.addErrback(not_loaded)
        return d

    def __repr__(self):
        return "<Script %s %s>" % (self.filename, self.sha[:8])
