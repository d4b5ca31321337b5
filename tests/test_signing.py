"""The documented webhook signing scheme: what an n8n workflow can check, byte for byte."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from aio_agent.signing import (
    header_token,
    iso_utc,
    request_body,
    sign,
    signed_headers,
    verify,
)
from tests.support import PYTHON, process_env

SECRET = "s3cret"
NOW = 1_700_000_000


def test_signature_matches_openssl_over_timestamp_dot_raw_body() -> None:
    # printf '%s' '1700000000.{"q":"Ürlaub"}' | openssl dgst -sha256 -hmac s3cret
    body = '{"q":"Ürlaub"}'.encode()
    assert sign(SECRET, NOW, body) == (
        "sha256=22303f3a37c405b5644af544405b0bda02046f9f215bd493a345efb61ebb3ac3"
    )


def test_verify_accepts_a_fresh_signature_and_a_string_timestamp() -> None:
    body = b'{"a":1}'
    signature = sign(SECRET, NOW, body)
    assert verify(SECRET, NOW, body, signature, now=NOW + 10)
    assert verify(SECRET, str(NOW), body, signature, now=NOW - 10)


def test_verify_refuses_tampered_body_wrong_secret_and_wrong_timestamp() -> None:
    body = b'{"a":1}'
    signature = sign(SECRET, NOW, body)
    assert not verify(SECRET, NOW, b'{"a":2}', signature, now=NOW)
    assert not verify("other", NOW, body, signature, now=NOW)
    assert not verify(SECRET, NOW + 1, body, signature, now=NOW)


def test_verify_refuses_stale_or_future_timestamps_beyond_tolerance() -> None:
    body = b"{}"
    assert not verify(SECRET, NOW, body, sign(SECRET, NOW, body), now=NOW + 301)
    assert not verify(SECRET, NOW, body, sign(SECRET, NOW, body), now=NOW - 301)
    assert verify(SECRET, NOW, body, sign(SECRET, NOW, body), now=NOW + 60, tolerance_s=60)


def test_verify_is_false_for_malformed_input_instead_of_raising() -> None:
    body = b"{}"
    assert not verify(SECRET, "yesterday", body, sign(SECRET, NOW, body), now=NOW)
    assert not verify(SECRET, NOW, body, "", now=NOW)
    assert not verify(SECRET, NOW, body, "sha256=zz", now=NOW)
    assert not verify(SECRET, NOW, body, "sha256=" + "é" * 64, now=NOW)


def test_signed_headers_carry_auth_timestamp_request_id_and_signature() -> None:
    body = b'{"x":1}'
    headers = signed_headers(SECRET, body, request_id="abc", now=NOW + 0.9)
    assert headers == {
        "Content-Type": "application/json",
        "X-AIO-Timestamp": str(NOW),
        "X-AIO-Request-Id": "abc",
        "X-AIO-Auth": header_token(SECRET),
        "X-Signature": sign(SECRET, NOW, body),
    }
    assert all(SECRET not in value for value in headers.values())  # the key itself never travels


def test_header_token_matches_openssl() -> None:
    # printf %s 'aio-federation header auth v1' | openssl dgst -sha256 -hmac s3cret
    assert header_token(SECRET) == (
        "962a76fd74481f326aa579c6c357225629c43da6f9e4f19e520f5ff72564d158"
    )


def test_header_token_command_prints_the_token_of_the_secret_in_the_environment() -> None:
    def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "aio_agent.signing", "header-token"],
            env=process_env(env),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    made = run({"N8N_WEBHOOK_SECRET": SECRET})
    assert (made.returncode, made.stdout) == (0, header_token(SECRET) + "\n")
    missing = run({})
    assert missing.returncode == 78
    assert "N8N_WEBHOOK_SECRET is not set" in missing.stderr


def test_without_a_secret_no_auth_or_signature_headers_are_sent() -> None:
    headers = signed_headers(None, b"{}", request_id="abc", now=NOW)
    assert "X-AIO-Auth" not in headers
    assert "X-Signature" not in headers
    assert headers["X-AIO-Request-Id"] == "abc"


def test_request_body_is_compact_utf8_json_with_the_documented_fields() -> None:
    fields: dict[str, Any] = {
        "department_id": "hr",
        "session_id": "s1",
        "tool": "lookup_policy",
        "arguments": {"topic": "Ürlaub"},
        "request_id": "rid",
        "now": NOW + 0.123,
    }
    body = request_body(**fields)
    assert b" " not in body
    assert "Ürlaub".encode() in body
    assert json.loads(body) == {
        "department_id": "hr",
        "session_id": "s1",
        "tool": "lookup_policy",
        "arguments": {"topic": "Ürlaub"},
        "requested_at": "2023-11-14T22:13:20.123Z",
        "request_id": "rid",
        "call_id": "rid",
    }
    assert json.loads(request_body(**{**fields, "call_id": "cid"}))["call_id"] == "cid"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
