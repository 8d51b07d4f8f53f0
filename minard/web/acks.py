"""The checks of `POST ack_alarm` (minard/web/site.py), the main site's one write.

The main site has no login: anyone who can open the pages may acknowledge, as anyone in
the control room may. What must not happen is another web site making a shifter's
browser acknowledge behind their back (cross-site request forgery). So a request is
refused unless
  * it is JSON (`Content-Type: application/json`): a cross-site HTML form cannot send
    that, and a cross-site script cannot without a CORS preflight, which this site never
    answers with permission;
  * the browser does not say it is cross-site: `Sec-Fetch-Site` (when sent) is
    same-origin or none, and `Origin` (when sent) names this host (the `Host` header,
    which nginx passes through).
The body is {"name": who, "ids": [alarm id, ...]}.
"""
import json
from urllib.parse import urlsplit

from minard import constants as C
from minard.web.timeparse import BadRequest


class Refused(Exception):
    """An ack request refused before its content is looked at: `code` (403, 413) and why."""

    def __init__(self, code, reason):
        Exception.__init__(self, reason)
        self.code = code


def _header(request, name):
    value = request.getHeader(name)
    return value.decode("latin-1").strip() if isinstance(value, bytes) else value


def check_same_origin(request):
    """Raise Refused(403) for a request a browser marks as cross-site (module docstring)."""
    fetch_site = _header(request, b"sec-fetch-site")
    if fetch_site and fetch_site.lower() not in ("same-origin", "none"):
        raise Refused(403, "cross-site request refused (Sec-Fetch-Site: %s)" % fetch_site[:40])
    origin = _header(request, b"origin")
    if origin:
        host = _without_default_port(_header(request, b"host") or "")
        try:
            netloc = urlsplit(origin).netloc if origin != "null" else ""
        except ValueError:
            netloc = ""
        if not netloc or _without_default_port(netloc) != host:
            raise Refused(403, "cross-site request refused (Origin %s is not this site)"
                          % json.dumps(origin[:80]))


def _without_default_port(netloc):
    netloc = netloc.strip().lower()
    for port in (":80", ":443"):
        if netloc.endswith(port):
            return netloc[:-len(port)]
    return netloc


def parse_ack(request):
    """(name, ids) of an ack request, ids in the order given without repeats. BadRequest
    (400) with the reason for anything else; Refused(413) for a body over ACK_BODY_MAX."""
    content_type = (_header(request, b"content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise BadRequest("send JSON (Content-Type: application/json): "
                         "{\"name\": ..., \"ids\": [...]}")
    body = request.content.read(C.ACK_BODY_MAX + 1) if request.content is not None else b""
    if len(body) > C.ACK_BODY_MAX:
        raise Refused(413, "request body larger than %d bytes" % C.ACK_BODY_MAX)
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the body is not JSON")
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object {\"name\": ..., \"ids\": [...]}")
    unknown = sorted(set(data) - {"name", "ids"})
    if unknown:
        raise BadRequest("unknown field %s (known: name, ids)" % json.dumps(unknown[0][:40]))
    return parse_name(data.get("name")), parse_ids(data.get("ids"))


def parse_name(name):
    """The acknowledger's name, trimmed: 1 to ACK_NAME_MAX printable characters."""
    if name is None:
        raise BadRequest("name is required: who acknowledges?")
    if not isinstance(name, str):
        raise BadRequest("name must be text")
    name = " ".join(name.split())
    if not name:
        raise BadRequest("name is required: who acknowledges?")
    if len(name) > C.ACK_NAME_MAX:
        raise BadRequest("name is longer than %d characters" % C.ACK_NAME_MAX)
    if not name.isprintable():
        raise BadRequest("name has characters that cannot be shown")
    return name


def parse_ids(ids):
    """1 to ACK_MAX_IDS alarm ids, integers >= 0, repeats dropped."""
    if not isinstance(ids, list) or not ids:
        raise BadRequest("ids must be a list of alarm ids (integers), at least one")
    if len(ids) > C.ACK_MAX_IDS:
        raise BadRequest("at most %d alarm ids at once" % C.ACK_MAX_IDS)
    out, seen = [], set()
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 53:
            raise BadRequest("ids must be integers >= 0, not %s" % json.dumps(value)[:40])
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out
