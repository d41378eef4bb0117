#!/usr/bin/env bash
# Stop the single-node Slurm cluster that .ci/slurm/up.sh started, cancelling any
# jobs still queued or running. Packages and configuration stay; up.sh starts it again.
set -euo pipefail

RUN_DIR=/run/slurm
WAIT_S=20

alive() {
    [[ -s $RUN_DIR/$1.pid ]] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null
}

# Cancel jobs while slurmd is still there to kill their processes: with
# proctrack/linuxproc nothing else would.
cancel_jobs() {
    alive slurmctld && alive slurmd || return 0
    local jobs
    jobs="$(squeue --noheader --format=%i 2>/dev/null || true)"
    [[ -n $jobs ]] || return 0
    echo "[slurm-down] cancelling jobs: $(echo $jobs)"
    scancel $jobs 2>/dev/null || true
    local deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)) &&
        [[ -n "$(squeue --noheader --states=RUNNING,COMPLETING,PENDING --format=%i 2>/dev/null)" ]]; do
        sleep 1
    done
}

stop() {
    local name="$1" file="$RUN_DIR/$1.pid" pid
    [[ -s $file ]] || return 0
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        local deadline=$((SECONDS + WAIT_S))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "[slurm-down] $name ($pid) ignored SIGTERM for ${WAIT_S}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "[slurm-down] stopped $name ($pid)"
    fi
    rm -f "$file"
}

cancel_jobs
stop slurmd
stop slurmctld
