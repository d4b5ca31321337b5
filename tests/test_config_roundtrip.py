"""Property: any text an operator puts in a variable comes back from config.yaml unchanged.

Quotes, colons, `#`, newlines, leading/trailing spaces, YAML keywords (`yes`, `no`, `null`, `~`,
`on`), numbers-looking strings and any unicode: the YAML emitter must quote what needs quoting.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aio_agent.config import build_config, dump_yaml, load_rendered
from tests.support import valid_env

# Environment values cannot hold NUL; surrogates cannot be encoded as UTF-8 at all.
env_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=60,
)
tricky = st.sampled_from(
    [
        "yes",
        "no",
        "null",
        "~",
        "on",
        "off",
        "true",
        "NO",
        "0x1F",
        "1e3",
        "012",
        "- item",
        "key: value",
        "# comment",
        "a #b",
        "'single'",
        '"double"',
        "  padded  ",
        "line1\nline2\n",
        "\r\n",
        "trailing\n",
        "tab\there",
        "&anchor *alias !tag",
        "{flow: map}",
        "[1, 2]",
        "%directive",
        "---",
        "...",
        "@at `tick` | pipe > fold",
        "é ü 漢字 🙂",
        "\u2028\u2029\x85",
        "\ufeffbom",
    ]
)
value = st.one_of(tricky, env_text)
FIELDS = {
    "DEPARTMENT_NAME": ("department", "name"),
    "PERSONA_INSTRUCTIONS": ("persona", "instructions"),
    "PERSONA_GREETING": ("persona", "greeting"),
    "LLM_MODEL": ("llm", "model"),
    "STT_MODEL": ("stt", "model"),
    "TTS_VOICE": ("tts", "voice"),
    "LLM_API_KEY": ("llm", "api_key"),
    "LIVEKIT_API_SECRET": ("livekit", "api_secret"),
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.fixed_dictionaries({name: value for name in FIELDS}))
@example(values=dict.fromkeys(FIELDS, "yes"))
@example(values=dict.fromkeys(FIELDS, " : # \n 'x' \"y\" ~ "))
def test_rendered_config_reads_back_exactly_what_went_in(values: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        env = valid_env(CONFIG_PATH=str(path), **values)
        document = build_config(env, check_output_dir=False)
        path.write_text(dump_yaml(document), encoding="utf-8")  # write_atomic fsyncs: slow here
        loaded = load_rendered(path)
    assert loaded == document
    for name, (section, key) in FIELDS.items():
        assert loaded[section][key] == values[name], name
