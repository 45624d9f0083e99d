// js-auth: a Sluice plugin in JavaScript (bearer tokens), the same behaviour as the
// Python example: `Authorization: Bearer <token>` with a token from the config, or 401
// with a JSON body; the token's user goes upstream in `x-auth-user`, and the response
// says who checked it in `x-auth-checked-by` and how many requests that user has made on
// this route in the current minute in `x-user-requests` (a counter in the host's state
// service, shared by every instance and, with Redis, every proxy).
//
// With `require_json = ["field", ...]` in the config, a POST, PUT or PATCH body must be
// a JSON object with those fields, or the request is answered 422 before it goes
// upstream (the host buffers the body for onRequestBody, up to 64 KiB here: larger is
// 413). Other requests skip the body hook, so their bodies stream past unbuffered.
//
// Config: { tokens = { "t-1" = "alice" }, realm = "api", require_json = ["order"] }
//
// `init` runs once per route config at load and the proxy snapshots the engine after
// it: module-level state set in `init` is what every request starts from. Per-request
// data (here the user, for onResponse) lives in a variable onRequest always resets,
// since in reuse mode the same instance serves the next request. What must outlive a
// request goes through the state service; its calls throw when they fail (the error's
// `payload` is the WIT state-error, e.g. `{ tag: 'unavailable', val: '...' }`).

import { log } from 'sluice:plugin/host@0.4.0';
import { increment } from 'sluice:plugin/state@0.4.0';

// Counters are fixed one-minute windows: the TTL starts when a window's first request
// creates the key.
const WINDOW_MS = 60_000n;

let tokens = new Map();
let realm = 'api';
let requireJson = [];
// The largest body onRequestBody reads.
const BODY_MAX = 64n * 1024n;
let requestUser = null;
let requestCount = null;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function jsonError(status, message) {
  return {
    status,
    headers: [['content-type', encoder.encode('application/json')]],
    body: encoder.encode(JSON.stringify({ error: message })),
  };
}

function header(headers, name) {
  for (const [key, value] of headers) {
    if (key === name) return decoder.decode(value);
  }
  return null;
}

export function init(config) {
  let parsed;
  try {
    parsed = JSON.parse(config || '{}');
  } catch (e) {
    throw `invalid config: ${e.message}`;
  }
  const known = ['tokens', 'realm', 'require_json'];
  const unknown = Object.keys(parsed).filter((k) => !known.includes(k));
  if (unknown.length > 0) throw `invalid config: unknown key(s) ${unknown.join(', ')}`;
  const entries = Object.entries(parsed.tokens ?? {});
  if (entries.length === 0 || !entries.every(([, user]) => typeof user === 'string')) {
    throw 'tokens: needs at least one token = user entry';
  }
  tokens = new Map(entries);
  realm = String(parsed.realm ?? 'api');
  requireJson = parsed.require_json ?? [];
  if (!Array.isArray(requireJson) || !requireJson.every((f) => typeof f === 'string')) {
    throw 'require_json: a list of field names';
  }
  return {
    hooks: { onRequest: true, onResponse: true, onRequestBody: requireJson.length > 0 },
    requestBodyMax: BODY_MAX,
    responseBodyMax: 0n,
    responseOversize: 'pass-unread',
  };
}

export function onRequest(client, request) {
  requestUser = null;
  requestCount = null;
  if (request.path.endsWith('/boom')) {
    // Lets the tests see a JavaScript error in the proxy log.
    throw new Error('js-auth: boom requested');
  }
  const auth = header(request.headers, 'authorization') ?? '';
  const token = auth.startsWith('Bearer ') ? auth.slice('Bearer '.length) : null;
  const user = token !== null ? tokens.get(token) : undefined;
  if (user === undefined) {
    log('debug', `rejected ${client.ip}`);
    return {
      tag: 'respond',
      val: {
        status: 401,
        headers: [
          ['content-type', encoder.encode('application/json')],
          ['www-authenticate', encoder.encode(`Bearer realm="${realm}"`)],
        ],
        body: encoder.encode(JSON.stringify({ error: 'unauthorized' })),
      },
    };
  }
  requestUser = user;
  try {
    requestCount = increment(`${client.route}|requests:${user}`, 1n, WINDOW_MS);
  } catch (e) {
    // Counting is informational here: an outage must not lock users out.
    log('debug', `request counter unavailable: ${JSON.stringify(e.payload ?? String(e))}`);
  }
  const headers = request.headers.filter(([k]) => k !== 'authorization' && k !== 'x-auth-user');
  headers.push(['x-auth-user', encoder.encode(user)]);
  // Only bodies that must be JSON are read; the rest stream past unbuffered.
  const skipRequestBody = !['POST', 'PUT', 'PATCH'].includes(request.method);
  return {
    tag: 'continue',
    val: { request: { ...request, headers }, upstream: undefined, hashKey: undefined, skipRequestBody },
  };
}

export function onRequestBody(request, body) {
  let doc;
  try {
    doc = JSON.parse(decoder.decode(body));
  } catch {
    return { tag: 'respond', val: jsonError(422, 'the body is not JSON') };
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    return { tag: 'respond', val: jsonError(422, 'the body is not a JSON object') };
  }
  const missing = requireJson.filter((field) => !(field in doc));
  if (missing.length > 0) {
    return { tag: 'respond', val: jsonError(422, `missing ${missing.join(', ')}`) };
  }
  return { tag: 'continue' };
}

export function onResponse(response) {
  const count = requestCount === null ? 'unknown' : String(requestCount);
  const headers = [
    ...response.headers,
    ['x-auth-checked-by', encoder.encode(`javascript:${requestUser}`)],
    ['x-user-requests', encoder.encode(count)],
  ];
  return { tag: 'continue', val: { ...response, headers } };
}

// Not declared in init, so never called.
export function onResponseBody(response, body) {
  return { tag: 'continue' };
}
