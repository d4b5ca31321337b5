"""Encryption at rest of sensitive JSON (tool_calls.arguments, session_context.context).

When DATA_ENCRYPTION_KEY (base64 of 32 random bytes: `openssl rand -base64 32`) is set, the agent
stores these columns as an AES-256-GCM envelope instead of the plain JSON:

    {"enc": "aes-256-gcm", "kid": "<first 8 hex of sha256(raw key)>",
     "nonce": "<base64 of 12 random bytes>", "ct": "<base64 of ciphertext + 16-byte tag>"}

The plaintext is the compact UTF-8 JSON of the value. The associated data is
`aio:v1:<department_id>:<table>.<column>`, so a ciphertext copied into another department's schema
or into another column does not decrypt. Without a key the columns hold plain JSON, and rows
written before a key was set stay readable (plain values pass through).

Reading tries the key whose kid the envelope names: the active key or one of
DATA_ENCRYPTION_OLD_KEYS. An envelope whose key is not configured is an error naming only the kid.

Key rotation:
 1. make a new key: `python -m aio_agent.crypto keygen`;
 2. set it as DATA_ENCRYPTION_KEY and put the previous key into DATA_ENCRYPTION_OLD_KEYS
    (comma-separated, any number);
 3. restart the agent: new rows use the new key, old rows still decrypt with the old one;
 4. optionally re-encrypt the old rows with the new key and then drop the old key:
    `python -m aio_agent.crypto rotate` (reads $CONFIG_PATH; also encrypts rows stored in plain
    JSON). Only remove a key from DATA_ENCRYPTION_OLD_KEYS once `rotate` reported no rows left.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aio_agent.config import EX_CONFIG, EX_OK, EX_SOFTWARE, decode_key
from aio_agent.exitcodes import EX_UNAVAILABLE

ALGORITHM = "aes-256-gcm"
ENVELOPE_KEYS = frozenset({"enc", "kid", "nonce", "ct"})
NONCE_BYTES = 12
# The (table, column) pairs that hold sensitive JSON, with their row key.
SENSITIVE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("tool_calls", "arguments", "id"),
    ("session_context", "context", "caller_id"),
)


class DecryptionError(ValueError):
    """A stored envelope that cannot be opened (unknown key id, wrong department, tampered)."""


def key_id(raw_key: bytes) -> str:
    """First 8 hex characters of sha256(key): names a key without revealing it."""
    return hashlib.sha256(raw_key).hexdigest()[:8]


def is_envelope(value: Any) -> bool:
    """True when `value` is an encrypted envelope (as opposed to plain JSON)."""
    return isinstance(value, Mapping) and set(value) == ENVELOPE_KEYS and value["enc"] == ALGORITHM


def _aad(department_id: str, table: str, column: str) -> bytes:
    return f"aio:v1:{department_id}:{table}.{column}".encode()


@dataclass(frozen=True)
class DataCipher:
    """Seals and opens sensitive JSON for one department. `active` is None: no encryption."""

    department_id: str
    active: bytes | None = None
    old: tuple[bytes, ...] = ()
    _keys: dict[str, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = {key_id(k): k for k in self.old}
        if self.active is not None:
            keys[key_id(self.active)] = self.active
        object.__setattr__(self, "_keys", keys)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DataCipher:
        """The cipher the rendered config describes (security.* and department.id)."""
        security = config.get("security") or {}
        active = security.get("data_encryption_key")
        old = security.get("data_encryption_old_keys") or []
        return cls(
            department_id=config["department"]["id"],
            active=decode_key(active) if active else None,
            old=tuple(decode_key(k) for k in old),
        )

    @property
    def enabled(self) -> bool:
        return self.active is not None

    @property
    def active_kid(self) -> str | None:
        return key_id(self.active) if self.active is not None else None

    def seal(self, value: Any, *, table: str, column: str) -> Any:
        """The value to store: an envelope when a key is active, else `value` unchanged."""
        if self.active is None:
            return value
        nonce = secrets.token_bytes(NONCE_BYTES)
        plain = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        ct = AESGCM(self.active).encrypt(nonce, plain, _aad(self.department_id, table, column))
        return {
            "enc": ALGORITHM,
            "kid": key_id(self.active),
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(ct).decode(),
        }

    def open(self, stored: Any, *, table: str, column: str) -> Any:
        """The value behind what was stored: plain JSON passes through, envelopes are decrypted."""
        if not is_envelope(stored):
            return stored
        kid = str(stored["kid"])
        key = self._keys.get(kid)
        if key is None:
            raise DecryptionError(
                f"{table}.{column} is encrypted with key id {kid}, which is neither "
                "DATA_ENCRYPTION_KEY nor in DATA_ENCRYPTION_OLD_KEYS"
            )
        try:
            nonce = base64.b64decode(stored["nonce"], validate=True)
            ct = base64.b64decode(stored["ct"], validate=True)
            plain = AESGCM(key).decrypt(nonce, ct, _aad(self.department_id, table, column))
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError(
                f"{table}.{column}: envelope with key id {kid} does not decrypt for department "
                f"{self.department_id} (tampered, or copied from another department or column)"
            ) from exc
        return json.loads(plain)

    def needs_rotation(self, stored: Any) -> bool:
        """True when `stored` is not sealed with the active key (plain, or an older key)."""
        if self.active is None:
            return False
        return not is_envelope(stored) or stored["kid"] != self.active_kid


# --- CLI ----------------------------------------------------------------------------------------
async def rotate(config: Mapping[str, Any], *, batch: int = 500) -> dict[str, int]:
    """Re-seal every sensitive value not sealed with the active key; returns rows changed per table.

    Runs as the tenant role (database.url) with the tenant settings, one batch per transaction.
    """
    import asyncpg  # noqa: PLC0415 - only this command needs a database driver here

    from aio_agent.naming import tenant_server_settings  # noqa: PLC0415

    cipher = DataCipher.from_config(config)
    if not cipher.enabled:
        raise ValueError("DATA_ENCRYPTION_KEY is not set: nothing to rotate to")
    department = config["department"]["id"]
    conn = await asyncpg.connect(
        config["database"]["url"], server_settings=tenant_server_settings(department), timeout=10
    )
    changed: dict[str, int] = {}
    try:
        for table, column, pk in SENSITIVE_COLUMNS:
            changed[table] = 0
            last: Any = None
            while True:
                rows = await conn.fetch(
                    f"SELECT {pk} AS k, {column}::text AS v FROM {table} "  # noqa: S608 - fixed names
                    f"WHERE $1::text IS NULL OR {pk}::text > $1::text ORDER BY {pk}::text LIMIT $2",
                    None if last is None else str(last),
                    batch,
                )
                if not rows:
                    break
                last = rows[-1]["k"]
                updates = []
                for row in rows:
                    stored = json.loads(row["v"])
                    if cipher.needs_rotation(stored):
                        plain = cipher.open(stored, table=table, column=column)
                        sealed = cipher.seal(plain, table=table, column=column)
                        updates.append((json.dumps(sealed), row["k"]))
                if updates:
                    async with conn.transaction():
                        await conn.executemany(
                            f"UPDATE {table} SET {column} = $1::jsonb WHERE {pk} = $2",  # noqa: S608
                            updates,
                        )
                    changed[table] += len(updates)
    finally:
        await conn.close()
    return changed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aio_agent.crypto",
        description="Encryption keys of sensitive columns (see the module docstring for rotation).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("keygen", help="print a new DATA_ENCRYPTION_KEY (base64 of 32 random bytes)")
    rot = sub.add_parser(
        "rotate", help="re-encrypt rows not sealed with DATA_ENCRYPTION_KEY (reads $CONFIG_PATH)"
    )
    rot.add_argument("--config", default=None, help="rendered config (default: $CONFIG_PATH)")
    rot.add_argument("--batch", type=int, default=500, help="rows per transaction")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if args.command == "keygen":
        print(base64.b64encode(secrets.token_bytes(32)).decode())
        return EX_OK
    from aio_agent.config import DEFAULT_CONFIG_PATH, load_rendered  # noqa: PLC0415

    path = args.config or os.environ.get("CONFIG_PATH") or DEFAULT_CONFIG_PATH
    try:
        config = load_rendered(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: cannot read the rendered config {path}: {exc}", file=sys.stderr)
        return EX_CONFIG
    if not (config.get("database") or {}).get("url"):
        print("error: POSTGRES_URL is not set: there are no stored rows to rotate", file=sys.stderr)
        return EX_CONFIG
    try:
        changed = asyncio.run(rotate(config, batch=args.batch))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (OSError, TimeoutError) as exc:
        print(f"error: database unreachable: {type(exc).__name__}", file=sys.stderr)
        return EX_UNAVAILABLE
    except Exception as exc:  # noqa: BLE001 - report any driver error as an internal error
        print(f"error: rotation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_SOFTWARE
    kid = DataCipher.from_config(config).active_kid
    for table, count in changed.items():
        print(f"{table}: {count} row(s) re-encrypted with key id {kid}")
    return EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
