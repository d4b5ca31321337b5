#!/bin/sh
# Provision n8n's database with the AIO workflows, in a one-shot container on the n8n image itself
# (docker-compose.test.yml's `n8n-provision` service; the n8n service waits for it to finish).
# POSIX sh + node + the n8n CLI only, so it runs on the official n8nio/n8n image (Alpine, no
# Python) and on our stand-in alike. What provision.py does, for a fresh or known database:
#   1. fill each department's header token (HMAC-SHA256 of "aio-federation header auth v1" with
#      its secret, what the agent sends as X-AIO-Auth) into its Header Auth credential template
#      (in a private temporary folder, removed on exit),
#   2. n8n import:credentials, n8n import:workflow (fixed ids: a re-import updates, never
#      duplicates), n8n publish:workflow for each workflow,
#   3. check that n8n lists every workflow as active (exit 69 if not: n8n's CLI can log an error
#      and still exit 0), then write a marker (a hash of every input: templates, workflows,
#      secrets) into n8n's folder.
# A later start with the same inputs finds the marker and, once n8n confirms every workflow is
# still active (one CLI call, a few seconds), changes nothing; changed workflows or secrets, or a
# workflow deactivated since, are imported and published again.
#
# Environment: AIO_DEPARTMENTS (default "hr accounting"), AIO_WEBHOOK_SECRET_<DEPARTMENT> or
# AIO_WEBHOOK_SECRET (at least 16 characters; never printed), AIO_N8N_DIR (default /aio/n8n: this
# folder, read-only), plus n8n's own settings (N8N_ENCRYPTION_KEY, DB_*) exactly as the n8n
# service has them. Exit codes: 0 done or nothing to do, 69 an n8n command failed (its output is
# shown), 78 invalid input (every problem listed at once).
set -eu

AIO_N8N_DIR="${AIO_N8N_DIR:-/aio/n8n}"
DEPARTMENTS="${AIO_DEPARTMENTS:-hr accounting}"
N8N_DIR="${N8N_USER_FOLDER:-$HOME}/.n8n"
MARKER="$N8N_DIR/aio-provisioned"

log() {
	# log LEVEL EVENT [KEY VALUE]...: one JSON line (the project's log shape) on stderr.
	level="$1" event="$2"
	shift 2
	line="{\"timestamp\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",\"level\":\"$level\",\"logger\":\"n8n-provision\",\"event\":\"$event\""
	while [ "$#" -ge 2 ]; do
		line="$line,\"$1\":\"$2\""
		shift 2
	done
	printf '%s}\n' "$line" >&2
}

now_ms() { node -e 'process.stdout.write(String(Date.now()))'; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT INT TERM
chmod 700 "$WORK"
mkdir "$WORK/credentials" "$WORK/workflows"

# Fill the templates, check every input, print the inputs' hash and the workflow ids (node: the
# only JSON tool both images have). Problems are listed together; exit 78.
export AIO_N8N_DIR DEPARTMENTS WORK
plan="$(node - <<'JS'
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const dir = process.env.AIO_N8N_DIR;
const work = process.env.WORK;
const departments = process.env.DEPARTMENTS.split(/\s+/).filter(Boolean);
const problems = [];
const hash = crypto.createHash('sha256');
const ids = [];
if (departments.length === 0) problems.push('AIO_DEPARTMENTS is empty');
for (const dept of departments) {
  if (!/^[a-z][a-z0-9_]{0,30}$/.test(dept)) { problems.push(`AIO_DEPARTMENTS: bad department id ${JSON.stringify(dept)}`); continue; }
  const specific = `AIO_WEBHOOK_SECRET_${dept.toUpperCase()}`;
  const secret = process.env[specific] || process.env.AIO_WEBHOOK_SECRET;
  const source = process.env[specific] ? specific : (process.env.AIO_WEBHOOK_SECRET ? 'AIO_WEBHOOK_SECRET' : `${specific} (or AIO_WEBHOOK_SECRET)`);
  if (!secret) problems.push(`${source} is not set: the webhook secret for ${dept}`);
  else if (secret.length < 16) problems.push(`${source} is too short (${secret.length} characters, at least 16)`);
  const template = path.join(dir, 'credentials', `${dept}.json`);
  const flows = path.join(dir, 'workflows', dept);
  if (!fs.existsSync(template)) problems.push(`no credential template ${template}`);
  if (!fs.existsSync(flows)) problems.push(`no workflow folder ${flows}`);
  if (problems.length) continue;
  const credential = JSON.parse(fs.readFileSync(template, 'utf8'));
  // The header token, as aio_agent/signing.py sends it: the secret itself never travels.
  credential.data.value = crypto.createHmac('sha256', secret).update('aio-federation header auth v1').digest('hex');
  const text = JSON.stringify(credential);
  hash.update(`credential ${dept}\n${text}\n`);
  fs.writeFileSync(path.join(work, 'credentials', `${dept}.json`), text, { mode: 0o600 });
  for (const name of fs.readdirSync(flows).filter((f) => f.endsWith('.json')).sort()) {
    const raw = fs.readFileSync(path.join(flows, name), 'utf8');
    const workflow = JSON.parse(raw);
    hash.update(`workflow ${dept}/${name}\n${raw}\n`);
    fs.writeFileSync(path.join(work, 'workflows', `${dept}-${name}`), raw);
    ids.push(workflow.id);
  }
}
if (problems.length) {
  for (const p of problems) console.error(`n8n-provision: ${p}`);
  process.exit(78);
}
console.log(hash.digest('hex').slice(0, 32));
console.log(ids.join(' '));
JS
)" || {
	rc=$?
	log error "invalid input" exit_code "$rc"
	exit "$rc"
}
inputs_hash="$(printf '%s\n' "$plan" | sed -n 1p)"
workflow_ids="$(printf '%s\n' "$plan" | sed -n 2p)"

# inactive_workflows: the ids of $workflow_ids that n8n does not list as active (empty: none).
# n8n's own word, not our marker's: an import or publish can log an error and still exit 0, and
# a workflow can be deactivated in the editor afterwards.
inactive_workflows() {
	n8n list:workflow --active=true --onlyId >"$WORK/active" 2>&1 || true
	missing=""
	for id in $workflow_ids; do
		grep -qxF "$id" "$WORK/active" || missing="$missing $id"
	done
	printf '%s' "${missing# }"
}

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$inputs_hash" ]; then
	inactive="$(inactive_workflows)"
	if [ -z "$inactive" ]; then
		log info "unchanged" departments "$DEPARTMENTS" inputs "$inputs_hash"
		exit 0
	fi
	log warning "provisioned before, but n8n lists these workflows as inactive: provisioning again" \
		workflows "$inactive"
fi

# run_n8n STEP ARGS...: one n8n CLI command; its output is shown only when it fails.
run_n8n() {
	step="$1"
	shift
	t0="$(now_ms)"
	if ! n8n "$@" >"$WORK/out" 2>&1; then
		cat "$WORK/out" >&2
		log error "n8n command failed" step "$step" exit_code 69
		exit 69
	fi
	log info "$step" duration_ms "$(($(now_ms) - t0))"
}

started="$(now_ms)"
run_n8n "credentials imported" import:credentials --separate --input="$WORK/credentials"
run_n8n "workflows imported" import:workflow --separate --input="$WORK/workflows"
for id in $workflow_ids; do
	run_n8n "workflow $id published" publish:workflow --id="$id"
done
inactive="$(inactive_workflows)"
if [ -n "$inactive" ]; then
	cat "$WORK/active" >&2
	log error "n8n reported success, but these workflows are not active" workflows "$inactive" \
		exit_code 69
	exit 69
fi
printf '%s\n' "$inputs_hash" >"$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
log info "provisioned" departments "$DEPARTMENTS" workflows "$(echo "$workflow_ids" | wc -w | tr -d ' ')" \
	duration_ms "$(($(now_ms) - started))"
