#!/usr/bin/env bash
# A single-node Slurm cluster on localhost, for trying `rescore backfill --executor slurm` and for
# tests/test_slurm.py. Idempotent: installs slurm-wlm and munge when missing (Debian/Ubuntu, as root),
# writes /etc/slurm/slurm.conf (only if absent or written by this script), starts munged, slurmctld and
# slurmd in the background when they are not running, and waits until the node is idle.
#
#   sudo bash tests/slurm_localhost.sh          # then: sinfo; sbatch ...; squeue
#
# State, spool, pid and log files live under $RESCORE_SLURM_DIR (default /tmp/rescore-slurm).
# Stop it with: kill $(cat /tmp/rescore-slurm/slurmd.pid /tmp/rescore-slurm/slurmctld.pid)
set -euo pipefail

DIR=${RESCORE_SLURM_DIR:-/tmp/rescore-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by rescore tests/slurm_localhost.sh"
NODE=localhost

say() { echo "slurm_localhost: $*"; }
die() { echo "slurm_localhost: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

# 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# 2. munge (authentication between the Slurm daemons and clients)
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n </dev/null | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf
mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching it"
fi
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
NEW_CONF=$(cat <<EOF
$MARK
ClusterName=rescore-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    say "writing $CONF"
    printf '%s\n' "$NEW_CONF" > "$CONF"
    if scontrol ping 2>/dev/null | grep -q UP; then
        scontrol reconfigure || true
    fi
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# 4. daemons (they fork into the background themselves)
if ! alive "$DIR/slurmctld.pid"; then
    say "starting slurmctld"
    setsid slurmctld </dev/null >/dev/null 2>&1
fi
for _ in $(seq 100); do
    scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.2
done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld is not answering (see $DIR/slurmctld.log)"

if ! alive "$DIR/slurmd.pid"; then
    say "starting slurmd"
    setsid slurmd -N "$NODE" </dev/null >/dev/null 2>&1
fi

# 5. wait for the node
state=""
for _ in $(seq 150); do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|drained*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) die "node $NODE is '${state:-unknown}' (see $DIR/slurmd.log and $DIR/slurmctld.log)" ;;
esac
say "ready: node $NODE is $state ($CPUS CPUs, partition debug); logs in $DIR"
sinfo
