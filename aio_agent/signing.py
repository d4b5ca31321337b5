"""How the agent signs every n8n webhook call, so a workflow can tell it is really us.

Each tool call is an HTTP `POST {N8N_WEBHOOK_BASE}/{DEPARTMENT_ID}/{tool}` with these headers:

    Content-Type:     application/json
    X-AIO-Auth:       <hex of HMAC-SHA256(key=N8N_WEBHOOK_SECRET,
                                          msg="aio-federation header auth v1")>
                      (n8n "Header Auth" credential, name X-AIO-Auth; see "Header token" below)
    X-AIO-Timestamp:  <unix time in seconds, an integer>
    X-AIO-Request-Id: <uuid4 hex, new for every HTTP attempt, retries included>
    X-Signature:      sha256=<hex of HMAC-SHA256(key=N8N_WEBHOOK_SECRET,
                                                 msg=X-AIO-Timestamp + "." + raw body bytes)>

The body is compact UTF-8 JSON (no spaces, non-ASCII characters not escaped):

    {"department_id":"hr","session_id":"...","tool":"lookup_policy","arguments":{...},
     "requested_at":"2026-12-03T19:20:00.123Z","request_id":"<same as X-AIO-Request-Id>",
     "call_id":"<uuid4 hex, the same for every attempt of one tool call>"}

Retries: a timeout or a dropped connection may hide a request that n8n did receive and act on.
Every retry of one tool call carries the same `call_id` (and a new request id and timestamp), so
a workflow with side effects (book leave, submit an expense) can do them once per `call_id`.

To verify in n8n: Webhook node with Header Auth (rejects a wrong X-AIO-Auth with 403) and the
option "Raw Body" on; then a Code node (needs NODE_FUNCTION_ALLOW_BUILTIN=crypto):

    const crypto = require('crypto');
    const h = $input.first().json.headers;
    const raw = await this.helpers.getBinaryDataBuffer(0, 'data');
    const ts = Number(h['x-aio-timestamp']);
    const mac = crypto.createHmac('sha256', SECRET).update(`${ts}.`).update(raw).digest('hex');
    const want = Buffer.from(`sha256=${mac}`), got = Buffer.from(h['x-signature'] || '');
    const ok = Math.abs(Date.now() / 1000 - ts) <= 300 &&
      want.length === got.length && crypto.timingSafeEqual(want, got);

Answer 401 when `ok` is false. Refuse a timestamp more than 5 minutes away from your clock, and
(optionally) a request id seen before within that window: that stops replays. The agent never
reuses a request id, so retries pass such a check.

Header token: X-AIO-Auth carries a token derived from the secret, never the secret itself. n8n
keeps the headers of failed executions, and a proxy may log them: whoever reads the token gets
past Header Auth but still cannot sign a body, so the Code node refuses them. The credential's
value is made with either of:

    python -m aio_agent.signing header-token      (reads N8N_WEBHOOK_SECRET; prints the token)
    printf %s 'aio-federation header auth v1' | openssl dgst -sha256 -hmac "$N8N_WEBHOOK_SECRET"

(n8n/provision.py and n8n/compose-provision.sh compute it themselves.)

Without N8N_WEBHOOK_SECRET the agent sends neither X-AIO-Auth nor X-Signature (timestamp and request
id still go out). Anyone who can reach the webhook can then call it: acceptable only in tests.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from aio_agent.exitcodes import EX_CONFIG, EX_OK, EX_USAGE

AUTH_HEADER = "X-AIO-Auth"
TIMESTAMP_HEADER = "X-AIO-Timestamp"
REQUEST_ID_HEADER = "X-AIO-Request-Id"
SIGNATURE_HEADER = "X-Signature"
SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE_S = 300
HEADER_TOKEN_CONTEXT = b"aio-federation header auth v1"


def header_token(secret: str) -> str:
    """The X-AIO-Auth value for `secret`: a token derived from it, so the key is never sent."""
    return hmac.new(secret.encode(), HEADER_TOKEN_CONTEXT, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Signature value for `body` sent at `timestamp`: `sha256=<hex>`."""
    mac = hmac.new(secret.encode(), f"{int(timestamp)}.".encode(), hashlib.sha256)
    mac.update(body)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(
    secret: str,
    timestamp: int | str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """True when `signature` signs `body` at `timestamp` and the timestamp is fresh.

    Constant-time comparison; a malformed timestamp or signature is simply False.
    """
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    if not isinstance(signature, str):
        return False
    return hmac.compare_digest(sign(secret, ts, body).encode(), signature.encode())


def signed_headers(
    secret: str | None, body: bytes, *, request_id: str, now: float | None = None
) -> dict[str, str]:
    """Every header of one webhook POST (see the module docstring)."""
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        REQUEST_ID_HEADER: request_id,
    }
    if secret:
        headers[AUTH_HEADER] = header_token(secret)
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return headers


def iso_utc(now: float | None = None) -> str:
    """`2026-12-03T19:20:00.123Z` for `now` (default: the current time)."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def request_body(
    *,
    department_id: str,
    session_id: str,
    tool: str,
    arguments: dict[str, Any],
    request_id: str,
    call_id: str | None = None,
    now: float | None = None,
) -> bytes:
    """The exact bytes the agent signs and sends (compact UTF-8 JSON, documented above).

    `call_id` defaults to `request_id` (a call made in one attempt).
    """
    doc = {
        "department_id": department_id,
        "session_id": session_id,
        "tool": tool,
        "arguments": arguments,
        "requested_at": iso_utc(now),
        "request_id": request_id,
        "call_id": call_id or request_id,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def main(argv: list[str] | None = None) -> int:
    """`python -m aio_agent.signing header-token`: the n8n Header Auth value for a secret."""
    parser = argparse.ArgumentParser(
        prog="python -m aio_agent.signing",
        description="Print the X-AIO-Auth header token for n8n's Header Auth credential.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("header-token", help="the token for the secret in a variable")
    token.add_argument(
        "--secret-env",
        default="N8N_WEBHOOK_SECRET",
        metavar="NAME",
        help="variable holding the webhook secret (default N8N_WEBHOOK_SECRET)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    secret = os.environ.get(args.secret_env, "")
    if not secret:
        sys.stderr.write(f"{args.secret_env} is not set: export the webhook secret first\n")
        return EX_CONFIG
    sys.stdout.write(header_token(secret) + "\n")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
