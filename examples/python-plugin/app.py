"""py-auth: a Sluice plugin in Python (bearer tokens).

Requests need `Authorization: Bearer <token>` with a token from the config; others get
401 with a JSON body. A known token's user goes upstream in `x-auth-user`, and the
response says who checked it in `x-auth-checked-by` and how many requests that user has
made on this route in the current minute in `x-user-requests` (a counter in the host's
state service, shared by every instance and, with Redis, every proxy).

With `require_json = ["field", ...]` in the config, a POST, PUT or PATCH body must be a
JSON object with those fields, or the request is answered 422 before it goes upstream
(the host buffers the body for `on_request_body`, up to 64 KiB here: larger is 413).
Other requests skip the body hook, so their bodies stream past unbuffered.

Config: { tokens = { "t-1" = "alice" }, realm = "api", require_json = ["order"] }

Lifecycle, as the proxy runs it:
- `init` runs once per route config at load; the proxy snapshots the interpreter after
  it, so every request starts from the parsed config without running `init` again.
- componentize-py creates a new `WitWorld` object for every call, so state kept on
  `self` is lost between calls: keep config in module globals (set in `init`).
- Per-request data from `on_request` to `on_response` goes in a module global that
  `on_request` always resets (in reuse mode the same interpreter serves the next request).
- Anything that must outlive a request goes through the host's state service
  (`wit_world.imports.state`); its calls raise `Err(StateError_...)` when they fail.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, state
from wit_world.imports.types import (
    Declaration,
    Forward,
    Hooks,
    LogLevel,
    Oversize,
    RequestAction_Continue,
    RequestAction_Respond,
    RequestBodyAction_Continue,
    RequestBodyAction_Respond,
    Response,
    ResponseAction_Continue,
    ResponseBodyAction_Continue,
)

# Set once by init (frozen into the snapshot).
TOKENS: dict = {}
REALM = "api"
REQUIRE_JSON: list = []
# The largest body on_request_body reads.
BODY_MAX = 64 * 1024

# The request in progress: who it authenticated as, and their count this minute.
request_user = None
request_count = None

# Counters are fixed one-minute windows: the TTL starts when a window's first request
# creates the key.
WINDOW_MS = 60_000


def json_error(status, message):
    body = json.dumps({"error": message}).encode()
    return Response(status, [("content-type", b"application/json")], body)


def header(headers, name):
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> Hooks:
        global TOKENS, REALM, REQUIRE_JSON
        try:
            parsed = json.loads(config or "{}")
        except ValueError as e:
            raise Err(f"invalid config: {e}")
        unknown = set(parsed) - {"tokens", "realm", "require_json"}
        if unknown:
            raise Err(f"invalid config: unknown key(s) {sorted(unknown)}")
        tokens = parsed.get("tokens", {})
        if not tokens or not all(isinstance(v, str) for v in tokens.values()):
            raise Err("tokens: needs at least one token = user entry")
        TOKENS = dict(tokens)
        REALM = str(parsed.get("realm", "api"))
        REQUIRE_JSON = parsed.get("require_json", [])
        if not isinstance(REQUIRE_JSON, list) or not all(isinstance(f, str) for f in REQUIRE_JSON):
            raise Err("require_json: a list of field names")
        hooks = Hooks.ON_REQUEST | Hooks.ON_RESPONSE
        if REQUIRE_JSON:
            hooks |= Hooks.ON_REQUEST_BODY
        return Declaration(hooks, BODY_MAX, 0, Oversize.PASS_UNREAD)

    def on_request(self, client, request):
        global request_user, request_count
        request_user = None
        request_count = None
        if request.path.endswith("/boom"):
            # Lets the tests see a Python traceback in the proxy log.
            raise RuntimeError("py-auth: boom requested")
        auth = header(request.headers, "authorization") or ""
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        user = TOKENS.get(token) if token else None
        if user is None:
            host.log(LogLevel.DEBUG, f"rejected {client.ip}")
            body = json.dumps({"error": "unauthorized"}).encode()
            headers = [
                ("content-type", b"application/json"),
                ("www-authenticate", f'Bearer realm="{REALM}"'.encode()),
            ]
            return RequestAction_Respond(Response(401, headers, body))
        request_user = user
        try:
            request_count = state.increment(f"{client.route}|requests:{user}", 1, WINDOW_MS)
        except Err as e:
            # Counting is informational here: an outage must not lock users out.
            host.log(LogLevel.DEBUG, f"request counter unavailable: {e.value}")
        headers = [(k, v) for k, v in request.headers if k not in ("authorization", "x-auth-user")]
        headers.append(("x-auth-user", user.encode()))
        request.headers = headers
        # Only bodies that must be JSON are read; the rest stream past unbuffered.
        skip_body = request.method not in ("POST", "PUT", "PATCH")
        return RequestAction_Continue(Forward(request, None, None, skip_body))

    def on_request_body(self, request, body):
        try:
            doc = json.loads(body)
        except ValueError:
            return RequestBodyAction_Respond(json_error(422, "the body is not JSON"))
        if not isinstance(doc, dict):
            return RequestBodyAction_Respond(json_error(422, "the body is not a JSON object"))
        missing = [field for field in REQUIRE_JSON if field not in doc]
        if missing:
            return RequestBodyAction_Respond(json_error(422, f"missing {', '.join(missing)}"))
        return RequestBodyAction_Continue()

    def on_response(self, response):
        response.headers.append(("x-auth-checked-by", f"python:{request_user}".encode()))
        count = "unknown" if request_count is None else str(request_count)
        response.headers.append(("x-user-requests", count.encode()))
        return ResponseAction_Continue(response)

    def on_response_body(self, response, body):
        # Not declared in init, so never called.
        return ResponseBodyAction_Continue()
