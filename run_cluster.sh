#!/usr/bin/env bash
# Run a filecluster: the proxy, then the storage servers and the HTTP gateway, then the interactive client.
#   ./run_cluster.sh          start everything, open the menu; leaving it stops what it started
#   ./run_cluster.sh start    start in the background, return once all answer
#   ./run_cluster.sh stop     stop every daemon of the data folder (whatever FILECLUSTER_SERVERS says now)
#   ./run_cluster.sh restart  stop, then start
#   ./run_cluster.sh status   say what runs (exit status 0 if everything runs, 1 otherwise)
#   ./run_cluster.sh --help   this text
# Daemons run in a session of their own: a Ctrl-C in the terminal (in the menu, during a transfer)
# never reaches them.  Starts and stops of one data folder take a lock, so they cannot race.
# Environment:
#   FILECLUSTER_DATA     data folder (./data): catalog, chunks, logs/, run/ (pid and port files)
#   FILECLUSTER_PORT     the proxy's port (9000); server N listens on PORT + N; 0: ports the OS picks
#   FILECLUSTER_SERVERS  how many storage servers (4)
#   FILECLUSTER_HTTP_PORT  the HTTP gateway's port, where share links open in a browser or curl
#                        (FILECLUSTER_PORT + 80: 9080; 0 when FILECLUSTER_PORT is 0)
#   FILECLUSTER_HOST     the address clients use (127.0.0.1): the daemons listen on it, share links
#                        (http://HOST:HTTP_PORT/s/TOKEN) and the servers' addresses name it, and the menu's client connects to it.
#                        Set it to this machine's name or LAN address for other machines to use it.
#   FILECLUSTER_BIND     the address the daemons listen on, if not FILECLUSTER_HOST: 0.0.0.0 for every
#                        interface (e.g. FILECLUSTER_HOST is a public address that NAT forwards here)
#   FILECLUSTER_SECRET_FILE  the cluster secret ($FILECLUSTER_DATA/cluster.secret, made on first start)
set -euo pipefail
case "${1:-}" in
  -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  ""|start|stop|restart|status) ;;
  *) echo "usage: $0 [start|stop|restart|status|--help]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"
ROOT="$(pwd)"
# shellcheck source=scripts/venv.sh
. scripts/venv.sh

fail() { echo "error: $*" >&2; exit 2; }  # a bad setting: one line, exit status 2

PORT="${FILECLUSTER_PORT:-9000}"
SERVERS="${FILECLUSTER_SERVERS:-4}"
HOST="${FILECLUSTER_HOST:-127.0.0.1}"
BIND="${FILECLUSTER_BIND:-$HOST}"
case "$SERVERS" in ''|*[!0-9]*) fail "FILECLUSTER_SERVERS must be a number, not '$SERVERS'" ;; esac
[ "${#SERVERS}" -le 3 ] && [ "$((10#$SERVERS))" -ge 1 ] || fail "FILECLUSTER_SERVERS must be 1 to 999, not '$SERVERS'"
SERVERS=$((10#$SERVERS))
case "$PORT" in ''|*[!0-9]*) fail "FILECLUSTER_PORT must be a port number, not '$PORT'" ;; esac
if [ "${#PORT}" -gt 5 ] || [ "$((10#$PORT + SERVERS))" -gt 65535 ]; then
  fail "FILECLUSTER_PORT must leave room for the proxy and $SERVERS servers below 65536, not $PORT"
fi
PORT=$((10#$PORT))
HTTP_PORT="${FILECLUSTER_HTTP_PORT:-}"
if [ -z "$HTTP_PORT" ]; then HTTP_PORT=$(( PORT ? PORT + 80 : 0 )); fi
case "$HTTP_PORT" in ''|*[!0-9]*) fail "FILECLUSTER_HTTP_PORT must be a port number, not '$HTTP_PORT'" ;; esac
{ [ "${#HTTP_PORT}" -le 5 ] && [ "$((10#$HTTP_PORT))" -le 65535 ]; } \
  || fail "FILECLUSTER_HTTP_PORT must be a port number below 65536, not '$HTTP_PORT'"
HTTP_PORT=$((10#$HTTP_PORT))
NAME_RE='^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$'
[[ "$HOST" =~ $NAME_RE ]] && [ "${#HOST}" -le 253 ] \
  || fail "FILECLUSTER_HOST must be a host name or an IPv4 address, not '$HOST'"
[ "$HOST" != 0.0.0.0 ] \
  || fail "FILECLUSTER_HOST=0.0.0.0 cannot be put in links: set FILECLUSTER_BIND=0.0.0.0 and FILECLUSTER_HOST to the address clients use"
[[ "$BIND" =~ $NAME_RE ]] && [ "${#BIND}" -le 253 ] \
  || fail "FILECLUSTER_BIND must be a host name or an IPv4 address, not '$BIND'"
case "${FILECLUSTER_EXIT_WITH:-1}" in  # for tests: the daemons end when this process does
  *[!0-9]*|0*) fail "FILECLUSTER_EXIT_WITH must be a process id, not '$FILECLUSTER_EXIT_WITH'" ;;
esac
LOCAL="$BIND"  # where this machine reaches the daemons
[ "$BIND" != 0.0.0.0 ] || LOCAL=127.0.0.1

DATA="${FILECLUSTER_DATA:-./data}"
case "${1:-}" in
  status|stop) ;;  # they only look: a mistyped folder is not made
  *) mkdir -p "$DATA" ;;
esac
[ ! -d "$DATA" ] || DATA="$(cd "$DATA" && pwd)"
RUN="$DATA/run"
LOGS="$DATA/logs"
export FILECLUSTER_DATA="$DATA"
REPLICAS=$(( SERVERS < 2 ? SERVERS : 2 ))
BIN="$ROOT/.venv/bin"

names() { echo proxy; for i in $(seq 1 "$SERVERS"); do echo "server$i"; done; echo gateway; }
STARTED=()  # what this invocation started (the interactive mode stops only these)

command_of() {  # the command line of process $1, or nothing
  if [ -r "/proc/$1/cmdline" ]; then tr '\0' ' ' <"/proc/$1/cmdline"
  else ps -p "$1" -o args= 2>/dev/null; fi
}

alive() {  # does process $1 run?  A zombie (ended, not yet reaped by its parent) does not.
  local stat
  if [ -d /proc/self ]; then
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat="${stat##*) }"
    [ "${stat:0:1}" != Z ]
  else
    kill -0 "$1" 2>/dev/null || return 1
    case "$(ps -o stat= -p "$1" 2>/dev/null)" in Z*) return 1 ;; esac
  fi
}

running_pid() {  # prints the pid of $1 if it runs; a pid file naming any other process is stale
  local name="$1" f="$RUN/$1.pid" pid want
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  case "$name" in
    proxy) want="filecluster-proxy " ;;
    gateway) want="filecluster-gateway " ;;
    *) want="filecluster-server --id ${name#server} " ;;
  esac
  case "$pid" in ''|*[!0-9]*) rm -f "$f" "$RUN/$name.port"; return 1 ;; esac
  case "$(command_of "$pid") " in
    *"$want"*) echo "$pid" ;;
    *) rm -f "$f" "$RUN/$name.port"; return 1 ;;
  esac
}

port_of() {  # the port daemon $1 listens on, as its start recorded it
  if [ -f "$RUN/$1.port" ]; then cat "$RUN/$1.port"
  elif [ "$1" = gateway ] && [ "$HTTP_PORT" != 0 ]; then echo "$HTTP_PORT"
  elif [ "$PORT" != 0 ] && [ "$1" != gateway ]; then [ "$1" = proxy ] && echo "$PORT" || echo "$((PORT + ${1#server}))"
  else echo "?"; fi
}

told_proxy_port() {  # the proxy port the running servers and gateway were started with, if any
  local name pid cmd
  for name in $(names); do
    [ "$name" != proxy ] || continue
    pid="$(running_pid "$name")" || continue
    cmd="$(command_of "$pid") "
    case "$cmd" in
      *" --proxy "*) cmd="${cmd#* --proxy }"; cmd="${cmd%% *}"; echo "${cmd##*:}"; return 0 ;;
    esac
  done
  return 1
}

logged_since() {  # file lines-before text: has the file gained a line with text?
  awk -v n="$2" -v text="$3" 'NR > n && index($0, text) { found = 1 } END { exit !found }' "$1"
}

listening_port() {  # file lines-before: the port of the daemon's "... listening on HOST:PORT" line
  awk -v n="$2" 'NR > n && /^filecluster (proxy|gateway|server [0-9]+) listening on / {
    sub(/.*:/, ""); print; exit }' "$1"
}

can_listen() {  # ports...: can the daemons listen on $BIND at these ports?  If not, one line says why.
  "$BIN/python" - "$BIND" "$@" <<'PY'
import errno, socket, sys
host, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
taken = []
for port in ports:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemons do
        try:
            s.bind((host, port))
        except socket.gaierror as exc:
            sys.exit(f"error: cannot resolve the address {host!r} (FILECLUSTER_BIND or FILECLUSTER_HOST): {exc.strerror}")
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                sys.exit(f"error: cannot listen on {host} (FILECLUSTER_BIND or FILECLUSTER_HOST): {exc.strerror}")
            taken.append(str(port))
if taken:
    sys.exit(f"error: port {', '.join(taken)} on {host} taken by another program; set FILECLUSTER_PORT")
PY
}

spawn() {  # name program args...: start a daemon in a session of its own, record its pid
  local name="$1"; shift
  local before=0
  [ ! -f "$LOGS/$name.log" ] || before=$(wc -l <"$LOGS/$name.log")
  echo "$before" >"$RUN/$name.log-lines"  # where wait_ready looks for its ready lines
  if command -v setsid >/dev/null; then  # a session of its own: no terminal signal reaches it
    nohup setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  else
    nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  fi
  echo "$!" >"$RUN/$name.pid"
  STARTED+=("$name")
}

wait_ready() {  # name: wait until it listens (and a server registered), record its port
  local name="$1" pid before log port="" i
  pid="$(cat "$RUN/$name.pid")"
  before="$(cat "$RUN/$name.log-lines")"
  rm -f "$RUN/$name.log-lines"
  log="$LOGS/$name.log"
  for i in $(seq 1 300); do
    if ! alive "$pid"; then
      local said
      said="$(tail -n +"$((before + 1))" "$log" | grep '^error: ' | tail -n 1 || true)"
      if [ -n "$said" ]; then echo "error: $name did not start: ${said#error: } (see $log)" >&2
      else echo "error: $name exited at start; the end of $log:" >&2; tail -n 5 "$log" >&2; fi
      return 1
    fi
    [ -n "$port" ] || port="$(listening_port "$log" "$before")"
    if [ -n "$port" ] && { [ "$name" = proxy ] || [ "$name" = gateway ] || logged_since "$log" "$before" "registered with the proxy"; }; then
      echo "$port" >"$RUN/$name.port"
      echo "$name started (pid $pid, port $port)"
      return 0
    fi
    [ "$i" -gt 20 ] && sleep 0.1 || sleep 0.02
  done
  echo "error: $name did not get ready within 30 s; see $log" >&2
  return 1
}

ensure_secret() {  # the cluster secret: made once, mode 0600; every daemon reads it
  local secret="${FILECLUSTER_SECRET_FILE:-$DATA/cluster.secret}"
  if [ ! -f "$secret" ]; then
    ( umask 077 && "$BIN/python" -c 'from common.cluster_auth import new_secret; print(new_secret())' \
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
  local i name pid wanted=()
  for name in $(names); do
    if pid="$(running_pid "$name")"; then echo "$name already runs (pid $pid, port $(port_of "$name"))"
    else wanted+=("$name"); fi
  done
  if [ "${#wanted[@]}" -eq 0 ]; then
    echo "cluster already up: proxy at $HOST:$(port_of proxy), data in $DATA"
    return 0
  fi
  local proxy_at="$PORT" told
  if [[ " ${wanted[*]} " == *" proxy "* ]] && [ "$PORT" = 0 ] && told="$(told_proxy_port)"; then
    proxy_at="$told"  # a proxy that died comes back where the servers and the gateway look for it
  fi
  # shellcheck disable=SC2046
  can_listen $(for name in "${wanted[@]}"; do
    if [ "$name" = gateway ]; then echo "$HTTP_PORT"
    elif [ "$name" = proxy ]; then echo "$proxy_at"
    elif [ "$PORT" = 0 ]; then echo 0; else echo "$((PORT + ${name#server}))"; fi
  done | sort -u) || exit 1
  if [[ " ${wanted[*]} " == *" proxy "* ]]; then
    spawn proxy "$BIN/filecluster-proxy" --host "$BIND" --port "$proxy_at" --advertise "$HOST" --replicas "$REPLICAS"
    wait_ready proxy || { stop_started; exit 1; }
  fi
  local proxy_port
  proxy_port="$(port_of proxy)"
  for name in "${wanted[@]}"; do
    [[ "$name" == server* ]] || continue
    i="${name#server}"
    spawn "$name" "$BIN/filecluster-server" --id "$i" --host "$BIND" --port "$(( PORT ? PORT + i : 0 ))" \
      --advertise "$HOST" --proxy "$LOCAL:$proxy_port"
  done
  for name in "${wanted[@]}"; do
    [[ "$name" != server* ]] || wait_ready "$name" || { stop_started; exit 1; }
  done
  if [[ " ${wanted[*]} " == *" gateway "* ]]; then  # after the servers: links work once it answers
    spawn gateway "$BIN/filecluster-gateway" --host "$BIND" --port "$HTTP_PORT" --advertise "$HOST" \
      --proxy "$LOCAL:$proxy_port"
    wait_ready gateway || { stop_started; exit 1; }
  fi
  echo "cluster up: proxy at $HOST:$proxy_port, $SERVERS storage servers, links at http://$HOST:$(port_of gateway)/s/, data in $DATA"
}

stop_all() {  # names...: SIGTERM to each (and SIGCONT, should one be stopped), SIGKILL after 10 s
  local name pid names=() pids=() i waited=0
  for name in "$@"; do
    if pid="$(running_pid "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      kill -CONT "$pid" 2>/dev/null || true
      names+=("$name"); pids+=("$pid")
    else
      echo "$name was not running"
      rm -f "$RUN/$name.pid" "$RUN/$name.port"
    fi
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  for i in "${!pids[@]}"; do  # 10 s for them all, not each
    while alive "${pids[$i]}" && [ "$waited" -lt 200 ]; do sleep 0.05; waited=$((waited + 1)); done
    if alive "${pids[$i]}"; then kill -KILL "${pids[$i]}" 2>/dev/null || true; fi
    rm -f "$RUN/${names[$i]}.pid" "$RUN/${names[$i]}.port"
    echo "${names[$i]} stopped (pid ${pids[$i]})"
  done
}

recorded() {  # every daemon with a pid file in this data folder: gateway, servers (highest first), proxy
  local f
  [ ! -e "$RUN/gateway.pid" ] || echo gateway
  for f in "$RUN"/server*.pid; do [ -e "$f" ] && basename "$f" .pid; done | sort -t r -k 3 -n -r
  [ ! -e "$RUN/proxy.pid" ] || echo proxy
}

stop() {  # every daemon this data folder records, whatever FILECLUSTER_SERVERS says now
  local all
  all="$(recorded)"
  [ -n "$all" ] || { echo "nothing was running"; return 0; }
  # shellcheck disable=SC2046
  stop_all $(grep -v '^proxy$' <<<"$all" || true)  # the gateway and servers together, then the proxy
  if grep -qx proxy <<<"$all"; then stop_all proxy; fi
}

lock() {  # one start, stop or restart of this data folder at a time
  mkdir -p "$RUN"
  exec 9>"$RUN/lock"
  if command -v flock >/dev/null && ! flock -w 60 9; then
    echo "error: another run_cluster.sh is starting or stopping the cluster in $DATA" >&2
    exit 1
  fi
}

stop_started() {  # only what this invocation started: the servers, then the proxy
  local servers=() name
  [ "${#STARTED[@]}" -gt 0 ] || return 0
  for name in "${STARTED[@]}"; do [ "$name" = proxy ] || servers=("$name" "${servers[@]}"); done
  [ "${#servers[@]}" -eq 0 ] || stop_all "${servers[@]}"
  if [[ " ${STARTED[*]} " == *" proxy "* ]]; then stop_all proxy; fi
  STARTED=()
}

IN_MENU=0
leave_menu() {  # the interactive mode's end, however it comes: stop what this invocation started
  trap - EXIT INT TERM HUP
  set +e  # stop them even if the terminal is gone and saying so fails
  if [ "$IN_MENU" = 1 ]; then
    echo
    if [ "${#STARTED[@]}" -eq 0 ]; then
      echo "the cluster was running before this ./run_cluster.sh; it keeps running (./run_cluster.sh stop stops it)"
    else
      echo "stopping what this ./run_cluster.sh started: ${STARTED[*]}"
    fi
  fi
  [ "${#STARTED[@]}" -eq 0 ] || { lock; stop_started; }
}

status() {  # the daemons this data folder records; with none, or FILECLUSTER_SERVERS set, those it would run
  local name pid up=0 down=0 which
  which="$(recorded)"
  if [ -z "$which" ] || [ -n "${FILECLUSTER_SERVERS:-}" ]; then which="$( (names; recorded) | sort -u)"; fi
  for name in $(echo "$which" | sort -u | sort -t r -k 3 -n); do
    if pid="$(running_pid "$name")"; then echo "$name: running (pid $pid, port $(port_of "$name"))"; up=$((up + 1))
    else echo "$name: stopped"; down=$((down + 1)); fi
  done
  [ "$down" -eq 0 ]
}

case "${1:-}" in
  start) lock; start ;;
  stop) if [ -d "$DATA" ]; then lock; stop; else echo "nothing was running (no data folder $DATA)"; fi ;;
  restart) lock; stop; start ;;
  status) status ;;
  "")
    trap leave_menu EXIT  # also if the start fails or is interrupted half way
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    lock
    start
    exec 9>&-  # the lock is for starting; the menu may run for hours
    trap ':' INT  # Ctrl-C is the menu's (it cancels a transfer); the daemons never see it
    IN_MENU=1
    FILECLUSTER_PROXY="$HOST:$(port_of proxy)" "$BIN/filecluster" menu || true
    ;;
esac
