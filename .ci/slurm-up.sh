#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on loopback, with accounting (slurmdbd on MariaDB), for tests that submit real
# jobs (e.g. Hydra's submitit_slurm launcher). Debian/Ubuntu, root, no systemd needed: every daemon is started by
# hand, because package installs start no service in containers. Idempotent: packages already installed are not
# reinstalled, daemons already running are left alone, config files are rewritten only when their content changes.
# See docs/slurm.md and ../shared/notes/slurm-one-node.md. Stop it with .ci/slurm-down.sh.
#
# Environment: SLURM_DIR (state, spool, logs, pid files; default /tmp/slurm), SLURM_CLUSTER (default distillkit),
# SLURM_UP_TIMEOUT (seconds to wait for each daemon / for the node; default 60).
set -euo pipefail

DIR=${SLURM_DIR:-/tmp/slurm}
CLUSTER=${SLURM_CLUSTER:-distillkit}
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DB_NAME=slurm_acct_db
DB_USER=slurm
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
T0=$(date +%s.%N)

log() { echo "slurm-up: $*"; }
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }
# die_log MESSAGE LOGFILE: fail and show the end of the daemon's log.
die_log() {
    echo "slurm-up: ERROR: $1" >&2
    if [ -r "$2" ]; then echo "--- last lines of $2 ---" >&2; tail -n 20 "$2" >&2; fi
    exit 1
}
running() { pgrep -x "$1" >/dev/null 2>&1; }  # exact process name; only a check, never used to kill
# wait_for SECONDS CMD...: poll CMD every 0.5 s until it succeeds.
wait_for() {
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}
# install_if_changed SRC DEST MODE: put SRC at DEST unless identical; returns 0 if DEST changed.
install_if_changed() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then rm -f "$1"; return 1; fi
    install -m "$3" "$1" "$2"; rm -f "$1"; return 0
}

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# ---------------------------------------------------------------- packages
missing=()
for p in "${PKGS[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >"$1" 2>&1; }
    mkdir -p "$DIR/log"
    if ! apt_install "$DIR/log/apt.log"; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -q >"$DIR/log/apt-update.log" 2>&1 || die_log "apt-get update failed" "$DIR/log/apt-update.log"
        apt_install "$DIR/log/apt.log" || die_log "apt-get install ${missing[*]} failed" "$DIR/log/apt.log"
    fi
fi
for b in munged slurmctld slurmd slurmdbd sinfo sacct scontrol mariadb mysqld_safe; do
    command -v "$b" >/dev/null || die "$b not found after installing ${PKGS[*]}"
done

mkdir -p "$DIR"/{state,spool,log,run}
chmod 0755 "$DIR"

# ---------------------------------------------------------------- munge
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    runuser -u munge -- mungekey --create >/dev/null 2>&1 \
        || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none \
             && chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key; } \
        || die "cannot create /etc/munge/munge.key"
fi
if running munged; then
    log "munged already running"
else
    log "starting munged"
    runuser -u munge -- munged || die_log "munged failed to start" /var/log/munge/munged.log
fi
wait_for "$TIMEOUT" bash -c 'munge -n | unmunge' || die_log "munge does not work (munge -n | unmunge)" /var/log/munge/munged.log

# ---------------------------------------------------------------- mariadb
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if [ ! -d /var/lib/mysql/mysql ]; then
    log "initialising /var/lib/mysql"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$DIR/log/mariadb-install.log" 2>&1 \
        || die_log "mariadb-install-db failed" "$DIR/log/mariadb-install.log"
fi
if running mariadbd || running mysqld; then
    log "mariadb already running"
else
    log "starting mariadb"
    # mysqld_safe stays in the foreground: detach it. Debian sends its log to syslog, which a container lacks: send
    # it to a file instead, one that the mysql user may write (mariadbd runs as mysql).
    [ -e "$DIR/log/mariadb.log" ] || install -o mysql -g mysql -m 0640 /dev/null "$DIR/log/mariadb.log"
    setsid mysqld_safe --log-error="$DIR/log/mariadb.log" </dev/null >"$DIR/log/mysqld_safe.out" 2>&1 &
    msafe=$!
fi
deadline=$(( $(date +%s) + TIMEOUT ))
until mariadb-admin --protocol=socket ping >/dev/null 2>&1; do
    if [ -n "${msafe:-}" ] && ! kill -0 "$msafe" 2>/dev/null; then
        cat "$DIR/log/mysqld_safe.out" >&2; die_log "mariadb (mysqld_safe) exited at start" "$DIR/log/mariadb.log"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || die_log "mariadb did not answer within ${TIMEOUT}s" "$DIR/log/mariadb.log"
    sleep 0.5
done

# The database password lives only in slurmdbd.conf (0600); it is made once and reused, and MariaDB is told it again
# on every run so that the two cannot drift apart.
DB_PASS=$(sed -n 's/^StoragePass=//p' "$DBD_CONF" 2>/dev/null | head -n 1 || true)
[ -n "$DB_PASS" ] || DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
mariadb --protocol=socket <<SQL >"$DIR/log/mariadb-setup.log" 2>&1 || die_log "creating the $DB_NAME database/user failed" "$DIR/log/mariadb-setup.log"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---------------------------------------------------------------- config files
HOST=$(hostname -s)
[ -n "$HOST" ] || die "hostname -s is empty"
# slurmd -C prints the node's hardware as a NodeName line; take CPUs and ~90% of RealMemory from it.
node_hw=$(slurmd -C 2>/dev/null | head -n 1 || true)
CPUS=$(sed -n 's/.*[[:space:]]CPUs=\([0-9]\+\).*/\1/p' <<<"$node_hw")
MEM=$(sed -n 's/.*[[:space:]]RealMemory=\([0-9]\+\).*/\1/p' <<<"$node_hw")
[ -n "$CPUS" ] || CPUS=$(nproc)
[ -n "$MEM" ] || MEM=$(free -m | awk '/^Mem:/{print $2}')
MEM=$(( MEM * 9 / 10 ))
[ "$CPUS" -gt 0 ] && [ "$MEM" -gt 0 ] || die "cannot read CPUs/RealMemory (slurmd -C said: $node_hw)"

mkdir -p /etc/slurm
tmp=$(mktemp)
cat >"$tmp" <<EOF
# Written by .ci/slurm-up.sh: one-node test cluster on loopback. Do not edit; rerun the script.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
conf_changed=0
install_if_changed "$tmp" "$CONF" 0644 && conf_changed=1

tmp=$(mktemp)
cat >"$tmp" <<EOF
# Written by .ci/slurm-up.sh. Do not edit; rerun the script.
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=$DB_NAME
StorageUser=$DB_USER
StoragePass=$DB_PASS
EOF
dbd_changed=0
install_if_changed "$tmp" "$DBD_CONF" 0600 && dbd_changed=1
chmod 0600 "$DBD_CONF"

# ---------------------------------------------------------------- slurmdbd, slurmctld, slurmd (in this order)
if running slurmdbd; then
    log "slurmdbd already running"
    [ "$dbd_changed" = 0 ] || log "WARNING: $DBD_CONF changed; restart slurmdbd (.ci/slurm-down.sh, then this script) to apply it"
else
    log "starting slurmdbd"
    slurmdbd || die_log "slurmdbd failed to start" "$DIR/log/slurmdbd.log"
fi
wait_for "$TIMEOUT" sacctmgr -n -P show cluster || die_log "slurmdbd does not answer (sacctmgr show cluster) within ${TIMEOUT}s" "$DIR/log/slurmdbd.log"

if running slurmctld; then
    log "slurmctld already running"
    if [ "$conf_changed" = 1 ]; then log "$CONF changed: scontrol reconfigure"; scontrol reconfigure || true; fi
else
    log "starting slurmctld"
    slurmctld || die_log "slurmctld failed to start" "$DIR/log/slurmctld.log"
fi
wait_for "$TIMEOUT" scontrol ping || die_log "slurmctld does not answer (scontrol ping) within ${TIMEOUT}s" "$DIR/log/slurmctld.log"

if running slurmd; then
    log "slurmd already running"
else
    log "starting slurmd"
    slurmd || die_log "slurmd failed to start" "$DIR/log/slurmd.log"
fi

# ---------------------------------------------------------------- wait until usable
node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n 1; }
# "idle" on a fresh cluster; "mixed"/"allocated" when a rerun finds jobs running, which is also usable.
node_ready() { case "$(node_state)" in idle|mixed|allocated|completing) return 0;; *) return 1;; esac; }
if ! wait_for "$TIMEOUT" node_ready; then
    # A node left DOWN/DRAIN by an earlier run (e.g. killed while a job ran) does not always return by itself.
    log "node is '$(node_state)'; trying State=RESUME"
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    wait_for "$TIMEOUT" node_ready || die_log "node $HOST is '$(node_state)', not idle, after ${TIMEOUT}s" "$DIR/log/slurmd.log"
fi
# The cluster registers itself in the accounting database when slurmctld first connects to slurmdbd.
wait_for "$TIMEOUT" bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx '$CLUSTER'" \
    || die_log "cluster $CLUSTER is not registered in slurmdbd" "$DIR/log/slurmctld.log"
wait_for "$TIMEOUT" sacct -n -X -a -S now-1hours || die "sacct does not work: $(sacct -n -X 2>&1 | head -n 3)"

# ---------------------------------------------------------------- status
elapsed=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
log "cluster '$CLUSTER' up on $HOST (127.0.0.1) in ${elapsed}s: $(sinfo -V), munge $(dpkg-query -W -f='${Version}' munge), mariadb $(dpkg-query -W -f='${Version}' mariadb-server)"
log "state, logs and pid files under $DIR; stop with .ci/slurm-down.sh"
sinfo -N -o '%N %P %T %c %m'
