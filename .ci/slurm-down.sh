#!/usr/bin/env bash
# Stop the one-node SLURM cluster that .ci/slurm-up.sh started: slurmd, slurmctld, slurmdbd, mariadb, munged (the
# reverse of the start order). Each daemon is stopped through its own pid file or admin command, never by process
# name. Harmless when nothing runs. `--purge` also removes $SLURM_DIR (job state, spool, logs); the packages, the
# config files and the accounting database are kept.
set -uo pipefail

DIR=${SLURM_DIR:-/tmp/slurm}
purge=0
case "${1:-}" in
    --purge) purge=1 ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

log() { echo "slurm-down: $*"; }
fail=0

# stop_pidfile NAME PIDFILE [SECONDS]: SIGTERM the pid in PIDFILE if it is NAME, wait for it to exit, else SIGKILL.
stop_pidfile() {
    local name=$1 pf=$2 secs=${3:-15} pid i
    pid=$(cat "$pf" 2>/dev/null) || { log "$name: no pid file ($pf), not running"; return 0; }
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        log "$name: not running"; rm -f "$pf"; return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < secs * 2; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pf"; return 0; }
        sleep 0.5
    done
    log "$name (pid $pid) ignored SIGTERM for ${secs}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    sleep 0.5
    kill -0 "$pid" 2>/dev/null && { log "ERROR: $name (pid $pid) is still running"; fail=1; }
    rm -f "$pf"
}

stop_pidfile slurmd "$DIR/run/slurmd.pid"
stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
stop_pidfile slurmdbd "$DIR/run/slurmdbd.pid"

if command -v mariadb-admin >/dev/null && mariadb-admin --protocol=socket ping >/dev/null 2>&1; then
    log "stopping mariadb"
    # A clean shutdown; mysqld_safe, which started it, exits by itself after a clean shutdown.
    mariadb-admin --protocol=socket shutdown || { log "ERROR: mariadb-admin shutdown failed"; fail=1; }
else
    log "mariadb: not running"
fi

stop_pidfile munged /run/munge/munged.pid

if [ "$purge" = 1 ]; then
    log "removing $DIR"
    rm -rf -- "$DIR"
fi
exit "$fail"
