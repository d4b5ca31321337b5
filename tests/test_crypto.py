"""Encryption at rest: envelopes that only the right key and the right department can open."""

from __future__ import annotations

import base64
import json
import os

import pytest

from aio_agent.crypto import DataCipher, DecryptionError, is_envelope, key_id, main

KEY = os.urandom(32)
OLD = os.urandom(32)
VALUE = {"employee": "Jürgen Müller", "salary": 71000}


def seal(cipher: DataCipher, value=VALUE):
    return cipher.seal(value, table="tool_calls", column="arguments")


def test_sealed_value_is_an_envelope_that_hides_the_plaintext() -> None:
    sealed = seal(DataCipher("hr", KEY))
    assert is_envelope(sealed)
    assert sealed["enc"] == "aes-256-gcm" and sealed["kid"] == key_id(KEY)
    assert len(sealed["kid"]) == 8
    text = json.dumps(sealed)
    assert "Müller" not in text and "71000" not in text and "salary" not in text
    assert len(base64.b64decode(sealed["nonce"])) == 12


def test_the_same_value_seals_differently_each_time() -> None:
    cipher = DataCipher("hr", KEY)
    assert seal(cipher)["ct"] != seal(cipher)["ct"]


def test_open_returns_the_value_with_the_active_key() -> None:
    cipher = DataCipher("hr", KEY)
    assert cipher.open(seal(cipher), table="tool_calls", column="arguments") == VALUE


def test_an_old_key_still_opens_rows_sealed_before_rotation() -> None:
    sealed_before = seal(DataCipher("hr", OLD))
    rotated = DataCipher("hr", KEY, old=(OLD,))
    assert rotated.open(sealed_before, table="tool_calls", column="arguments") == VALUE
    assert rotated.needs_rotation(sealed_before)
    assert not rotated.needs_rotation(seal(rotated))


def test_without_the_key_an_envelope_cannot_be_opened_and_the_error_names_only_the_kid() -> None:
    sealed = seal(DataCipher("hr", KEY))
    for cipher in (DataCipher("hr"), DataCipher("hr", OLD)):
        with pytest.raises(DecryptionError) as info:
            cipher.open(sealed, table="tool_calls", column="arguments")
        assert key_id(KEY) in str(info.value)
        assert base64.b64encode(KEY).decode() not in str(info.value)


def test_a_ciphertext_moved_to_another_department_or_column_does_not_decrypt() -> None:
    sealed = seal(DataCipher("hr", KEY))
    with pytest.raises(DecryptionError):
        DataCipher("accounting", KEY).open(sealed, table="tool_calls", column="arguments")
    with pytest.raises(DecryptionError):
        DataCipher("hr", KEY).open(sealed, table="session_context", column="context")


def test_a_tampered_ciphertext_is_refused() -> None:
    sealed = seal(DataCipher("hr", KEY))
    ct = bytearray(base64.b64decode(sealed["ct"]))
    ct[0] ^= 1
    with pytest.raises(DecryptionError):
        DataCipher("hr", KEY).open(
            {**sealed, "ct": base64.b64encode(bytes(ct)).decode()},
            table="tool_calls",
            column="arguments",
        )


def test_without_a_key_values_stay_plain_json_and_plain_rows_pass_through() -> None:
    plain = DataCipher("hr")
    assert seal(plain) == VALUE
    assert DataCipher("hr", KEY).open(VALUE, table="tool_calls", column="arguments") == VALUE


def test_from_config_reads_the_rendered_security_section() -> None:
    config = {
        "department": {"id": "hr"},
        "security": {
            "data_encryption_key": base64.b64encode(KEY).decode(),
            "data_encryption_old_keys": [base64.b64encode(OLD).decode()],
        },
    }
    cipher = DataCipher.from_config(config)
    assert cipher.active_kid == key_id(KEY)
    assert cipher.open(seal(DataCipher("hr", OLD)), table="tool_calls", column="arguments") == VALUE


def test_keygen_prints_a_usable_key(capsys) -> None:
    assert main(["keygen"]) == 0
    printed = capsys.readouterr().out.strip()
    assert len(base64.b64decode(printed)) == 32
