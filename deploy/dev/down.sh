#!/usr/bin/env bash
# deploy/dev/down.sh [SERVICE...]: stop the dev/test services started by up.sh (default: all).
# SERVICE: cassandra zookeeper mariadb-a mariadb-b nats.
#
# Only processes named in our pidfiles are signalled, and only if their command line still points at
# our run directory (a recycled PID is never killed). SIGTERM to all, wait up to $MUSIC_DEV_STOP_TIMEOUT
# seconds (polling), then SIGKILL. Pidfiles are removed; data directories are kept.
set -euo pipefail
here=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
# shellcheck source=deploy/dev/env.sh
source "$here/env.sh"

dev_now
T0=$DEV_NOW
dev_parse_services "$@"
# Stop in reverse start order.
order=()
for ((i = ${#DEV_SELECTED[@]} - 1; i >= 0; i--)); do order+=("${DEV_SELECTED[i]}"); done

line() { # SERVICE STATE [PID] [DETAIL]
  dev_now
  dev_secs $((DEV_NOW - T0))
  printf '%-10s %-12s pid %-7s %6ss  %s\n' "$1" "$2" "${3:--}" "$DEV_SECS" "${4:-}"
}

if [[ ! -d $MUSIC_DEV_RUN_DIR ]]; then
  for svc in "${order[@]}"; do line "$svc" "not running"; done
  exit 0
fi
dev_lock

declare -A pid=()
for svc in "${order[@]}"; do
  dev_service_pid "$svc"
  if [[ -n $DEV_PID ]]; then
    kill -TERM "$DEV_PID" 2>/dev/null || true
    pid[$svc]=$DEV_PID
  else
    note=""
    if ((DEV_STALE)); then
      rm -f "$DEV_PIDFILE"
      note="(stale pidfile removed)"
    fi
    line "$svc" "not running" "" "$note"
  fi
done

# Wait for all of them together, polling every 50 ms.
deadline=$((T0 + MUSIC_DEV_STOP_TIMEOUT * 1000000))
rc=0
while ((${#pid[@]})); do
  for svc in "${!pid[@]}"; do
    if ! dev_pid_is_ours "$svc" "${pid[$svc]}"; then
      line "$svc" stopped "${pid[$svc]}"
      dev_pidfile "$svc"
      rm -f "$DEV_PIDFILE"
      unset "pid[$svc]"
    fi
  done
  ((${#pid[@]})) || break
  dev_now
  if ((DEV_NOW > deadline)); then
    for svc in "${!pid[@]}"; do
      kill -KILL "${pid[$svc]}" 2>/dev/null || true
      for ((i = 0; i < 100; i++)); do # up to 5 s for the kernel to reap it
        dev_pid_is_ours "$svc" "${pid[$svc]}" || break
        sleep 0.05
      done
      if dev_pid_is_ours "$svc" "${pid[$svc]}"; then
        line "$svc" "STILL ALIVE" "${pid[$svc]}" "SIGKILL did not end it"
        rc=1
      else
        line "$svc" killed "${pid[$svc]}" "no exit within ${MUSIC_DEV_STOP_TIMEOUT} s of SIGTERM"
        dev_pidfile "$svc"
        rm -f "$DEV_PIDFILE"
      fi
    done
    break
  fi
  sleep 0.05
done
exit "$rc"
