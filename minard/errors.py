"""Errors that carry a reason a person can read, shared by the store and the web sites
(which answer them as HTTP 400 / 404 with `{"error": reason}`)."""


class BadRequest(Exception):
    """A client sent something unusable; str() is the reason (answered with 400)."""


class NotFound(Exception):
    """A client named something unknown (answered with 404)."""
