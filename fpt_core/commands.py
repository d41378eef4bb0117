"""`fpt plan`, `fpt status` and `fpt calibrate`: the commands that read a whole study, as
Snakemake reads it.

Each takes the config file as `--configfile FILE` (as snakemake does) or as its first argument,
loads it through Study.load (strict YAML, the schema, the precision fallback, the grid), and
refuses a bad config with the same one-line message as the pipeline.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fpt_core import calibrate, measure, plan, status
from fpt_core.errors import ConfigError, DataError, ResultError
from fpt_core.run import Run, resolve_device
from fpt_core.study import DEFAULT_CONFIG, Study


def _configfile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", metavar="CONFIG", help=f"the config file ({DEFAULT_CONFIG})")
    parser.add_argument("--configfile", help="the same, as snakemake takes it")


def _path(args) -> str:
    if args.config and args.configfile and args.config != args.configfile:
        raise ConfigError(f"configfile: given twice ({args.config} and {args.configfile}); give one")
    return args.config or args.configfile or DEFAULT_CONFIG


def plan_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fpt plan", description="Estimated GPU-hours of a config's grid, per ablation and in total.",
        epilog=f"GPUs: {', '.join(plan.GPUS)}\nexamples: fpt plan config/paper.yaml --gpu h100-sxm\n"
               "          fpt plan --measure --device cpu --max-keys 4",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _configfile(p)
    p.add_argument("--gpu", help=f"the GPU whose stated rate to use ({plan.DEFAULT_GPU}); without "
                                 "it, the study's calibration where `fpt calibrate` wrote one")
    p.add_argument("--measure", action="store_true", help="time real steps on this machine instead")
    p.add_argument("--device", default="auto", help="with --measure: auto, cpu or cuda")
    p.add_argument("--max-keys", type=int, default=6, help="with --measure: step shapes to time (6)")
    p.add_argument("--budget", type=float, default=60.0, help="with --measure: seconds of timing (60)")
    p.add_argument("--cells", action="store_true", help="also print one line per cell")
    args = p.parse_args(argv)
    try:
        study = Study.load(_path(args))
        chosen = args.measure or args.gpu  # a rate the command line asks for
        calibration = None if chosen else study.calibration
        if not chosen and calibration is None and Path(calibrate.calibration_path(study)).is_file():
            print(f"calibration: {calibrate.calibration_path(study)} was measured on another kind "
                  f"of device than the study's jobs (train: device {study.run.device}); not used",
                  file=sys.stderr)
        rate = (measure.MeasuredRate(args.device, args.max_keys, args.budget,
                                     threads=study.resources.threads) if args.measure
                else calibration.rate() if calibration else plan.StatedRate(args.gpu or plan.DEFAULT_GPU))
        df = study.estimate(rate)
    except (ConfigError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cells:
        print(df.drop(columns="seconds").to_string(index=False, float_format=lambda v: f"{v:.3g}") + "\n")
    print(f"{plan.summarize(df, rate.unit)}\nestimated: {rate.describe()}")
    return 0


def status_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fpt status", description="What a running grid is doing: done, running, failed, pending.",
        epilog="example: fpt status config/paper.yaml --watch 60")
    _configfile(p)
    p.add_argument("--watch", type=float, metavar="SECONDS", help="print again every SECONDS")
    args = p.parse_args(argv)
    try:
        study = Study.load(_path(args))
        while True:
            text = status.render(status.collect(study), status.stages(study))
            if args.watch and sys.stdout.isatty():
                print("\033[2J\033[H", end="")  # clear the screen, as watch(1) does
            print(text, flush=True)
            if not args.watch:
                return 0
            time.sleep(args.watch)
            print()
    except (ConfigError, DataError, ResultError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def calibrate_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fpt calibrate",
        description="Parity of the device with the CPU on a few of the study's cells, then the time\n"
                    "and peak memory of every step shape the budget allows, written to\n"
                    "results/<study>/calibration.json for `fpt plan` and the jobs' Slurm requests.\n"
                    "Exit status 2, with a line per cell, where a cell does not fit the device.",
        epilog="examples: fpt calibrate config/paper.yaml --budget 600\n"
               "          fpt calibrate --configfile .test/config.yaml --device cpu",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _configfile(p)
    p.add_argument("--device", default="auto", help="auto (a GPU where there is one), cpu, cuda or cuda:N")
    p.add_argument("--budget", type=float, default=calibrate.DEFAULT_BUDGET,
                   help=f"seconds for parity and timing ({calibrate.DEFAULT_BUDGET:g})")
    p.add_argument("--memory-limit", type=float, metavar="MB",
                   help="the memory a cell may use (default: the device's)")
    p.add_argument("--out", help="write the calibration here instead of results/<study>/calibration.json")
    args = p.parse_args(argv)
    try:
        device = resolve_device(Run(device=args.device).device)
        study = Study.load(_path(args), device=device)
        return calibrate.run(study, device, budget=args.budget, memory_limit_mb=args.memory_limit,
                             out=args.out, say=lambda line: print(line, flush=True))
    except (ConfigError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
