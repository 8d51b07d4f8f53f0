"""Lua scripts of the store, each in its own `.lua` file beside the module that runs it.

A `Script` reads its file once (at import), and is called through txredisapi's `eval`,
which sends EVALSHA after the first call on a connection and falls back to EVAL when the
server answers NOSCRIPT (a restarted Redis): the script text crosses the wire once per
connection, not once per call.

Constants that a script needs (interval lists, TTLs, sizes) are substituted into the file
at load time from `$name` placeholders (`string.Template`), so each number keeps its one
home in `minard.constants`. In a file that takes constants, a Lua pattern's own `$`
anchor is written `$$`; a file without constants is used as it is.
"""
import hashlib
import os
import string

HERE = os.path.dirname(os.path.abspath(__file__))


def lua_list(values):
    """A Python sequence of numbers as a Lua table literal: {1,2,4}."""
    return "{" + ",".join(str(v) for v in values) + "}"


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

    def __call__(self, redis, script_keys=(), args=()):
        return redis.eval(self.text, list(script_keys), list(args))

    def __repr__(self):
        return "<Script %s %s>" % (self.filename, self.sha[:8])
