#!/usr/bin/env bash
# Bring up a single-node Slurm cluster on this machine, for CI and for trying the
# `--profile slurm` path without a real cluster.
#
#   sudo .ci/slurm/up.sh        # install (first time), configure, start, wait for an idle node
#   sudo .ci/slurm/down.sh      # stop the daemons
#
# Debian 12 (slurm-wlm 22.05), run as root, no systemd. Everything talks over
# loopback: the host's short name is made to resolve to 127.0.0.1 and the daemons
# bind to that address only. Authentication is auth/none, so nothing here is fit
# for a shared machine. Fake GPUs (character devices aliasing /dev/null) let jobs
# ask for --gpus/--gres=gpu and get CUDA_VISIBLE_DEVICES set per job.
#
# Re-running is safe: a cluster that is already up with the same configuration is
# left alone; a changed configuration restarts the daemons.
#
# Settings (environment):
#   SLURM_CI_GPUS       fake GPUs on the node (default 2)
#   SLURM_CI_PARTITION  name of the default partition (default gpu; slurm/config.v8+.yaml uses it)
#   SLURM_CI_WAIT       seconds to wait for the node to turn idle (default 60)
set -euo pipefail

GPUS="${SLURM_CI_GPUS:-2}"
PARTITION="${SLURM_CI_PARTITION:-gpu}"
WAIT_S="${SLURM_CI_WAIT:-60}"

# The plugin's job step (snakemake-executor-plugin-slurm-jobstep) strips SLURM_* from
# the environment of its inner srun, SLURM_CONF included, so the configuration must
# live where the tools look by default.
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL_DIR=/var/spool/slurm
RUN_DIR=/run/slurm
HOST="$(hostname -s)"

log() { echo "[slurm-up] $*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "[slurm-up] must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

install_packages() {
    if dpkg -s slurmctld slurmd slurm-client >/dev/null 2>&1; then
        return
    fi
    log "installing slurm-wlm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages' init scripts from starting daemons under
    # their own configuration; this script starts them itself.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        added_policy=1
    fi
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client >/dev/null
    if [[ $added_policy -eq 1 ]]; then rm -f "$policy"; fi
}

# Make the short host name resolve to loopback first, so that SlurmctldHost,
# NodeName and the NoInAddrAny binds below all mean 127.0.0.1.
ensure_loopback_name() {
    local addr
    addr="$(getent ahostsv4 "$HOST" 2>/dev/null | awk 'NR==1 {print $1}')"
    if [[ $addr == 127.* ]]; then
        return
    fi
    log "making $HOST resolve to 127.0.0.1 in /etc/hosts (was: ${addr:-unresolved})"
    # /etc/hosts is often a bind mount in containers: rewrite it in place, never rename.
    local hosts
    hosts="$(cat /etc/hosts)"
    printf '127.0.0.1 %s  # added by .ci/slurm/up.sh\n%s\n' "$HOST" "$hosts" >/etc/hosts
}

# Character devices that alias /dev/null: Slurm only needs a device file per GPU to
# index it; task/none never opens them.
make_fake_gpus() {
    local i
    for ((i = 0; i < GPUS; i++)); do
        if [[ ! -c /dev/fakegpu$i ]] && ! mknod -m 666 "/dev/fakegpu$i" c 1 3; then
            echo "[slurm-up] cannot create /dev/fakegpu$i (a container without CAP_MKNOD?)" >&2
            exit 1
        fi
    done
}

node_line() {
    # Socket/core layout as slurmd measures it and memory a little below its measure,
    # so the node never drains for a mismatch.
    local hw mem_mb
    hw="$(slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')"
    mem_mb="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    echo "NodeName=$HOST NodeAddr=127.0.0.1 NodeHostname=$HOST ${hw}RealMemory=$mem_mb Gres=gpu:$GPUS State=UNKNOWN"
}

write_config() {
    local dir="$1"
    cat >"$dir/slurm.conf" <<EOF
# Written by .ci/slurm/up.sh: a single-node cluster on loopback.
ClusterName=fpt-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL_DIR/ctld
SlurmdSpoolDir=$SPOOL_DIR/d
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
# Finished jobs stay visible to squeue and scontrol this long (tests read them); the
# plugin's squeue status query needs at least 3 x its first status-check delay.
MinJobAge=900
# Seconds between SIGTERM and SIGKILL on scancel/timeouts.
KillWait=10
ReturnToService=2
SchedulerType=sched/backfill
$(node_line)
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    {
        echo "# Written by .ci/slurm/up.sh: fake GPUs, device files aliasing /dev/null."
        echo "AutoDetect=off"
        echo "NodeName=$HOST Name=gpu File=/dev/fakegpu[0-$((GPUS - 1))]"
    } >"$dir/gres.conf"
}

pid_alive() {
    local file="$1"
    [[ -s $file ]] && kill -0 "$(cat "$file")" 2>/dev/null
}

daemons_running() {
    pid_alive "$RUN_DIR/slurmctld.pid" && pid_alive "$RUN_DIR/slurmd.pid"
}

stop_daemons() {
    "$(dirname "$0")/down.sh" >/dev/null
}

start_daemons() {
    mkdir -p "$LOG_DIR" "$SPOOL_DIR/ctld" "$SPOOL_DIR/d" "$RUN_DIR"
    log "starting slurmctld and slurmd"
    # -i: start even if the saved state from an earlier run does not fit the new config.
    slurmctld -i
    slurmd
}

node_state() {
    sinfo --noheader --nodes="$HOST" --format=%T 2>/dev/null | head -1 || true
}

wait_idle() {
    local start=$SECONDS deadline=$((SECONDS + WAIT_S)) state=""
    while ((SECONDS < deadline)); do
        # (the daemons write their pid files a moment after they fork)
        if ((SECONDS - start > 3)) && ! daemons_running; then
            state="a daemon exited"
            break
        fi
        state="$(node_state)"
        case "$state" in
            idle | mixed | allocated | completing) return 0 ;;
            drain* | down*)
                scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    echo "[slurm-up] node $HOST not ready (state: ${state:-none}); logs in $LOG_DIR:" >&2
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    return 1
}

main() {
    local started=$SECONDS
    install_packages
    ensure_loopback_name
    make_fake_gpus
    mkdir -p "$CONF_DIR"
    local staged
    staged="$(mktemp -d)"
    write_config "$staged"
    if daemons_running && cmp -s "$staged/slurm.conf" "$CONF_DIR/slurm.conf" &&
        cmp -s "$staged/gres.conf" "$CONF_DIR/gres.conf"; then
        log "already running with this configuration"
    else
        if pid_alive "$RUN_DIR/slurmctld.pid" || pid_alive "$RUN_DIR/slurmd.pid"; then
            log "restarting with a new configuration"
            stop_daemons
        fi
        cp "$staged/slurm.conf" "$staged/gres.conf" "$CONF_DIR/"
        start_daemons
    fi
    rm -rf "$staged"
    wait_idle
    log "up in $((SECONDS - started))s: $(sinfo --noheader --format='partition=%P nodes=%D state=%T cpus=%c gres=%G')"
}

main "$@"
