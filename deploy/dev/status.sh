#!/usr/bin/env bash
# deploy/dev/status.sh [SERVICE...]: one line per dev/test service (default: all):
#   NAME  up|starting|down  pid PID  port PORT  [note]
# "up" means running from our pidfile AND answering its health check; "starting" means running but not
# (yet) healthy. Exit status 0 only if every listed service is up. Read-only: changes nothing.
set -euo pipefail
here=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
# shellcheck source=deploy/dev/env.sh
source "$here/env.sh"

dev_parse_services "$@"
rc=0
for svc in "${DEV_SELECTED[@]}"; do
  dev_service_pid "$svc"
  note=""
  if [[ -n $DEV_PID ]]; then
    if dev_ready "$svc"; then state=up; else state=starting rc=1; fi
  else
    state=down rc=1
    ((DEV_STALE)) && note="stale pidfile $DEV_PIDFILE"
    dev_busy_port "$svc"
    if [[ -n $DEV_BUSY ]]; then
      dev_port_owner "$DEV_BUSY"
      if [[ -n $DEV_OWNER ]] && dev_pid_is_ours "$svc" "$DEV_OWNER"; then
        note="${note:+$note; }pid $DEV_OWNER is ours but has no pidfile (up.sh $svc adopts it)"
      else
        note="${note:+$note; }port $DEV_BUSY is used by another process (pid ${DEV_OWNER:-unknown})"
      fi
    fi
  fi
  printf '%-10s %-8s pid %-7s port %-5s %s\n' "$svc" "$state" "${DEV_PID:--}" "${MUSIC_DEV_PORT[$svc]}" "$note"
done
exit "$rc"
