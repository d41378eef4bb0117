"""A machine's GPUs shared out among the jobs running on it, without a scheduler.

Snakemake's local executor only counts `--resources gpu=K`: it lets K jobs run at once but
names no device, so all K would start on cuda:0. A job that holds GPUs calls `claim` before
anything touches CUDA. It takes as many free GPUs as it holds, each under an exclusive advisory
lock (fcntl.flock) on one file per GPU, and keeps them for its whole life; CUDA_VISIBLE_DEVICES
then names only those GPUs. The kernel drops a process's locks when it ends, however it ends
(even by SIGKILL), so the next job gets the GPU.

The locks live in a directory on this machine, not in the workdir: GPUs belong to a machine,
so runs from two checkouts must take turns on them, and a workdir on a shared filesystem would
make two machines' GPU 0 one lock. The default is <tmp>/fpt-gpu-locks; FPT_GPU_LOCKS moves it.

Which GPUs: those CUDA_VISIBLE_DEVICES names where it is set, else those `nvidia-smi -L` lists.
torch.cuda.device_count() is not used because it falls back to the CUDA runtime where NVML
fails, which starts CUDA in this process, and CUDA then ignores CUDA_VISIBLE_DEVICES. For tests
on a machine without GPUs, FPT_FAKE_GPUS=K pretends the machine has K: the claiming and
CUDA_VISIBLE_DEVICES are the same, and the cell still trains on the device its config names.
FPT_GPU_SLOT is set to the claimed GPUs, and each cell's summary records it (column gpu_slot).

A Slurm job that was given its GPUs keeps them as they are. A Slurm allocation with more GPUs
than the job holds (Snakemake's local executor inside salloc) is shared out like a workstation,
with locks of its own, since another allocation on the node may number other GPUs the same way.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from fpt_core.errors import ConfigError

FAKE = "FPT_FAKE_GPUS"
LOCKS = "FPT_GPU_LOCKS"
SLOT = "FPT_GPU_SLOT"
VISIBLE = "CUDA_VISIBLE_DEVICES"
POLL_S = 0.5


class Claim:
    """The GPUs a process holds: their names as CUDA_VISIBLE_DEVICES gives them, and the open
    lock files that hold them (closing one hands its GPU back)."""

    def __init__(self, slots: list[str], fds: list[int]):
        self.slots, self.fds = slots, fds

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def visible_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES would name them."""
    fake = os.environ.get(FAKE)
    if fake:
        if not fake.isdigit():
            raise ConfigError(f"{FAKE}={fake!r}: expected how many GPUs to pretend, e.g. 2")
        return [str(i) for i in range(int(fake))]
    visible = os.environ.get(VISIBLE)
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i in range(len(re.findall(r"^GPU \d+:", listed, re.M)))]


def given_by_scheduler(gpus: int) -> bool:
    """A Slurm job whose CUDA_VISIBLE_DEVICES names no more GPUs than it holds: Slurm chose them."""
    if "SLURM_JOB_ID" not in os.environ:
        return False
    visible = os.environ.get(VISIBLE)
    return visible is None or len([g for g in visible.split(",") if g.strip()]) <= gpus


def lock_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "fpt-gpu-locks"
    base = Path(os.environ.get(LOCKS) or default)
    if not base.is_dir():
        base.mkdir(parents=True, exist_ok=True)
        if base == default:  # every user's runs on this machine take turns on its GPUs
            with contextlib.suppress(PermissionError):  # another user made it first
                os.chmod(base, 0o1777)
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        base = base / f"slurm-{job}"
        base.mkdir(exist_ok=True)
    return base


def try_take(directory: Path, pool: list[str], gpus: int) -> Claim | None:
    """`gpus` GPUs of `pool` that no other process holds, locked; None (holding nothing, so that
    two jobs never each hold part of what the other waits for) where fewer are free."""
    slots, fds = [], []
    for gpu in pool:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", gpu)
        # read-only suffices for flock, so another user's runs can lock a file this one made
        fd = os.open(directory / f"gpu-{name}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        slots.append(gpu)
        fds.append(fd)
        if len(slots) == gpus:
            return Claim(slots, fds)
    Claim(slots, fds).release()
    return None


def claim(gpus: int, log: Callable[[str], None] = print) -> Claim | None:
    """Hold `gpus` free GPUs of this machine for the rest of this process, waiting for them if
    none are free, and make them the only ones CUDA sees. Nothing where the job holds no GPU,
    where a scheduler chose its GPUs, or where this machine has none. Call it before anything
    touches CUDA."""
    if gpus <= 0 or given_by_scheduler(gpus):
        return None
    pool = visible_gpus()
    if not pool:
        log(f"{_now()} no GPU to claim: {VISIBLE} names none, or nvidia-smi is missing or "
            f"lists none")
        return None
    if gpus > len(pool):
        raise ConfigError(f"train: gpus: each job holds {gpus} GPUs, but this machine has "
                          f"{len(pool)} ({', '.join(pool)})")
    directory = lock_dir()
    held = try_take(directory, pool, gpus)
    if held is None:
        log(f"{_now()} waiting for {gpus} of GPUs {','.join(pool)} (locks in {directory})")
    while held is None:
        time.sleep(POLL_S)
        held = try_take(directory, pool, gpus)
    names = ",".join(held.slots)
    os.environ[VISIBLE] = os.environ[SLOT] = names
    log(f"{_now()} claimed GPU {names} ({VISIBLE}={names}, locks in {directory})")
    # Logged, not released: the kernel releases the locks after the process, and its CUDA
    # context, are gone.
    atexit.register(lambda: log(f"{_now()} done with GPU {names}; it is free once this process exits"))
    return held


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
