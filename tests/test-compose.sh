#!/usr/bin/env bash
# End-to-end test of docker-compose.test.yml: PostgreSQL + LiveKit (or its stand-in) + n8n with the
# departments' workflows + HR + Accounting, as a user runs them, plus tests/compose.e2e.yml: a
# scripted OpenAI-compatible API (tests/fakes/openai_server.py) in place of the LLM, so a text chat
# with each agent (`python -m aio_agent chat`) makes a real signed tool call to the real n8n.
# Needs a Docker engine with the compose v2 plugin; images come from BASE_IMAGE / POSTGRES_IMAGE /
# N8N_IMAGE / LIVEKIT_IMAGE (tests/lib/base-images.sh makes stand-ins where no registry answers).
# Each check prints PASS/FAIL with what it measured; exit 1 on any FAIL.
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

PROJECT="${COMPOSE_PROJECT:-aio-e2e}"
export AGENT_IMAGE="${AGENT_IMAGE:-aio-federation-agent:e2e}"
export BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
export POSTGRES_IMAGE="${POSTGRES_IMAGE:-postgres:16}"
export N8N_IMAGE="${N8N_IMAGE:-n8nio/n8n:2.40.7}"
export FAKE_OPENAI_IMAGE="${FAKE_OPENAI_IMAGE:-aio-local/fake-openai:e2e}"
PIP_CA_FILE="${PIP_CA_FILE:-/etc/ssl/certs/ca-certificates.crt}"
FAILS=0
PASSES=0

log() { printf '%s [compose-e2e] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
pass() {
	PASSES=$((PASSES + 1))
	printf 'PASS  %s\n' "$*"
}
fail() {
	FAILS=$((FAILS + 1))
	printf 'FAIL  %s\n' "$*"
}
compose() { docker compose -p "$PROJECT" -f docker-compose.test.yml -f tests/compose.e2e.yml "$@"; }
now_ms() { date +%s%3N; }

# HTTP status of a URL on the host (000 when nothing answers).
http_status() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" || true; }

# wait_for_status URL CODE TIMEOUT_S -> 0 when URL answered CODE within the timeout
wait_for_status() {
	local url="$1" want="$2" deadline=$(($(date +%s) + $3))
	while (($(date +%s) < deadline)); do
		[[ "$(http_status "$url")" == "$want" ]] && return 0
		sleep 0.5
	done
	return 1
}

cleanup() {
	if [[ "${KEEP_STACK:-0}" != 1 ]]; then
		compose --profile broken down -v --remove-orphans >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT

build_images() {
	# The agent image comes from the compose file's own build section, as `up --build` makes it
	# for a user (hr and accounting share AGENT_IMAGE); PIP_CA_FILE feeds its pip_ca secret.
	if [[ -r "$PIP_CA_FILE" ]]; then export PIP_CA_FILE; else unset PIP_CA_FILE; fi
	log "building $AGENT_IMAGE on $BASE_IMAGE (docker compose build)"
	compose build -q hr
	if [[ -z "${LIVEKIT_IMAGE:-}" ]]; then
		if timeout 20 docker pull -q livekit/livekit-server:v1.9 >/dev/null 2>&1; then
			export LIVEKIT_IMAGE=livekit/livekit-server:v1.9
		else
			# No registry: the fake LiveKit server from tests/fakes, packaged on the agent image.
			export LIVEKIT_IMAGE=aio-local/livekit-fake:e2e
			log "no registry for livekit-server: building the stand-in $LIVEKIT_IMAGE"
			docker build -q -f tests/images/livekit-fake/Dockerfile \
				--build-arg "AGENT_IMAGE=$AGENT_IMAGE" -t "$LIVEKIT_IMAGE" tests >/dev/null
		fi
	fi
	log "building the scripted LLM stand-in $FAKE_OPENAI_IMAGE"
	docker build -q -f tests/images/fake-openai/Dockerfile \
		--build-arg "AGENT_IMAGE=$AGENT_IMAGE" -t "$FAKE_OPENAI_IMAGE" tests >/dev/null
	if ! docker image inspect "$N8N_IMAGE" >/dev/null 2>&1 &&
		! timeout 60 docker pull -q "$N8N_IMAGE" >/dev/null 2>&1; then
		# shellcheck disable=SC2016 # the command to run, printed as is
		log "no image $N8N_IMAGE and no registry serves it:" \
			'run eval "$(tests/lib/base-images.sh --print-env)" first (it builds a stand-in)'
		return 1
	fi
	log "images: agent=$AGENT_IMAGE postgres=$POSTGRES_IMAGE livekit=$LIVEKIT_IMAGE n8n=$N8N_IMAGE"
}

check_up() {
	local t0 t1
	t0="$(now_ms)"
	if compose up -d --no-build --wait --wait-timeout 300 postgres livekit n8n fake-openai hr accounting; then
		t1="$(now_ms)"
		pass "stack up, n8n (provisioned), hr and accounting healthy in $((t1 - t0)) ms (docker compose up --wait)"
	else
		fail "stack did not become healthy"
		compose ps -a || true
		compose logs --no-color --tail 60 || true
		return 1
	fi
	local svc port
	for svc in hr accounting; do
		if compose exec -T "$svc" python /app/healthcheck.py >/dev/null; then
			pass "$svc: healthcheck.py inside the container passes"
		else
			fail "$svc: healthcheck.py inside the container fails"
			compose exec -T "$svc" python /app/healthcheck.py || true
		fi
	done
	for port in 8080 8081; do
		local code
		code="$(http_status "http://127.0.0.1:$port/readyz")"
		if [[ "$code" == 200 ]]; then
			pass "port $port: /readyz 200 (registered with LiveKit, DB reachable)"
		else
			fail "port $port: /readyz answered $code"
		fi
	done
}

check_isolation() {
	local out
	out="$(compose exec -T hr python - <<'PY' 2>&1 || true
import asyncio, asyncpg
from aio_agent.config import load_rendered

async def main() -> None:
    cfg = load_rendered("/app/config/config.yaml")
    conn = await asyncpg.connect(cfg["database"]["url"],
                                 server_settings={"app.department_id": "hr"})
    own = await conn.fetchval("SELECT count(*) FROM hr_tenant.drive_documents")
    print(f"own_documents={own}")
    try:
        await conn.fetch("SELECT * FROM accounting_tenant.drive_documents")
        print("other=READABLE")
    except asyncpg.InsufficientPrivilegeError as exc:
        print(f"other=denied ({exc.sqlstate})")
    await conn.close()

asyncio.run(main())
PY
)"
	if grep -Eq '^own_documents=[1-9]' <<<"$out"; then
		pass "hr reads its own documents with its own credentials ($(grep own_documents <<<"$out"))"
	else
		fail "hr cannot read its own documents: $out"
	fi
	if grep -q '^other=denied (42501)' <<<"$out"; then
		pass "hr gets permission denied on accounting_tenant (SQLSTATE 42501)"
	else
		fail "hr was not refused on accounting_tenant: $out"
	fi
}

check_broken() {
	local out rc=0
	out="$(compose --profile broken up --no-deps --no-build --exit-code-from broken broken 2>&1)" || rc=$?
	if ((rc == 78)) && grep -q 'DEPARTMENT_ID' <<<"$out" && grep -q 'LIVEKIT_URL' <<<"$out" &&
		grep -q 'LLM_API_KEY' <<<"$out"; then
		pass "broken environment exits 78 and lists every problem"
	else
		fail "broken environment: exit $rc; output: $(tail -n 12 <<<"$out")"
	fi
	if compose --profile broken ps -a broken 2>/dev/null | grep -q 'Exited (78)'; then
		pass "compose ps shows the broken instance as Exited (78)"
	else
		fail "compose ps does not show Exited (78)"
	fi
}

container_of() { compose ps -q "$1"; }

N8N_WEBHOOKS=(hr/lookup_policy hr/request_time_off accounting/lookup_invoice accounting/submit_expense)

check_n8n() {
	local id health
	id="$(container_of n8n)"
	health="$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || true)"
	if [[ "$health" == healthy ]]; then
		pass "n8n healthy ($(docker inspect -f '{{.Config.Image}}' "$id"))"
	else
		fail "n8n is $health"
		compose logs --no-color --tail 40 n8n-provision n8n || true
	fi
	local active
	active="$(compose exec -T n8n n8n list:workflow --active=true 2>/dev/null | grep -c '|AIO ' || true)"
	if [[ "$active" == 4 ]]; then
		pass "n8n lists the four AIO workflows as active (hr: 2, accounting: 2)"
	else
		fail "n8n lists $active active AIO workflows, not 4"
	fi
	# A published webhook without its header answers 403 (n8n's header auth); unpublished: 404.
	local path codes=() ok=1 deadline=$(($(date +%s) + 60))
	while :; do
		codes=()
		ok=1
		for path in "${N8N_WEBHOOKS[@]}"; do
			codes+=("$path=$(curl -s -o /dev/null -m 3 -w '%{http_code}' -X POST \
				"http://127.0.0.1:5678/webhook/$path" || true)")
			[[ "${codes[-1]}" == *=403 ]] || ok=0
		done
		((ok == 1 || $(date +%s) >= deadline)) && break
		sleep 1
	done
	if ((ok == 1)); then
		pass "all four webhooks are served on 127.0.0.1:5678 and refuse a call without the header (403)"
	else
		fail "webhooks on 127.0.0.1:5678: ${codes[*]}"
	fi
	local marker t0
	t0="$(now_ms)"
	marker="$(compose run --rm --no-deps -T n8n-provision 2>&1 | tail -n 1)"
	if grep -q '"event":"unchanged"' <<<"$marker"; then
		pass "provisioning again with the same inputs changes nothing ($(($(now_ms) - t0)) ms incl. container start and n8n's check)"
	else
		fail "a second provisioning run did not say unchanged: $marker"
	fi
	# The marker is not trusted blindly: a workflow deactivated since is published again.
	local repaired hr_policy_id
	hr_policy_id="$(sed -n 's/^  "id": "\(aio[0-9a-f]*\)",$/\1/p' n8n/workflows/hr/lookup_policy.json)"
	t0="$(now_ms)"
	compose exec -T n8n n8n unpublish:workflow --id="$hr_policy_id" >/dev/null 2>&1 || true
	repaired="$(compose run --rm --no-deps -T n8n-provision 2>&1 || true)"
	active="$(compose exec -T n8n n8n list:workflow --active=true 2>/dev/null | grep -c '|AIO ' || true)"
	if grep -q 'lists these workflows as inactive' <<<"$repaired" &&
		grep -q '"event":"provisioned"' <<<"$repaired" && [[ "$active" == 4 ]]; then
		pass "a workflow unpublished in n8n is published again by the next provisioning run ($(($(now_ms) - t0)) ms)"
	else
		fail "provisioning did not repair an unpublished workflow (active: $active): $(tail -n 3 <<<"$repaired")"
	fi
}

# tool_call_row SERVICE SESSION_ID -> "tool status http_status" of the session's tool call,
# read with the department's own credentials inside its container.
tool_call_row() {
	compose exec -T -e "AIO_SESSION=$2" "$1" python - <<'PY' 2>&1 || true
import asyncio, os
from aio_agent.config import load_rendered
from aio_agent.db import connect_tenant

async def main() -> None:
    cfg = load_rendered("/app/config/config.yaml")
    conn = await connect_tenant(cfg["database"]["url"], cfg["department"]["id"])
    rows = await conn.fetch(
        "SELECT tool, status, http_status FROM tool_calls WHERE session_id = $1",
        os.environ["AIO_SESSION"],
    )
    for row in rows:
        print(row["tool"], row["status"], row["http_status"])
    await conn.close()

asyncio.run(main())
PY
}

# check_chat SERVICE QUESTION TOOL EXPECTED_TEXT
check_chat() {
	local svc="$1" question="$2" tool="$3" expected="$4" out rc=0 t0 session row
	t0="$(now_ms)"
	out="$(compose exec -T "$svc" python -m aio_agent chat "$question" 2>&1)" || rc=$?
	if ((rc == 0)) && grep -q "^tool: $tool(.*) -> ok, HTTP 200\$" <<<"$out" &&
		grep "^assistant: " <<<"$out" | grep -qF "$expected"; then
		pass "$svc: chat -> $tool via n8n -> ok, HTTP 200; the answer names \"$expected\" ($(($(now_ms) - t0)) ms)"
	else
		fail "$svc: chat exit $rc: $out"
	fi
	session="$(sed -n 's/^session \(chat-[0-9a-f]*\) .*/\1/p' <<<"$out")"
	row="$(tool_call_row "$svc" "$session")"
	if [[ -n "$session" && "$row" == "$tool ok 200" ]]; then
		pass "$svc: ${svc}_tenant.tool_calls holds the call of $session: $row"
	else
		fail "$svc: tool_calls for session '$session': $row"
	fi
}

check_wrong_secret() {
	local out rc=0 session row
	# shellcheck disable=SC2016 # $0 expands in the container's sh
	out="$(compose exec -T -e N8N_WEBHOOK_SECRET=wrong-secret-for-the-e2e-test \
		-e CONFIG_PATH=/tmp/wrong-secret.yaml hr sh -c \
		'python -m aio_agent.config render >/dev/null && exec python -m aio_agent chat "$0"' \
		"How many vacation days do I get?" 2>&1)" || rc=$?
	if ((rc == 0)) && grep -q '^tool: lookup_policy(.*) -> rejected, HTTP 403$' <<<"$out"; then
		pass "hr with the wrong N8N_WEBHOOK_SECRET: n8n refuses the call (rejected, HTTP 403)"
	else
		fail "hr with the wrong secret: exit $rc: $out"
	fi
	session="$(sed -n 's/^session \(chat-[0-9a-f]*\) .*/\1/p' <<<"$out")"
	row="$(tool_call_row hr "$session")"
	if [[ -n "$session" && "$row" == "lookup_policy rejected 403" ]]; then
		pass "hr: the refused call is recorded in tool_calls: $row"
	else
		fail "hr: tool_calls for the refused session '$session': $row"
	fi
}

check_db_restart() {
	local hr_id acc_id hr_started acc_started
	hr_id="$(container_of hr)"
	acc_id="$(container_of accounting)"
	hr_started="$(docker inspect -f '{{.State.StartedAt}}' "$hr_id")"
	acc_started="$(docker inspect -f '{{.State.StartedAt}}' "$acc_id")"
	compose stop postgres >/dev/null 2>&1
	if wait_for_status http://127.0.0.1:8080/readyz 503 30 &&
		wait_for_status http://127.0.0.1:8081/readyz 503 30; then
		pass "postgres down: both /readyz turn 503"
	else
		fail "postgres down: /readyz did not turn 503"
	fi
	compose start postgres >/dev/null 2>&1
	local t0
	t0="$(now_ms)"
	if wait_for_status http://127.0.0.1:8080/readyz 200 60 &&
		wait_for_status http://127.0.0.1:8081/readyz 200 60; then
		pass "postgres back: both /readyz 200 again after $(($(now_ms) - t0)) ms"
	else
		fail "postgres back: /readyz did not return to 200"
	fi
	if [[ "$(docker inspect -f '{{.State.StartedAt}}' "$hr_id")" == "$hr_started" &&
		"$(docker inspect -f '{{.State.StartedAt}}' "$acc_id")" == "$acc_started" ]]; then
		pass "no agent container restarted during the database outage"
	else
		fail "an agent container restarted during the database outage"
	fi
}

check_stop() {
	local id t0 elapsed code
	id="$(container_of hr)"
	t0="$(now_ms)"
	compose stop hr >/dev/null 2>&1
	elapsed=$(($(now_ms) - t0))
	code="$(docker inspect -f '{{.State.ExitCode}}' "$id")"
	if [[ "$code" == 0 ]] && ((elapsed < 50000)); then
		pass "docker compose stop hr: exit 0 in $elapsed ms (grace period 50 s)"
	else
		fail "docker compose stop hr: exit $code after $elapsed ms"
	fi
}

main() {
	command -v curl >/dev/null || {
		echo "curl is required" >&2
		return 1
	}
	cleanup
	build_images
	local t_start
	t_start="$(now_ms)"
	if check_up; then
		check_n8n
		check_chat hr "How many vacation days do I get?" lookup_policy "Paid time off"
		check_chat accounting "What is the status of invoice INV-2026-0001?" lookup_invoice \
			"Northwind Office Supplies"
		check_wrong_secret
		check_isolation
		check_db_restart
		check_broken
		check_stop
	fi
	printf '\ncompose e2e: %d passed, %d failed (%d ms after the images were built)\n' \
		"$PASSES" "$FAILS" "$(($(now_ms) - t_start))"
	((FAILS == 0))
}

main "$@"
