#!/usr/bin/env bash
# Stops the cluster tools/slurm/start.sh started (its daemons by their pid files) and, with --purge,
# removes its directory ($SMT_SLURM_DIR, default /tmp/smt-slurm). munged is left running (shared).
set -uo pipefail
DIR=${SMT_SLURM_DIR:-/tmp/smt-slurm}
stop() {  # pid file
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}
stop "$DIR/slurmd.pid"; stop "$DIR/slurmctld.pid"; stop "$DIR/slurmdbd.pid"; stop "$DIR/run/mariadbd.pid"
for f in slurm.conf gres.conf cgroup.conf slurmdbd.conf; do   # start.sh's links, only these
  [ "$(readlink "/etc/slurm/$f" 2>/dev/null)" = "$DIR/etc/$f" ] && rm -f "/etc/slurm/$f"
done
[ "${1:-}" = --purge ] && rm -rf "$DIR"
echo "tools/slurm/stop.sh: stopped the cluster in $DIR"
