#!/usr/bin/env python3
"""Provision a department's AIO tool workflows into an n8n instance with n8n's own CLI.

    python3 n8n/provision.py hr [accounting ...] [--n8n "n8n"] [--dry-run]

For each department it makes sure that n8n holds
  - the Header Auth credential "AIO <department> webhook auth" (header X-AIO-Auth, value = the
    header token of the department's webhook secret, HMAC-SHA256(secret, "aio-federation header
    auth v1") in hex, as aio_agent/signing.py sends it: the secret itself never travels), and
  - the workflows in n8n/workflows/<department>/, published (active),
and changes nothing that is already so: ids are fixed in the files, the current state is read
with `n8n export:*` and only what differs is imported or published. A second run reports
"unchanged" and writes nothing.

The secret comes from the environment, never from a file in this repository:
AIO_WEBHOOK_SECRET_<DEPARTMENT> (e.g. AIO_WEBHOOK_SECRET_HR) or else AIO_WEBHOOK_SECRET. The
workflows' signature check reads the same variable inside n8n, so n8n's environment must hold it
too (and N8N_BLOCK_ENV_ACCESS_IN_NODE=false, NODE_FUNCTION_ALLOW_BUILTIN=crypto). The agent's
N8N_WEBHOOK_SECRET is the same value.

Run it where the `n8n` command works with the instance's settings (same N8N_USER_FOLDER or
database variables and N8N_ENCRYPTION_KEY), preferably while n8n is stopped: n8n reads published
workflows when it starts, so restart a running n8n afterwards when anything changed.

Exit codes: 0 done (or nothing to do), 64 usage, 69 the n8n command failed, 78 invalid
configuration (every problem listed at once; secret values are never printed).
Stdlib only: this file must not import aio_agent.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKFLOWS = HERE / "workflows"
CREDENTIALS = HERE / "credentials"
DEPARTMENT_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,30}$")
MIN_SECRET_LENGTH = 16
HEADER_TOKEN_CONTEXT = b"aio-federation header auth v1"
EX_OK, EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 0, 64, 69, 78
# What makes a workflow "the same": everything an import writes that a user would notice.
COMPARED_WORKFLOW_FIELDS = ("name", "nodes", "connections", "settings")


class ProvisionError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Plan:
    credentials: list[dict[str, Any]] = field(default_factory=list)
    imports: list[dict[str, Any]] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def log(event: str, **fields: Any) -> None:
    """One line per step on stderr: `provision: event key=value ...` (never a secret)."""
    extras = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"provision: {event}" + (f" {extras}" if extras else ""), file=sys.stderr, flush=True)


def secret_variables(department: str) -> tuple[str, str]:
    return f"AIO_WEBHOOK_SECRET_{department.upper()}", "AIO_WEBHOOK_SECRET"


def department_secret(department: str, env: dict[str, str]) -> tuple[str | None, str]:
    """The secret for `department` and the variable it came from."""
    specific, shared = secret_variables(department)
    for name in (specific, shared):
        if env.get(name):
            return env[name], name
    return None, f"{specific} or {shared}"


def header_token(secret: str) -> str:
    """The X-AIO-Auth value the agent sends for `secret` (aio_agent.signing.header_token)."""
    return hmac.new(secret.encode(), HEADER_TOKEN_CONTEXT, hashlib.sha256).hexdigest()


def desired_credential(department: str, secret: str) -> dict[str, Any]:
    """The credential template n8n/credentials/<department>.json with its value filled in."""
    path = CREDENTIALS / f"{department}.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    document["data"]["value"] = header_token(secret)
    return document


def desired_workflows(department: str) -> list[dict[str, Any]]:
    return [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((WORKFLOWS / department).glob("*.json"))
    ]


def known_departments() -> list[str]:
    return sorted(p.name for p in WORKFLOWS.iterdir() if p.is_dir() and any(p.glob("*.json")))


def validate(departments: list[str], env: dict[str, str]) -> list[str]:
    """Every problem with the request at once."""
    problems = []
    known = known_departments()
    for department in departments:
        if not DEPARTMENT_PATTERN.match(department):
            problems.append(f"department {department!r} must match {DEPARTMENT_PATTERN.pattern}")
            continue
        if department not in known or not (CREDENTIALS / f"{department}.json").is_file():
            problems.append(
                f"department {department!r} has no workflows in n8n/workflows/ "
                f"(known: {', '.join(known)})"
            )
        secret, source = department_secret(department, env)
        if secret is None:
            problems.append(
                f"{source} is not set: the webhook secret for {department} "
                f"(the agent's N8N_WEBHOOK_SECRET); e.g. export {source.split()[0]}=$(openssl "
                "rand -hex 32)"
            )
        elif len(secret) < MIN_SECRET_LENGTH:
            problems.append(f"{source} is shorter than {MIN_SECRET_LENGTH} characters")
    return problems


class N8nCli:
    """Runs `n8n <command>` with the caller's environment; raises ProvisionError on failure."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command = command
        self.env = env

    def run(self, *args: str) -> str:
        argv = [*self.command, *args]
        try:
            done = subprocess.run(  # noqa: S603 - the operator chose the n8n command
                argv, env=self.env, capture_output=True, text=True, check=False, timeout=300
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ProvisionError(
                f"could not run {shlex.join(argv)}: {exc}", EX_UNAVAILABLE
            ) from exc
        output = (done.stdout + done.stderr).strip()
        # n8n's import/publish commands log errors but may still exit 0: read what they said.
        failed = done.returncode != 0 or re.search(
            r"^(Error|An error occurred)", output, re.MULTILINE
        )
        if failed:
            raise ProvisionError(
                f"{shlex.join(argv[len(self.command) - 1 :])} failed "
                f"(exit {done.returncode}):\n{output[-2000:]}",
                EX_UNAVAILABLE,
            )
        return output

    def export(self, kind: str, folder: Path) -> list[dict[str, Any]]:
        """Everything of `kind` (workflow|credentials) n8n holds; [] when it holds none."""
        target = folder / f"{kind}.json"
        extra = ["--decrypted"] if kind == "credentials" else []
        try:
            self.run(f"export:{kind}", "--all", f"--output={target}", *extra)
        except ProvisionError as exc:
            if re.search(r"No (workflows|credentials) found", str(exc)):
                return []
            raise
        if not target.exists():
            return []
        document = json.loads(target.read_text(encoding="utf-8"))
        return document if isinstance(document, list) else [document]


def _same_workflow(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(current.get(key) == wanted.get(key) for key in COMPARED_WORKFLOW_FIELDS)


def _same_credential(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(current.get(key) == wanted.get(key) for key in ("name", "type", "data"))


def plan(
    departments: list[str],
    env: dict[str, str],
    workflows_now: list[dict[str, Any]],
    credentials_now: list[dict[str, Any]],
) -> Plan:
    """What to import and publish so n8n matches the templates (pure: no n8n calls)."""
    result = Plan()
    by_id_wf = {item.get("id"): item for item in workflows_now}
    by_id_cred = {item.get("id"): item for item in credentials_now}
    for department in departments:
        secret, _ = department_secret(department, env)
        assert secret is not None  # validate() ran first
        credential = desired_credential(department, secret)
        current = by_id_cred.get(credential["id"])
        if current is None or not _same_credential(current, credential):
            result.credentials.append(credential)
        else:
            result.unchanged.append(f"credential {credential['name']}")
        for workflow in desired_workflows(department):
            current = by_id_wf.get(workflow["id"])
            if current is None or not _same_workflow(current, workflow):
                result.imports.append(workflow)
                result.publish.append(workflow["id"])
            elif not current.get("active"):
                result.publish.append(workflow["id"])
            else:
                result.unchanged.append(f"workflow {workflow['name']}")
    return result


def apply(cli: N8nCli, todo: Plan, folder: Path) -> None:
    if todo.credentials:
        path = folder / "credentials-import.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(todo.credentials, handle)
        cli.run("import:credentials", f"--input={path}")
        for credential in todo.credentials:
            log("credential_imported", id=credential["id"], name=shlex.quote(credential["name"]))
    if todo.imports:
        path = folder / "workflows-import.json"
        path.write_text(json.dumps(todo.imports), encoding="utf-8")
        cli.run("import:workflow", f"--input={path}")
        for workflow in todo.imports:
            log("workflow_imported", id=workflow["id"], name=shlex.quote(workflow["name"]))
    for workflow_id in todo.publish:
        cli.run("publish:workflow", f"--id={workflow_id}")
        log("workflow_published", id=workflow_id)


def provision(
    departments: list[str], command: list[str], env: dict[str, str], dry_run: bool
) -> Plan:
    problems = validate(departments, env)
    if problems:
        raise ProvisionError(
            "invalid configuration: "
            + f"{len(problems)} problem{'s' if len(problems) != 1 else ''}\n"
            + "\n".join(f"  - {problem}" for problem in problems),
            EX_CONFIG,
        )
    cli = N8nCli(command, env)
    # The folder holds a decrypted credential export for a moment: private, removed at the end.
    with tempfile.TemporaryDirectory(prefix="aio-n8n-provision-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o700)
        todo = plan(
            departments, env, cli.export("workflow", folder), cli.export("credentials", folder)
        )
        for item in todo.unchanged:
            log("unchanged", what=shlex.quote(item))
        if dry_run:
            log(
                "dry_run",
                credentials=len(todo.credentials),
                imports=len(todo.imports),
                publish=len(todo.publish),
            )
            return todo
        apply(cli, todo, folder)
    changed = bool(todo.credentials or todo.imports or todo.publish)
    log("done", changed=str(changed).lower(), departments=",".join(departments))
    if changed:
        log("note", advice="restart_n8n_if_it_is_running_so_it_serves_the_published_webhooks")
    return todo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Import and publish the AIO tool workflows of one or more departments "
        "into n8n (idempotent).",
        epilog="The secret comes from AIO_WEBHOOK_SECRET_<DEPARTMENT> or AIO_WEBHOOK_SECRET.",
    )
    parser.add_argument("departments", nargs="+", metavar="DEPARTMENT", help="e.g. hr accounting")
    parser.add_argument(
        "--n8n",
        default=os.environ.get("N8N_CMD", "n8n"),
        help="how to run n8n's CLI (default: $N8N_CMD or 'n8n')",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code == 0 else EX_USAGE
    command = shlex.split(args.n8n)
    if not command:
        print("provision: --n8n must name a command", file=sys.stderr)
        return EX_USAGE
    try:
        provision(list(dict.fromkeys(args.departments)), command, dict(os.environ), args.dry_run)
    except ProvisionError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return exc.code
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
