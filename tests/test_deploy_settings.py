"""The grace periods we ship let a stopping agent finish: drain, close calls, flush the queue.

A platform that kills the container (SIGKILL) before the worker has flushed its write queue loses
the last `tool_calls` rows, so every shipped stop window must cover DRAIN_TIMEOUT plus the time
the worker may spend after the drain: closing the calls and flushing the database queue.
"""

from __future__ import annotations

import json
import re

import yaml

from aio_agent.config import Settings
from aio_agent.worker import STORE_FLUSH_TIMEOUT_S
from tests.support import REPO

CALL_CLOSE_S = 10  # what docker-compose.test.yml's comment and README allow for closing calls
AFTER_DRAIN_S = CALL_CLOSE_S + STORE_FLUSH_TIMEOUT_S
DEFAULT_DRAIN_S = Settings.model_fields["drain_timeout"].default


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, f"stop_grace_period {text!r} is not in seconds"
    return float(match.group(1))


def test_railway_waits_for_drain_and_flush_and_probes_readiness() -> None:
    deploy = json.loads((REPO / "railway.json").read_text())["deploy"]
    assert deploy["healthcheckPath"] == "/readyz"
    assert isinstance(deploy["drainingSeconds"], int)
    assert deploy["drainingSeconds"] >= DEFAULT_DRAIN_S + AFTER_DRAIN_S
    assert deploy["restartPolicyType"] == "ON_FAILURE"


def test_compose_grace_period_covers_each_agents_drain_and_flush() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.test.yml").read_text())
    for name in ("hr", "accounting"):
        service = compose["services"][name]
        drain = float(service["environment"].get("DRAIN_TIMEOUT", DEFAULT_DRAIN_S))
        assert _seconds(service["stop_grace_period"]) >= drain + AFTER_DRAIN_S, name


def test_kubernetes_snippet_grace_period_covers_the_default_drain_and_flush() -> None:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"terminationGracePeriodSeconds: (\d+)", readme)
    assert match, "README's Kubernetes snippet lost terminationGracePeriodSeconds"
    assert int(match.group(1)) >= DEFAULT_DRAIN_S + AFTER_DRAIN_S
