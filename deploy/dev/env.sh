# shellcheck shell=bash
# shellcheck disable=SC2034,SC2317 # variables are used by the sourcing scripts; "return || exit" is deliberate
# deploy/dev/env.sh: shared settings and helpers for the musicd dev/test services.
#
# Sourced by install.sh, up.sh, down.sh and status.sh (which set `set -euo pipefail` themselves);
# it is not meant to be executed. Every MUSIC_DEV_* setting can be overridden from the environment,
# e.g. `MUSIC_DEV_DIR=/var/tmp/m MUSIC_DEV_NATS_PORT=24223 deploy/dev/up.sh`.
#
# Layout (see README.md):
#   $MUSIC_DEV_DIR/install/cassandra-2.1.0/lib   Cassandra jars (install.sh)
#   $MUSIC_DEV_DIR/run/<service>/                data and generated config of one service
#   $MUSIC_DEV_DIR/run/<service>.pid             PID of the running service (written by up.sh)
#   $MUSIC_DEV_DIR/logs/<service>.log            its log (previous run: <service>.log.prev)

# The helpers use $EPOCHREALTIME, `mapfile -d` and associative arrays.
if ((BASH_VERSINFO[0] < 5)); then
  echo "deploy/dev: bash >= 5 is required (this is $BASH_VERSION)" >&2
  return 1 2>/dev/null || exit 1
fi

# ---------------------------------------------------------------- settings (all overridable)
: "${MUSIC_DEV_DIR:=/tmp/musicd-dev}"
[[ $MUSIC_DEV_DIR == /* ]] || MUSIC_DEV_DIR=$PWD/$MUSIC_DEV_DIR # daemons run with another cwd
MUSIC_DEV_DIR=${MUSIC_DEV_DIR%/}
# The download can live elsewhere (e.g. a CI cache) without moving the rest.
: "${MUSIC_DEV_INSTALL_DIR:=$MUSIC_DEV_DIR/install}"
MUSIC_DEV_RUN_DIR=$MUSIC_DEV_DIR/run
MUSIC_DEV_LOG_DIR=$MUSIC_DEV_DIR/logs
MUSIC_DEV_CASSANDRA_HOME=$MUSIC_DEV_INSTALL_DIR/cassandra-2.1.0
MUSIC_DEV_CASSANDRA_JAR=$MUSIC_DEV_CASSANDRA_HOME/lib/apache-cassandra-2.1.0.jar

# Ports. Everything binds 127.0.0.1 only. The machine may run its own MariaDB on 3306 and NATS on
# 4222: those are not ours, and nothing here ever uses or touches them.
: "${MUSIC_DEV_CASSANDRA_PORT:=19042}"             # CQL native protocol (v3)
: "${MUSIC_DEV_CASSANDRA_STORAGE_PORT:=17000}"     # inter-node gossip
: "${MUSIC_DEV_CASSANDRA_SSL_STORAGE_PORT:=17001}" # (bound only with internode encryption)
: "${MUSIC_DEV_ZK_PORT:=12181}"
: "${MUSIC_DEV_MARIADB_A_PORT:=13316}"
: "${MUSIC_DEV_MARIADB_B_PORT:=13317}"
# Server ids and GTID domains (a private copy may take others: a third site's database).
: "${MUSIC_DEV_MARIADB_A_SERVER_ID:=1}" "${MUSIC_DEV_MARIADB_A_GTID_DOMAIN:=1}"
: "${MUSIC_DEV_MARIADB_B_SERVER_ID:=2}" "${MUSIC_DEV_MARIADB_B_GTID_DOMAIN:=2}"
: "${MUSIC_DEV_NATS_PORT:=14223}"
: "${MUSIC_DEV_NATS_MONITOR_PORT:=18223}"

: "${MUSIC_DEV_CASSANDRA_HEAP:=1g}"
# periodic (fast; a kill -9 may lose the last 10 s of writes) or batch (fsync before acknowledging:
# what tests that kill -9 Cassandra and check durability need).
: "${MUSIC_DEV_CASSANDRA_COMMITLOG_SYNC:=periodic}"
[[ $MUSIC_DEV_CASSANDRA_COMMITLOG_SYNC == periodic || $MUSIC_DEV_CASSANDRA_COMMITLOG_SYNC == batch ]] || {
  echo "deploy/dev: MUSIC_DEV_CASSANDRA_COMMITLOG_SYNC must be periodic or batch" >&2
  return 1 2>/dev/null || exit 1
}
: "${MUSIC_DEV_CASSANDRA_TIMEOUT:=120}" # seconds Cassandra may take to become ready
: "${MUSIC_DEV_TIMEOUT:=60}"            # seconds every other service may take
: "${MUSIC_DEV_STOP_TIMEOUT:=30}"       # seconds down.sh waits after SIGTERM before SIGKILL
: "${MUSIC_DEV_AUTO_INSTALL:=1}"        # 1: up.sh runs install.sh when something is missing
# Debian's zookeeper package (3.8.0) puts its jars here.
: "${MUSIC_DEV_ZK_CLASSPATH:=/usr/share/java/zookeeper.jar:/usr/share/java/log4j-1.2.jar:/usr/share/java/slf4j-log4j12.jar}"

export MUSIC_DEV_DIR MUSIC_DEV_INSTALL_DIR MUSIC_DEV_CASSANDRA_PORT MUSIC_DEV_CASSANDRA_STORAGE_PORT \
  MUSIC_DEV_CASSANDRA_SSL_STORAGE_PORT MUSIC_DEV_ZK_PORT MUSIC_DEV_MARIADB_A_PORT MUSIC_DEV_MARIADB_B_PORT \
  MUSIC_DEV_MARIADB_A_SERVER_ID MUSIC_DEV_MARIADB_A_GTID_DOMAIN MUSIC_DEV_MARIADB_B_SERVER_ID MUSIC_DEV_MARIADB_B_GTID_DOMAIN \
  MUSIC_DEV_NATS_PORT MUSIC_DEV_NATS_MONITOR_PORT

readonly MUSIC_DEV_HOST=127.0.0.1
# What Cassandra 2.1 logs once its native (CQL) server is bound; the port answering alone is not
# enough to call it ready.
readonly MUSIC_DEV_CASSANDRA_READY_MARK='Starting listening for CQL clients'

# Canonical order: start order (slowest first) and, reversed, stop order.
MUSIC_DEV_SERVICES=(cassandra zookeeper mariadb-a mariadb-b nats)
# Main port of each service (the one shown by the scripts) and every port it listens on.
declare -A MUSIC_DEV_PORT=(
  [cassandra]=$MUSIC_DEV_CASSANDRA_PORT [zookeeper]=$MUSIC_DEV_ZK_PORT
  [mariadb-a]=$MUSIC_DEV_MARIADB_A_PORT [mariadb-b]=$MUSIC_DEV_MARIADB_B_PORT [nats]=$MUSIC_DEV_NATS_PORT
)
declare -A MUSIC_DEV_ALL_PORTS=(
  [cassandra]="$MUSIC_DEV_CASSANDRA_PORT $MUSIC_DEV_CASSANDRA_STORAGE_PORT" [zookeeper]=$MUSIC_DEV_ZK_PORT
  [mariadb-a]=$MUSIC_DEV_MARIADB_A_PORT [mariadb-b]=$MUSIC_DEV_MARIADB_B_PORT
  [nats]="$MUSIC_DEV_NATS_PORT $MUSIC_DEV_NATS_MONITOR_PORT"
)

for _p in "${MUSIC_DEV_ALL_PORTS[@]}" "$MUSIC_DEV_CASSANDRA_SSL_STORAGE_PORT"; do
  for _q in $_p; do
    [[ $_q =~ ^[0-9]+$ ]] || { echo "deploy/dev: bad port '$_q' in MUSIC_DEV_*_PORT" >&2; return 1 2>/dev/null || exit 1; }
  done
done
unset _p _q

# ---------------------------------------------------------------- helpers
# They return values in globals (DEV_*) rather than via $(...), so that the "everything is already
# up" path of up.sh and status.sh forks almost nothing.

dev_die() { echo "${0##*/}: $*" >&2; exit 1; }

# dev_now: DEV_NOW = wall clock in microseconds (the decimal separator of EPOCHREALTIME follows the locale).
dev_now() { DEV_NOW=${EPOCHREALTIME//[.,]/}; }

# dev_secs MICROSECONDS: DEV_SECS = "1.23"
dev_secs() { printf -v DEV_SECS '%d.%02d' $(($1 / 1000000)) $(($1 % 1000000 / 10000)); }

# dev_parse_services [NAME...]: DEV_SELECTED = the named services in canonical order (default: all).
dev_parse_services() {
  local want=" $* " s n
  for n in "$@"; do
    [[ " ${MUSIC_DEV_SERVICES[*]} " == *" $n "* ]] ||
      dev_die "unknown service '$n' (known: ${MUSIC_DEV_SERVICES[*]})"
  done
  DEV_SELECTED=()
  for s in "${MUSIC_DEV_SERVICES[@]}"; do
    if (($# == 0)) || [[ $want == *" $s "* ]]; then DEV_SELECTED+=("$s"); fi
  done
}

dev_pidfile() { DEV_PIDFILE=$MUSIC_DEV_RUN_DIR/$1.pid; }
dev_logfile() { DEV_LOG=$MUSIC_DEV_LOG_DIR/$1.log; }

# dev_pid_running PID: the process exists and is not a zombie. A process whose main thread has
# exited shows as a zombie while its other threads (a JVM's many) are still exiting and holding its
# sockets: it counts as running until only the main thread is left.
dev_pid_running() {
  local stat tasks
  [[ -r /proc/$1/stat ]] && read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
  stat=${stat##*) } # fields after "(comm)"; the first one is the state
  [[ ${stat%% *} != Z ]] && return 0
  tasks=(/proc/"$1"/task/*)
  ((${#tasks[@]} > 1))
}

# dev_pid_is_ours SERVICE PID: PID is running and its command line names this service's run directory
# ($MUSIC_DEV_RUN_DIR/<service>): protects against a recycled PID in a stale pidfile, so that we never
# signal a process that is not ours (such as the machine's own MariaDB or NATS).
dev_pid_is_ours() {
  local dir=$MUSIC_DEV_RUN_DIR/$1 args cmd
  [[ $2 =~ ^[0-9]+$ ]] && dev_pid_running "$2" || return 1
  mapfile -d '' args <"/proc/$2/cmdline" 2>/dev/null || return 1
  cmd=" ${args[*]} "
  [[ $cmd == *"$dir"[/\ ]* ]]
}

# dev_service_pid SERVICE: DEV_PID = PID from the pidfile if that process is alive and ours, else "".
# DEV_STALE = 1 when a pidfile exists but does not name such a process.
dev_service_pid() {
  local pid=""
  DEV_PID="" DEV_STALE=0
  dev_pidfile "$1"
  [[ -e $DEV_PIDFILE ]] || return 0
  read -r pid <"$DEV_PIDFILE" 2>/dev/null || true
  if [[ -n $pid ]] && dev_pid_is_ours "$1" "$pid"; then DEV_PID=$pid; else DEV_STALE=1; fi
}

# dev_port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
dev_port_open() { (exec 3<>"/dev/tcp/$MUSIC_DEV_HOST/$1") 2>/dev/null; }

# dev_busy_port SERVICE: DEV_BUSY = the first port of SERVICE that already accepts connections, or "".
dev_busy_port() {
  local p
  DEV_BUSY=""
  for p in ${MUSIC_DEV_ALL_PORTS[$1]}; do
    if dev_port_open "$p"; then DEV_BUSY=$p; return 0; fi
  done
}

# dev_port_owner PORT: DEV_OWNER = PID listening on 127.0.0.1:PORT (via ss; "" if unknown).
dev_port_owner() {
  local line
  DEV_OWNER=""
  command -v ss >/dev/null || return 0
  line=$(ss -Hltnp "sport = :$1" 2>/dev/null || true)
  [[ $line =~ pid=([0-9]+) ]] && DEV_OWNER=${BASH_REMATCH[1]}
  return 0
}

# dev_ready SERVICE: the service answers its health check.
dev_ready() {
  local reply=""
  case $1 in
    cassandra)
      # The CQL port may accept connections a moment before the server is usable; require the log line too.
      dev_logfile cassandra
      grep -qF "$MUSIC_DEV_CASSANDRA_READY_MARK" "$DEV_LOG" 2>/dev/null && dev_port_open "$MUSIC_DEV_CASSANDRA_PORT" ;;
    zookeeper)
      # four-letter word "ruok" -> "imok" (whitelisted in our zoo.cfg); the server closes after replying.
      reply=$( (exec 3<>"/dev/tcp/$MUSIC_DEV_HOST/$MUSIC_DEV_ZK_PORT" && printf ruok >&3 &&
        IFS= read -r -t 2 -u 3 r; printf %s "${r:-}") 2>/dev/null) || true
      [[ $reply == imok ]] ;;
    mariadb-a | mariadb-b)
      # A real query as test/test: `mariadb-admin ping` also succeeds on "Access denied", so it would call
      # the server ready before --init-file has created the test user.
      mariadb --no-defaults -h"$MUSIC_DEV_HOST" -P"${MUSIC_DEV_PORT[$1]}" -utest -ptest \
        --connect-timeout=2 -NBe 'SELECT 1' >/dev/null 2>&1 ;;
    nats)
      curl -sf --max-time 2 "http://$MUSIC_DEV_HOST:$MUSIC_DEV_NATS_MONITOR_PORT/healthz?js-enabled-only=true" \
        >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

# dev_tail_log SERVICE [N]: print the last N (30) lines of the service's log, indented (and cut at 400
# characters: the first line of each log is the full launch command).
dev_tail_log() {
  dev_logfile "$1"
  if [[ -s $DEV_LOG ]]; then
    echo "    --- last ${2:-30} lines of $DEV_LOG ---"
    tail -n "${2:-30}" "$DEV_LOG" | cut -c1-400 | sed 's/^/    /'
  else
    echo "    (log $DEV_LOG is empty or missing)"
  fi
}

# dev_thread_dump SVC PID: for a Java service (cassandra, zookeeper) that is running but not ready,
# ask the JVM for a thread dump (SIGQUIT writes it to stdout, which is the service's log) and show
# its main thread, so that a startup that hangs says where. Waits at most 5 s for the dump.
dev_thread_dump() {
  [[ $1 == cassandra || $1 == zookeeper ]] || return 0
  dev_logfile "$1"
  kill -QUIT "$2" 2>/dev/null || return 0
  local i
  for ((i = 0; i < 50; i++)); do
    grep -q '^Full thread dump' "$DEV_LOG" 2>/dev/null && break
    sleep 0.1
  done
  echo "    --- main thread of pid $2 (full thread dump in $DEV_LOG) ---"
  awk '/^"main"/{p=1; b=""} p&&/^$/{p=0} p{b=b $0 "\n"} END{printf "%s", b}' "$DEV_LOG" | head -n 40 | cut -c1-300 | sed 's/^/    /'
}

# dev_lock: serialize up.sh / down.sh runs on the same MUSIC_DEV_DIR (e.g. under make -j).
# Uses fd 9; daemons must be started with 9>&- so that they do not inherit (and hold) the lock.
dev_lock() {
  command -v flock >/dev/null || return 0
  exec 9>"$MUSIC_DEV_RUN_DIR/.lock"
  if ! flock -n 9; then
    echo "${0##*/}: waiting for another up.sh/down.sh on $MUSIC_DEV_DIR" >&2
    flock -w 600 9 || dev_die "could not lock $MUSIC_DEV_RUN_DIR/.lock"
  fi
}
