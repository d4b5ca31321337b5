#!/usr/bin/env bash
# AIO Federation agent: the container's front door.
#
# The image runs   ENTRYPOINT ["tini", "-g", "-e", "143", "--", "/app/entrypoint.sh"]
#                  CMD ["python", "-m", "aio_agent", "start"]
#
# For the agent command (`python -m aio_agent start`, or `start` for short) it sets up, then
# replaces itself with the agent:
#   1. python -m aio_agent.config render   validate every variable at once (NAME_FILE secrets
#                                          included), write $CONFIG_PATH atomically (0600)
#   2. python -m aio_agent.dbwait          when a database is configured: wait for it
#   3. python -m aio_agent.migrate         unless RUN_MIGRATIONS=false: apply tenant migrations
#   4. exec "$@"                           the agent becomes the process tini signals
# Any other command (`bash`, `python healthcheck.py`, ...) is exec'd at once, without setup.
#
# Exit codes: those of the failing step (78 invalid configuration, 69 database unreachable,
# 65 changed migration, 70 internal error); 143/130 when stopped by SIGTERM/SIGINT.
# Each step logs one line (JSON like aio_agent.logs, or LOG_FORMAT=console) with duration_ms.
# The script can be sourced (tests call one function at a time); it then runs nothing.
set -Eeuo pipefail

_LOGGER=entrypoint
_child=''
_step=''

# --- logging: same shape as aio_agent.logs, without starting python ----------------------------
_level_rank() {
	case "${1,,}" in
	debug) REPLY=10 ;;
	info) REPLY=20 ;;
	warning) REPLY=30 ;;
	error) REPLY=40 ;;
	*) REPLY=20 ;;
	esac
}

# _json_string VALUE: sets REPLY to VALUE as a JSON string literal.
_json_string() {
	local s=$1
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\n'/\\n}
	s=${s//$'\r'/\\r}
	s=${s//$'\t'/\\t}
	s=${s//[$'\001'-$'\037']/}
	REPLY="\"$s\""
}

_timestamp() {
	local now=${EPOCHREALTIME//[^0-9]/}
	local seconds=${now:0:${#now}-6} millis=${now:${#now}-6:3}
	TZ=UTC printf -v REPLY '%(%Y-%m-%dT%H:%M:%S)T.%sZ' "$seconds" "$millis"
}

# log LEVEL EVENT [KEY VALUE]...: one line on stdout. Integers stay numbers in JSON.
log() {
	local level=$1 event=$2 threshold
	shift 2
	_level_rank "${LOG_LEVEL:-INFO}"
	threshold=$REPLY
	_level_rank "$level"
	((REPLY >= threshold)) || return 0
	_timestamp
	local ts=$REPLY department=${DEPARTMENT_ID:-} line key value
	if [[ "${LOG_FORMAT:-json}" == [Cc][Oo][Nn][Ss][Oo][Ll][Ee] ]]; then
		printf -v line '%s [%-9s] %-30s [%s]' "$ts" "$level" "$event" "$_LOGGER"
		[[ -z "$department" ]] || line+=" department_id=$department"
		while (($# >= 2)); do
			line+=" $1=$2"
			shift 2
		done
	else
		_json_string "$event"
		line="{\"timestamp\": \"$ts\", \"level\": \"$level\", \"logger\": \"$_LOGGER\", \"event\": $REPLY"
		if [[ -n "$department" ]]; then
			_json_string "$department"
			line+=", \"department_id\": $REPLY"
		else
			line+=', "department_id": null'
		fi
		while (($# >= 2)); do
			key=$1 value=$2
			shift 2
			if [[ "$value" =~ ^-?[0-9]+$ ]]; then
				line+=", \"$key\": $value"
			else
				_json_string "$value"
				line+=", \"$key\": $REPLY"
			fi
		done
		line+='}'
	fi
	printf '%s\n' "$line"
}

_now_us() {
	REPLY=${EPOCHREALTIME//[^0-9]/}
}

# --- running steps: in the background, so a signal interrupts `wait` at once --------------------
_on_signal() {
	local name=$1 code=$2
	trap - TERM INT
	if [[ -n "$_child" ]]; then
		# Under `tini -g` the child got the signal too; send TERM in case only we did. Children
		# started in the background ignore SIGINT, so TERM is what stops them either way.
		kill -TERM "$_child" 2>/dev/null || true
		wait "$_child" 2>/dev/null || true
	fi
	log warning "stopped by signal" signal "$name" step "${_step:-setup}" exit_code "$code"
	exit "$code"
}

# run_step NAME COMMAND...: run COMMAND; set STEP_MS to its duration; return its exit code.
run_step() {
	local start rc=0
	_step=$1
	shift
	_now_us
	start=$REPLY
	"$@" &
	_child=$!
	wait "$_child" || rc=$?
	_child=''
	_now_us
	STEP_MS=$(((REPLY - start) / 1000))
	return "$rc"
}

# --- the start-up path ----------------------------------------------------------------------------
# is_agent_command ARGS...: true for `python -m aio_agent start ...` (or python3).
is_agent_command() {
	(($# >= 4)) && [[ "$1" == python || "$1" == python3 ]] &&
		[[ "$2" == -m && "$3" == aio_agent && "$4" == start ]]
}

render_config() {
	local rc=0
	run_step config python -m aio_agent.config render || rc=$?
	if ((rc != 0)); then
		if ((rc == 78)); then
			log error "configuration invalid" step config duration_ms "$STEP_MS" exit_code "$rc" \
				fix "set the variables listed above (docker run -e NAME=value, or an env file)"
		else
			log error "configuration render failed" step config duration_ms "$STEP_MS" exit_code "$rc"
		fi
		exit "$rc"
	fi
	local render_ms=$STEP_MS rc_plan=0
	DB_PLAN=$(python -m aio_agent.dbwait --plan) || rc_plan=$?
	if ((rc_plan != 0)); then
		log error "cannot read the rendered config" step config exit_code "$rc_plan"
		exit "$rc_plan"
	fi
	log info "configuration rendered" step config duration_ms "$render_ms" \
		config_path "${CONFIG_PATH:-/app/config/config.yaml}" database "$DB_PLAN"
}

wait_for_database() {
	local rc=0
	run_step database python -m aio_agent.dbwait || rc=$?
	if ((rc != 0)); then
		log error "database wait failed" step database duration_ms "$STEP_MS" exit_code "$rc"
		exit "$rc"
	fi
	log info "database ready" step database duration_ms "$STEP_MS"
}

run_migrations() {
	local rc=0
	run_step migrations python -m aio_agent.migrate || rc=$?
	if ((rc != 0)); then
		log error "migrations failed" step migrations duration_ms "$STEP_MS" exit_code "$rc"
		exit "$rc"
	fi
	log info "migrations applied" step migrations duration_ms "$STEP_MS"
}

setup() {
	render_config
	case "$DB_PLAN" in
	none)
		log info "no database configured: running without persistence" step database
		;;
	wait)
		wait_for_database
		log info "migrations skipped (RUN_MIGRATIONS=false)" step migrations
		;;
	"wait migrate")
		wait_for_database
		run_migrations
		;;
	*)
		log error "unexpected database plan" step database plan "$DB_PLAN" exit_code 70
		exit 70
		;;
	esac
}

_is_sourced() {
	[[ "${#FUNCNAME[@]}" -ge 2 && "${FUNCNAME[0]}" == _is_sourced && "${FUNCNAME[1]}" == source ]]
}

# prepare_agent: every setup step, stoppable by SIGTERM/SIGINT (143/130) until the agent starts.
prepare_agent() {
	trap '_on_signal SIGTERM 143' TERM
	trap '_on_signal SIGINT 130' INT
	setup
	trap - TERM INT
}

_main() {
	if (($# == 0)) || [[ "$1" == start ]]; then
		set -- python -m aio_agent start "${@:2}"
	fi
	if is_agent_command "$@"; then
		prepare_agent
		log info "starting agent" step start
	fi
	exec "$@"
}

if ! _is_sourced; then
	_main "$@"
fi
