#!/usr/bin/env python3
"""Build the importable n8n workflow files in n8n/workflows/ from the JavaScript in n8n/src/.

Every workflow has the same shape (see n8n/README.md):

    Webhook (POST <department>/<tool>, Header Auth, raw body, answer from a Respond node)
      -> "Verify signature" (Code: n8n/src/verify-signature.js)
      -> "Verified?" (If)
           true  -> "<step name>" (Code: n8n/src/<department>/<tool>.js) -> "Answer" (Respond)
           false -> "Refuse" (Respond 401/400/500 with {"error": ...})

The generated JSON is committed so operators can import it without Python; a test keeps it equal
to what this script writes. Identifiers (workflow, node, webhook and credential ids) are derived
from the department and tool names, so they stay the same on every build and every re-import.
Stdlib only: this file must not import aio_agent.

    python3 n8n/build_workflows.py           write n8n/workflows/<department>/<tool>.json and
                                             n8n/credentials/<department>.json (no secret in it)
    python3 n8n/build_workflows.py --check   exit 1 when a committed file differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
OUT = HERE / "workflows"
CREDENTIALS = HERE / "credentials"

# department -> tool -> the name of its work step in the editor
CATALOG: dict[str, dict[str, str]] = {
    "hr": {"lookup_policy": "Look up policy", "request_time_off": "File time-off request"},
    "accounting": {"lookup_invoice": "Look up invoice", "submit_expense": "File expense claim"},
}
WEBHOOK_AUTH_HEADER = "X-AIO-Auth"


def _uuid(*parts: str) -> str:
    """A stable UUID for the named thing (n8n wants UUIDs for node and webhook ids)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "aio-federation:" + "/".join(parts)))


def workflow_id(department: str, tool: str) -> str:
    """16 characters like n8n's own ids, the same on every build."""
    return "aio" + hashlib.sha256(f"{department}/{tool}".encode()).hexdigest()[:13]


def credential_id(department: str) -> str:
    return "aio" + hashlib.sha256(f"credential/{department}".encode()).hexdigest()[:13]


def credential_name(department: str) -> str:
    return f"AIO {department} webhook auth"


def _code(name: str, js: str, position: list[int], department: str, tool: str) -> dict[str, Any]:
    return {
        "id": _uuid(department, tool, name),
        "name": name,
        "type": "n8n-nodes-base.code",
        "typeVersion": 2,
        "position": position,
        "parameters": {"mode": "runOnceForAllItems", "language": "javaScript", "jsCode": js},
    }


def _respond(name: str, body_expression: str, position: list[int], dept: str, tool: str) -> dict:
    return {
        "id": _uuid(dept, tool, name),
        "name": name,
        "type": "n8n-nodes-base.respondToWebhook",
        "typeVersion": 1.5,
        "position": position,
        "parameters": {
            "respondWith": "json",
            "responseBody": body_expression,
            "options": {"responseCode": "={{ $json.statusCode }}"},
        },
    }


def build(department: str, tool: str, step_name: str) -> dict[str, Any]:
    """The n8n workflow document for one tool."""
    header = f"const DEPARTMENT = {json.dumps(department)};\nconst TOOL = {json.dumps(tool)};\n"
    verify_js = header + (SRC / "verify-signature.js").read_text(encoding="utf-8")
    step_js = (SRC / department / f"{tool}.js").read_text(encoding="utf-8")
    webhook = {
        "id": _uuid(department, tool, "Webhook"),
        "name": "Webhook",
        "type": "n8n-nodes-base.webhook",
        "typeVersion": 2.1,
        "position": [0, 0],
        "webhookId": _uuid(department, tool, "webhookId"),
        "parameters": {
            "httpMethod": "POST",
            "path": f"{department}/{tool}",
            "authentication": "headerAuth",
            "responseMode": "responseNode",
            "options": {"rawBody": True},
        },
        "credentials": {
            "httpHeaderAuth": {
                "id": credential_id(department),
                "name": credential_name(department),
            }
        },
    }
    verified = {
        "id": _uuid(department, tool, "Verified?"),
        "name": "Verified?",
        "type": "n8n-nodes-base.if",
        "typeVersion": 2.2,
        "position": [440, 0],
        "parameters": {
            "conditions": {
                "options": {"caseSensitive": True, "leftValue": "", "typeValidation": "strict"},
                "conditions": [
                    {
                        "id": _uuid(department, tool, "Verified?", "condition"),
                        "leftValue": "={{ $json.verified }}",
                        "rightValue": "",
                        "operator": {"type": "boolean", "operation": "true", "singleValue": True},
                    }
                ],
                "combinator": "and",
            },
            "options": {},
        },
    }
    nodes = [
        webhook,
        _code("Verify signature", verify_js, [220, 0], department, tool),
        verified,
        _code(step_name, step_js, [660, -100], department, tool),
        _respond("Answer", "={{ JSON.stringify($json.body) }}", [880, -100], department, tool),
        _respond(
            "Refuse", "={{ JSON.stringify({ error: $json.error }) }}", [660, 100], department, tool
        ),
    ]

    def main(*targets: str) -> dict[str, Any]:
        return {"main": [[{"node": t, "type": "main", "index": 0} for t in targets]]}

    connections = {
        "Webhook": main("Verify signature"),
        "Verify signature": main("Verified?"),
        "Verified?": {
            "main": [
                [{"node": step_name, "type": "main", "index": 0}],
                [{"node": "Refuse", "type": "main", "index": 0}],
            ]
        },
        step_name: main("Answer"),
    }
    return {
        "id": workflow_id(department, tool),
        "name": f"AIO {department} {tool}",
        "active": False,
        "nodes": nodes,
        "connections": connections,
        "settings": {"executionOrder": "v1", "saveDataSuccessExecution": "none"},
        "staticData": None,
        "pinData": {},
        "tags": [],
        "meta": {"templateCredsSetupCompleted": True, "aioFederation": {"department": department}},
    }


def credential_template(department: str) -> dict[str, Any]:
    """The Header Auth credential the department's webhooks use; provision.py fills `value`."""
    return {
        "id": credential_id(department),
        "name": credential_name(department),
        "type": "httpHeaderAuth",
        "data": {"name": WEBHOOK_AUTH_HEADER, "value": ""},
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def expected_files() -> dict[Path, str]:
    files = {
        OUT / department / f"{tool}.json": render(build(department, tool, step))
        for department, tools in CATALOG.items()
        for tool, step in tools.items()
    }
    for department in CATALOG:
        files[CREDENTIALS / f"{department}.json"] = render(credential_template(department))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".json.partial")
            partial.write_text(text, encoding="utf-8")
            partial.replace(path)
    for path in stale:
        verb = "differs from its source" if args.check else "written"
        print(f"{path.relative_to(HERE.parent)}: {verb}", file=sys.stderr)
    if args.check and stale:
        print("run: python3 n8n/build_workflows.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
