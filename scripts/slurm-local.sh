#!/usr/bin/env bash
# One-node Slurm "cluster" on localhost for end-to-end tests (Debian 12, root,
# no systemd, no cgroups). Daemons are started directly, not via init scripts.
#
#   scripts/slurm-local.sh start    install (if missing), configure, start, wait for idle
#   scripts/slurm-local.sh stop     stop slurmd, slurmctld, munged (packages stay)
#   scripts/slurm-local.sh status   sinfo + squeue
#
# Config goes to /etc/slurm/slurm.conf (Debian's compiled-in default), so
# sbatch/squeue/scontrol need no SLURM_CONF. State, spool, logs and pid files
# live under $SLURM_LOCAL_DIR (default /var/lib/slurm-local).
#
# Environment overrides:
#   SLURM_LOCAL_DIR          base dir for state/spool/log/run (default /var/lib/slurm-local)
#   SLURM_LOCAL_MIN_JOB_AGE  seconds a finished job stays in scontrol (default 300)
#   SLURM_LOCAL_WAIT         seconds to wait for the node to become idle (default 60)
set -euo pipefail

BASE="${SLURM_LOCAL_DIR:-/var/lib/slurm-local}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
STATE="$BASE/state"
SPOOL="$BASE/spool"
LOGD="$BASE/log"
RUND="$BASE/run"
CTLD_PID="$RUND/slurmctld.pid"
SLURMD_PID="$RUND/slurmd.pid"
MUNGE_RUN=/run/munge
MUNGE_PID="$MUNGE_RUN/munged.pid"
MUNGE_KEY=/etc/munge/munge.key
MIN_JOB_AGE="${SLURM_LOCAL_MIN_JOB_AGE:-300}"
WAIT_S="${SLURM_LOCAL_WAIT:-60}"
NODE="$(hostname -s)"

log() { echo "slurm-local: $*" >&2; }

show_logs() {
    local f
    for f in "$LOGD/slurmctld.log" "$LOGD/slurmd.log" /var/log/munge/munged.log; do
        if [[ -f "$f" ]]; then
            echo "----- tail $f -----" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
    echo "----- logs: $LOGD/{slurmctld,slurmd}.log, /var/log/munge/munged.log; conf: $CONF -----" >&2
}

die() { log "ERROR: $*"; show_logs; exit 1; }

# pid from file if that process is alive, else empty
live_pid() {
    local f="$1" pid
    [[ -r "$f" ]] || return 0
    pid="$(tr -dc '0-9' <"$f")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

# pids whose executable is exactly the given binary (fallback when pid file is lost)
pids_of_exe() {
    local exe p
    exe="$(readlink -f "$1")"   # Debian: /usr/sbin/slurmd -> alternatives -> slurmd-wlm
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/exe" 2>/dev/null || true)" == "$exe" ]] && echo "${p#/proc/}"
    done
    return 0
}

install_pkgs() {
    local missing=() p
    for p in slurm-wlm munge; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; then
        log "install failed; running apt-get update and retrying"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    if [[ ! -s "$MUNGE_KEY" ]]; then
        log "creating munge key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    if [[ -n "$(live_pid "$MUNGE_PID")" ]] && munge -n </dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    log "starting munged"
    rm -f "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged --force || die "munged failed to start"
    local i
    for i in $(seq 1 50); do
        munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munge does not work (munge -n | unmunge)"
}

write_conf() {
    local cpus mem_mb real_mem hw sockets cores threads tmp
    cpus="$(nproc)"
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
    # leave ~10% (at least 512 MB) for the OS so slurmd never finds less than configured
    real_mem=$(( mem_mb - (mem_mb / 10 > 512 ? mem_mb / 10 : 512) ))
    (( real_mem > 0 )) || real_mem=$(( mem_mb / 2 ))
    # Use slurmd's own view of the socket/core/thread layout so it matches;
    # fall back to plain CPUs=nproc.
    hw="$(slurmd -C 2>/dev/null | head -n 1 || true)"
    sockets="$(sed -n 's/.*SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")"
    cores="$(sed -n 's/.*CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")"
    threads="$(sed -n 's/.*ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")"
    local layout="CPUs=$cpus"
    if [[ -n "$sockets" && -n "$cores" && -n "$threads" ]] &&
        (( sockets * cores * threads == cpus )); then
        layout="CPUs=$cpus Sockets=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads"
    fi

    install -d -m 0755 "$CONF_DIR" "$BASE" "$STATE" "$SPOOL" "$LOGD" "$RUND"
    tmp="$(mktemp)"
    cat >"$tmp" <<EOF
# Generated by scripts/slurm-local.sh -- one-node test cluster on $NODE
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: containers usually lack a usable cgroup hierarchy
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
# default batch_sched_delay=3 starts batch jobs only on a 3 s tick
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGD/jobcomp.log
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 $layout RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -f "$CONF" ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1   # unchanged
    fi
    install -m 0644 "$tmp" "$CONF"
    rm -f "$tmp"
    log "wrote $CONF ($layout RealMemory=$real_mem)"
    return 0       # changed
}

stop_pidfile() {
    # stop_pidfile NAME PIDFILE EXE
    local name="$1" f="$2" exe="$3" pids pid i
    pids="$(live_pid "$f")"
    [[ -n "$pids" ]] || pids="$(pids_of_exe "$exe")"
    if [[ -z "$pids" ]]; then rm -f "$f"; return 0; fi
    log "stopping $name ($(echo $pids))"
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in $(seq 1 100); do
        local alive=""
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ -z "$alive" ]] && break
        sleep 0.1
    done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -f "$f"
}

# SlurmdStartTime of our node as epoch seconds (0 if unknown)
slurmd_start_time() {
    local t
    t="$(scontrol show node -o "$NODE" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p')"
    date -d "$t" +%s 2>/dev/null || echo 0
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n 1 || true; }

cmd_start() {
    install_pkgs
    start_munge
    local changed=0
    write_conf && changed=1
    if (( changed )) && [[ -n "$(live_pid "$CTLD_PID")$(live_pid "$SLURMD_PID")" ]]; then
        log "config changed; restarting slurm daemons"
        stop_pidfile slurmd "$SLURMD_PID" /usr/sbin/slurmd
        stop_pidfile slurmctld "$CTLD_PID" /usr/sbin/slurmctld
    fi
    if [[ -z "$(live_pid "$CTLD_PID")" ]]; then
        log "starting slurmctld"
        /usr/sbin/slurmctld -f "$CONF" || die "slurmctld failed to start"
    fi
    local i
    for i in $(seq 1 100); do
        scontrol ping 2>/dev/null | grep -q 'is UP' && break
        sleep 0.2
    done
    scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer (scontrol ping)"
    local slurmd_t0=0
    if [[ -z "$(live_pid "$SLURMD_PID")" ]]; then
        log "starting slurmd"
        slurmd_t0=$(( $(date +%s) - 1 ))
        /usr/sbin/slurmd -f "$CONF" -N "$NODE" || die "slurmd failed to start"
    fi
    local st deadline=$(( SECONDS + WAIT_S )) resumed=0
    while :; do
        st="$(node_state)"
        case "$st" in
            idle|mixed|allocated|completing)
                # slurmctld restores the node as idle from its state file before the
                # new slurmd has registered; wait for the registration too.
                (( slurmd_t0 == 0 )) && break
                (( $(slurmd_start_time) >= slurmd_t0 )) && break ;;
            down*|drain*|drained*|fail*)
                if (( !resumed )); then
                    log "node $NODE is '$st'; resuming"
                    scontrol update nodename="$NODE" state=resume || true
                    resumed=1
                fi ;;
        esac
        (( SECONDS < deadline )) || die "node $NODE not idle after ${WAIT_S}s (state '${st:-?}')"
        sleep 0.5
    done
    log "cluster up: node $NODE is $st (conf $CONF, logs $LOGD)"
}

cmd_stop() {
    stop_pidfile slurmd "$SLURMD_PID" /usr/sbin/slurmd
    stop_pidfile slurmctld "$CTLD_PID" /usr/sbin/slurmctld
    stop_pidfile munged "$MUNGE_PID" /usr/sbin/munged
    log "stopped"
}

cmd_status() {
    if ! command -v sinfo >/dev/null; then echo "slurm not installed"; return 1; fi
    echo "slurmctld pid: $(live_pid "$CTLD_PID")  slurmd pid: $(live_pid "$SLURMD_PID")  munged pid: $(live_pid "$MUNGE_PID")"
    echo "conf: $CONF  logs: $LOGD"
    if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then
        echo "slurmctld is not running"
        return 1
    fi
    sinfo
    squeue
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
