#!/usr/bin/env bash
# Run a filecluster: the proxy, then the storage servers, then the interactive client.
#   ./run_cluster.sh          start everything, open the menu; leaving it stops what it started
#   ./run_cluster.sh start    start in the background, return once all answer
#   ./run_cluster.sh stop     stop every daemon of the data folder (whatever FILECLUSTER_SERVERS says now)
#   ./run_cluster.sh restart  stop, then start
#   ./run_cluster.sh status   say what runs
#   ./run_cluster.sh --help   this text
# Daemons run in a session of their own: a Ctrl-C in the terminal (in the menu, during a transfer)
# never reaches them.  Starts and stops of one data folder take a lock, so they cannot race.
# Environment: FILECLUSTER_DATA (./data), FILECLUSTER_PORT (9000; servers take the next ones),
#              FILECLUSTER_SERVERS (4), FILECLUSTER_SECRET_FILE ($FILECLUSTER_DATA/cluster.secret,
#              created on first start).
set -euo pipefail
case "${1:-}" in
  -h|--help|help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  ""|start|stop|restart|status) ;;
  *) echo "usage: $0 [start|stop|restart|status|--help]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"
ROOT="$(pwd)"
# shellcheck source=scripts/venv.sh
. scripts/venv.sh

DATA="${FILECLUSTER_DATA:-./data}"
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
PORT="${FILECLUSTER_PORT:-9000}"
SERVERS="${FILECLUSTER_SERVERS:-4}"
RUN="$DATA/run"
LOGS="$DATA/logs"
export FILECLUSTER_DATA="$DATA" FILECLUSTER_PORT="$PORT"
export FILECLUSTER_PROXY="${FILECLUSTER_PROXY:-127.0.0.1:$PORT}"
FC="$ROOT/.venv/bin/filecluster"

case "$SERVERS" in ''|*[!0-9]*) echo "error: FILECLUSTER_SERVERS must be a number" >&2; exit 2;; esac
case "$PORT" in ''|*[!0-9]*) echo "error: FILECLUSTER_PORT must be a number" >&2; exit 2;; esac
[ "$SERVERS" -ge 1 ] || { echo "error: FILECLUSTER_SERVERS must be at least 1" >&2; exit 2; }
if [ "${#PORT}" -gt 5 ] || [ "$PORT" -lt 1 ] || [ "$((PORT + SERVERS))" -gt 65535 ]; then
  echo "error: FILECLUSTER_PORT must leave room for the proxy and $SERVERS servers below 65536, not $PORT" >&2
  exit 2
fi
REPLICAS=$(( SERVERS < 2 ? SERVERS : 2 ))

names() { echo proxy; for i in $(seq 1 "$SERVERS"); do echo "server$i"; done; }
STARTED=()  # what this invocation started (the interactive mode stops only these)

command_of() {  # the command line of process $1, or nothing
  if [ -r "/proc/$1/cmdline" ]; then tr '\0' ' ' <"/proc/$1/cmdline"
  else ps -p "$1" -o args= 2>/dev/null; fi
}

running_pid() {  # prints the pid of $1 if it runs; a pid file naming any other process is stale
  local name="$1" f="$RUN/$1.pid" pid want
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  case "$name" in
    proxy) want="filecluster-proxy " ;;
    *) want="filecluster-server --id ${name#server} " ;;
  esac
  case "$pid" in ''|*[!0-9]*) rm -f "$f"; return 1 ;; esac
  case "$(command_of "$pid") " in
    *"$want"*) echo "$pid" ;;
    *) rm -f "$f"; return 1 ;;
  esac
}

answers() {  # does anything accept connections on 127.0.0.1:$1 ?
  "$ROOT/.venv/bin/python" - "$1" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

logged_since() {  # file lines-before text: has the file gained a line with text?
  awk -v n="$2" -v text="$3" 'NR > n && index($0, text) { found = 1 } END { exit !found }' "$1"
}

wait_ready() {  # name pid port log-lines-before [log line to wait for]
  local name="$1" pid="$2" port="$3" before="$4" line="${5:-}"
  for _ in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: $name exited; the end of $LOGS/$name.log:" >&2
      tail -n 5 "$LOGS/$name.log" >&2
      return 1
    fi
    if answers "$port" && { [ -z "$line" ] || logged_since "$LOGS/$name.log" "$before" "$line"; }; then
      return 0
    fi
    sleep 0.1
  done
  echo "error: $name did not answer on port $port within 15 s; see $LOGS/$name.log" >&2
  return 1
}

launch() {  # name port program args...
  local name="$1" port="$2"; shift 2
  if pid="$(running_pid "$name")"; then
    echo "$name already runs (pid $pid)"; return 0
  fi
  if answers "$port"; then
    echo "error: port $port is taken by another program; set FILECLUSTER_PORT" >&2; return 1
  fi
  local before=0
  [ ! -f "$LOGS/$name.log" ] || before=$(wc -l <"$LOGS/$name.log")
  if command -v setsid >/dev/null; then  # a session of its own: no terminal signal reaches it
    nohup setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  else
    nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  fi
  local pid=$!
  echo "$pid" >"$RUN/$name.pid"
  local ready_line=""
  [ "$name" = proxy ] || ready_line="registered with the proxy"
  STARTED+=("$name")
  wait_ready "$name" "$pid" "$port" "$before" "$ready_line" || return 1
  echo "$name started (pid $pid, port $port)"
}

ensure_secret() {  # the cluster secret: made once, mode 0600; every daemon reads it
  local secret="${FILECLUSTER_SECRET_FILE:-$DATA/cluster.secret}"
  if [ ! -f "$secret" ]; then
    ( umask 077 && "$ROOT/.venv/bin/python" -c 'from common.cluster_auth import new_secret; print(new_secret())' \
        >"$secret.tmp" && mv "$secret.tmp" "$secret" ) || { echo "error: cannot create $secret" >&2; exit 1; }
    echo "created the cluster secret $secret (mode 0600; keep it private, copy it to every host of the cluster)"
  fi
  export FILECLUSTER_SECRET_FILE="$secret"
}

start() {
  ensure_venv "" || exit 1
  mkdir -p "$RUN" "$LOGS"
  chmod 700 "$DATA"
  ensure_secret
  launch proxy "$PORT" "$ROOT/.venv/bin/filecluster-proxy" --port "$PORT" --replicas "$REPLICAS" || { stop_started; exit 1; }
  for i in $(seq 1 "$SERVERS"); do
    launch "server$i" "$((PORT + i))" "$ROOT/.venv/bin/filecluster-server" --id "$i" --port "$((PORT + i))" \
      || { stop_started; exit 1; }
  done
  echo "cluster up: proxy at 127.0.0.1:$PORT, $SERVERS storage servers, data in $DATA"
}

stop_one() {  # name: SIGTERM, then SIGKILL after 10 s
  local name="$1" pid
  pid="$(running_pid "$name")" || return 1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$RUN/$name.pid"
  echo "$name stopped"
}

recorded() {  # every daemon with a pid file in this data folder, servers (highest first), then proxy
  local f
  for f in "$RUN"/server*.pid; do [ -e "$f" ] && basename "$f" .pid; done | sort -t r -k 3 -n -r
  [ ! -e "$RUN/proxy.pid" ] || echo proxy
}

stop() {  # every daemon this data folder records, whatever FILECLUSTER_SERVERS says now
  local any=0 name
  for name in $(recorded); do stop_one "$name" && any=1; done
  [ "$any" = 1 ] || echo "nothing was running"
}

lock() {  # one start, stop or restart of this data folder at a time
  mkdir -p "$RUN"
  exec 9>"$RUN/lock"
  if command -v flock >/dev/null && ! flock -w 60 9; then
    echo "error: another run_cluster.sh is starting or stopping the cluster in $DATA" >&2
    exit 1
  fi
}

stop_started() {  # only what this invocation started, servers first
  local i
  for (( i=${#STARTED[@]}-1; i>=0; i-- )); do stop_one "${STARTED[$i]}" || true; done
  STARTED=()
}

status() {
  local name pid up=0
  for name in $( (names; recorded) | sort -u | sort -t r -k 3 -n); do
    if pid="$(running_pid "$name")"; then echo "$name: running (pid $pid)"; up=$((up + 1))
    else echo "$name: stopped"; fi
  done
  [ "$up" -gt 0 ]
}

case "${1:-}" in
  start) lock; start ;;
  stop) lock; stop ;;
  restart) lock; stop; start ;;
  status) status ;;
  "")
    lock
    start
    exec 9>&-  # the lock is for starting; the menu may run for hours
    trap 'echo; stop_started' EXIT
    trap 'exit 143' TERM
    trap ':' INT  # Ctrl-C is the menu's (it cancels a transfer); the daemons never see it
    "$FC" menu || true
    ;;
esac
