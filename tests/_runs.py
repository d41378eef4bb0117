"""`fpt train` as a user runs it, and as a job killed mid-run would leave it."""
import signal
import subprocess
import sys
import time
from pathlib import Path

from fpt_core import results

FPT = (sys.executable, "-m", "fpt_core.cli")


def fpt(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*FPT, *args], capture_output=True, text=True, **kw)


def kill_after_first_checkpoint(args: list[str], out: Path) -> None:
    """Start `fpt ARGS out=OUT` and SIGKILL it once its first checkpoint is on disk."""
    proc = subprocess.Popen([*FPT, *args, f"out={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / results.CHECKPOINT).exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
