"""`fpt bench`: the speed levers, each measured as a ratio taken side by side in one run.

Shared machines make absolute timings noisy, so every measure alternates its two contenders
repeat by repeat in one process and compares medians. One JSON object per line:

    {"measure", "device", "dtype", "ours", "baseline", "ratio", "unit", "target", "met",
     "peak_mem_mb", ...}

Measures:
- levers (first, always): what this hardware offers (fpt_core.hardware.levers: native bf16,
  fused attention, a usable torch.compile) and the precision the measures run ours in.
- step_throughput: the trainer's step on the model fpt_core.model.build_model gives a cell in
  our fastest precision for this machine (bf16 where the hardware computes it natively: bf16
  autocast, frozen matrices stored in bf16; else fp32), with fused attention and GELU and
  batches from the task as torch tensors, against a step written the way the paper's code
  trains (fp32, eager attention, HF's Python GELU, torch's dropout, a NumPy batch each step, a
  loss.item() every step), same weights, batch and frozen groups: the speed-up a user of this
  machine gets. GPT-2-small-shaped FPT, random weights, on the cifar10 shape (64 tokens of 48)
  and bit-memory (120 tokens of 50, 1000 bits read from the last 20 tokens).
- mfu: the step's useful FLOPs per second (fpt_core.flops.model_flops) over the peak of a large
  matrix product in the same dtype (torch.utils.benchmark), timed between the same repeats;
  the paper-style step's fraction beside it.
- output_only_epoch: an output-layer-only epoch on cached frozen features (fpt_core.features)
  against the trainer path that runs the backbone every step.
- shared_backbone: cells at the paper's bit-task batch (4) that share one frozen backbone,
  stepped together by the trainer's own step (fpt_core.train.step_together; fpt_bench/ensemble.py)
  against the same cells stepped one after another by the trainer's step alone.
- counter_dropout: the trainer's step with counter-based dropout masks (fpt_core/dropout.py)
  against the same model with torch's generator-drawn dropout (nn.Dropout, sdpa's attention
  dropout), on the cifar10 shape: what stateless masks cost.
- dry_run: `snakemake -n --configfile config/paper.yaml --quiet`, in seconds.

A measure this machine cannot take quickly is not taken: a line with "skipped" says why (bf16
where it is emulated, compiling on a CPU under --quick, a --quick budget already spent).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from fpt_bench.ensemble import measure_shared
from fpt_bench.measures import measure_dropout, measure_dry_run, measure_output_only, measure_step
from fpt_bench.report import error_line, info_line
from fpt_bench.timing import Budget
from fpt_bench.workload import MIN_JOB_S, Settings, time_left
from fpt_core import hardware
from fpt_core.errors import ConfigError

MEASURES = ("step", "mfu", "output_only", "shared", "dropout", "dry_run")
QUICK_BUDGET_S = 95.0  # --quick: imports, a build overrunning its share and a loaded machine fit in 2 min
# Relative cost of each --quick job, for its share of the budget left when it starts.
WEIGHTS = {"step_throughput": 3.0, "output_only_epoch": 1.5, "shared_backbone": 1.0,
           "counter_dropout": 1.0, "dry_run": 2.0}
EMULATED_BF16 = "emulated, several times slower than fp32"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fpt bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="few repeats and 3 of the 12 blocks (< 2 min on 2 cores)")
    p.add_argument("--tiny", action="store_true", help="the 2-block gpt2-tiny backbone (smoke test)")
    p.add_argument("--out", help="also write the JSON lines to this file")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default 1 on the CPU: on a shared machine a descheduled "
                        "OpenMP thread stalls the others at every barrier)")
    p.add_argument("--repeats", type=int, help="alternating repeats per measure")
    p.add_argument("--depth", type=int, help="GPT-2 blocks kept (default 3 with --quick, else 12)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(MEASURES)}")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (slow to start on CPU)")
    p.add_argument("--workdir", default=str(Path(__file__).resolve().parent.parent),
                   help="directory holding the Snakefile for the dry run")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    common = {"device": device, "compile": args.compile, "precision": fastest_precision(device)}
    if args.tiny:
        return Settings("gpt2-tiny", None, args.repeats or 2, 1, 64, 2, **common)
    depth = args.depth if args.depth is not None else (3 if args.quick else None)
    if args.quick:
        return Settings("gpt2", depth, args.repeats or 3, 1, 64, 4, **common,
                        budget=Budget(QUICK_BUDGET_S))
    return Settings("gpt2", depth, args.repeats or 5, 2, 512, 4, **common)


def fastest_precision(device: torch.device) -> str:
    """bf16 where the hardware multiplies in it; elsewhere emulated bf16 loses to fp32."""
    return "bf16" if hardware.native_bf16(device) else "fp32"


def levers_line(s: Settings) -> dict:
    return info_line("levers", s.device, met=None, precision=s.precision,
                     **{k: v for k, v in hardware.levers(s.device).items() if k != "device"})


def skips(s: Settings) -> tuple[Settings, list[dict]]:
    """The settings without what cannot be measured quickly here, and a line for each such."""
    lines = []
    if s.precision != "bf16":
        lines.append(info_line(
            "step_throughput", s.device, dtype="bf16 vs fp32",
            skipped=f"bf16 is not native on this {s.device.type}: {EMULATED_BF16}; every "
                    f"measure runs ours in fp32, the fastest precision here"))
    why = None
    if s.compile and not hardware.compile_usable(s.device):
        why = "torch.compile cannot generate code here (no C++ compiler, or no triton on a GPU)"
    elif s.compile and s.budget is not None and s.device.type == "cpu":
        why = ("compiling takes 30-100 s on a CPU, over the --quick budget; "
               "run without --quick to measure it")
    if why:
        lines.append(info_line("step_throughput", s.device, dtype=f"{s.precision} compiled",
                               skipped=why))
        s = replace(s, compile=False)
    return s, lines


def over_budget(s: Settings, measure: str) -> dict | None:
    """A skip line where too little of the --quick budget is left to start `measure`."""
    if s.budget is None or s.budget.left() >= MIN_JOB_S * WEIGHTS[measure]:
        return None
    spent = time.perf_counter() - s.budget.start
    return info_line(measure, s.device, skipped=f"the --quick budget of {s.budget.seconds:.0f} s "
                     f"is spent ({spent:.0f} s so far on this machine); run without --quick")


def plan(s: Settings, only: set[str], workdir: Path):
    """(measure name for errors, thunk) in running order."""
    jobs = []
    for shape in ("cifar10", "bit-memory"):
        if "step" in only or "mfu" in only:
            jobs.append(("step_throughput", lambda shape=shape: filter_lines(
                measure_step(s, shape, "mfu" in only), only)))
    if "output_only" in only:
        jobs.append(("output_only_epoch", lambda: measure_output_only(s)))
    if "shared" in only:
        for shape in ("cifar10", "bit-xor"):
            jobs.append(("shared_backbone", lambda shape=shape: measure_shared(s, shape)))
    if "dropout" in only:
        jobs.append(("counter_dropout", lambda: measure_dropout(s)))
    if "dry_run" in only:
        jobs.append(("dry_run", lambda: measure_dry_run(workdir, time_left(s))))
    return jobs


def filter_lines(lines: list[dict], only: set[str]) -> list[dict]:
    keep = {"step_throughput": "step", "mfu": "mfu"}
    return [ln for ln in lines if keep[ln["measure"]] in only]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    only = set(MEASURES) if not args.only else {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = only - set(MEASURES)
    if unknown:
        raise ConfigError(f"--only: unknown measure {sorted(unknown)[0]!r}; allowed: {', '.join(MEASURES)}")
    threads = args.threads or (1 if not torch.cuda.is_available() or args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    s, skipped = skips(settings_from(args))
    jobs = plan(s, only, Path(args.workdir))
    if s.budget is not None:
        s.budget.weights = [WEIGHTS[name] for name, _ in jobs]
    out = open(args.out, "w") if args.out else None
    failed = False
    try:
        emit([levers_line(s), *skipped], out)
        for name, job in jobs:
            late = over_budget(s, name)
            if s.budget is not None:
                s.budget.begin()
            try:
                lines = [late] if late else job()
            except Exception as err:  # one failing measure must not hide the others
                failed = True
                lines = [error_line(name, s.device, err)]
            emit(lines, out)
            gc.collect()  # the measure's models, before the next one builds its own
    finally:
        if out:
            out.close()
    return 1 if failed else 0


def emit(lines: list[dict], out) -> None:
    for ln in lines:
        text = json.dumps(ln)
        print(text, flush=True)
        if out:
            out.write(text + "\n")
            out.flush()
