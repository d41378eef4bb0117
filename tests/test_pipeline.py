"""The Snakemake pipeline through its command line: job counts, dedup, config errors, a run.

Expected job counts come from an independent resolution of the config written here (layer the
dicts, fill in Cell's defaults, canonicalise the trainable groups, drop the fields that are not
part of a cell's identity, count distinct), not from fpt_core.grid.
"""
import copy
import dataclasses
import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fpt_core import results
from fpt_core.aggregate import collect
from fpt_core.cell import FPT_GROUPS, GROUPS, Cell
from fpt_core.grid import build
from fpt_core.results import ResultError
from fpt_core.study import Study

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "profiles", "environment.yml", "paper")


# ------------------------------------------------------------------ independent expected counts

def _layers_for(cfg, spec, row_values, combo):
    defaults = cfg.get("defaults") or {}
    task = combo.get("task", (row_values or {}).get("task",
                     (spec.get("set") or {}).get("task", defaults.get("task"))))
    return [defaults, (cfg.get("per_task") or {}).get(task), spec.get("set"),
            (spec.get("per_task") or {}).get(task), row_values, combo]


def _identity(layers):
    values = {f.name: f.default for f in dataclasses.fields(Cell)}
    for layer in layers:
        values.update(layer or {})
    groups = values["trainable"]
    if isinstance(groups, str):
        aliases = {"all": GROUPS, "fpt": FPT_GROUPS}
        groups = aliases.get(groups) or groups.replace("+", ",").split(",")
    values["trainable"] = tuple(g for g in GROUPS if g in groups)
    return tuple(sorted((k, repr(v)) for k, v in values.items()))


def expected_cells(cfg):
    """Distinct cells of every ablation, and the ablation's own (cells, points) counts."""
    cells, per_ablation = set(), {}
    for name, spec in cfg["ablations"].items():
        spec = spec or {}
        axes = {**(cfg.get("axes") or {}), **(spec.get("axes") or {})}
        mine, points = set(), 0
        for row, row_values in (spec.get("rows") or {None: {}}).items():
            for combo in itertools.product(*axes.values()):
                combo = dict(zip(axes, combo))
                layers = _layers_for(cfg, spec, row_values, combo)
                resolved = {k: v for layer in layers for k, v in (layer or {}).items()}
                if any(all((resolved | {"label": row}).get(k) in (v if isinstance(v, list) else [v])
                           for k, v in rule.items()) for rule in spec.get("exclude", [])):
                    continue
                mine.add(_identity(layers))
                points += 1
        per_ablation[name] = (mine, points)
        cells |= mine
    return cells, per_ablation


# ------------------------------------------------------------------------------- running it

def workdir(tmp_path: Path, cfg: dict | None = None) -> Path:
    """A copy of the workflow (not of results/) with `cfg` as config/config.yaml."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "config").mkdir()
    if cfg is None:
        shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    else:
        (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path


def snakemake(where: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=where, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{done.stdout}")
    return done


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run; every training job (one rule per pack, named
    train_<pack>) counted under "train"."""
    table = output.split("Job stats:")[-1]
    counts: dict[str, int] = {}
    for m in re.finditer(r"^([\w.+-]+)\s+(\d+)$", table, re.M):
        name = "train" if m[1].startswith("train_") else m[1]
        counts[name] = counts.get(name, 0) + int(m[2])
    return counts


def train_cells(output: str) -> set[str]:
    """Cells a (dry) run trains: their ids in brackets in each training job's message."""
    return set(re.findall(r"\[([0-9a-f]{12})\]", output))


def pack_sizes(output: str) -> list[int]:
    return [int(n) for n in re.findall(r": train (\d+) cells \(", output)]


def trained(output: str) -> int:
    """How many cells the run's training jobs train."""
    assert job_counts(output).get("train", 0) == len(pack_sizes(output))
    return sum(pack_sizes(output))


def tiny(**ablations) -> dict:
    return {
        "defaults": {"backbone": "gpt2-tiny", "init": "random", "steps": 60, "eval_every": 20,
                     "eval_size": 50, "batch_size": 16},
        "axes": {"task": ["bit-xor"], "seed": [0, 1]},
        "ablations": ablations,
        "train": {"device": "cpu"},
        "figures": {"reported": "paper/reported.csv"},
    }


# ---------------------------------------------------------------------------- dry-run counts

def test_default_grid_dry_run_trains_each_distinct_cell_once(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cells, per_ablation = expected_cells(cfg)
    points = sum(n for _, n in per_ablation.values())
    assert len(cells) < points  # ablations share cells (headline's fpt is modality's language ...)
    out = snakemake(workdir(tmp_path), "-n").stdout
    counts = job_counts(out)
    # every cell once, the two pretrainings too, each alone (the cells on their exports wait)
    assert trained(out) == len(cells) + len(cfg["pretrain"]) == len(train_cells(out))
    assert pack_sizes(out).count(1) >= len(cfg["pretrain"]) == counts["export_backbone"]
    assert len(pack_sizes(out)) < len(cells) and max(pack_sizes(out)) <= cfg["train"]["pack_cells"]
    assert counts["prepare_data"] == len(cfg["data"]) and counts["draw_figures"] == 1
    for name in cfg["ablations"]:
        assert f"figures/default/{name}.png" in out and f"figures/default/{name}.md" in out


@pytest.mark.slow
def test_paper_grid_dry_run_lists_every_cell(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    cells, _ = expected_cells(cfg)
    where = workdir(tmp_path)
    shutil.copy(ROOT / "config" / "paper.yaml", where / "config" / "paper.yaml")
    out = snakemake(where, "-n", "--configfile", "config/paper.yaml").stdout
    assert trained(out) == len(cells) + len(cfg["pretrain"]) == len(train_cells(out))
    assert max(pack_sizes(out)) <= cfg["train"]["pack_cells"]
    # each job's Slurm time from its own estimate (runtime: auto), not one day for every job
    runtimes = [int(m) for m in re.findall(r": train \d+ cells \([^)]*, (\d+) min\)", out)]
    assert len(set(runtimes)) > 3 and min(runtimes) < 24 * 60
    assert 4 * min(runtimes) < max(runtimes) <= 7 * 24 * 60
    assert f"figures/paper/{next(reversed(cfg['ablations']))}.png" in out


@pytest.mark.slow
def test_the_paper_smoke_run_lists_every_paper_cell_in_its_own_study(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    cells, _ = expected_cells(cfg)
    where = workdir(tmp_path)
    shutil.copy(ROOT / "config" / "paper.yaml", where / "config" / "paper.yaml")
    out = snakemake(where, "-n", "--configfile", "config/paper.yaml", "--config", "smoke=true").stdout
    assert trained(out) == len(cells) + len(cfg["pretrain"]) == len(train_cells(out))
    counts = job_counts(out)
    assert counts["smoke_backbone"] >= 5 and counts["prepare_data"] == len(cfg["data"])
    assert "figures/paper-smoke/headline.png" in out and "results/paper-smoke/aggregate.parquet" in out
    written = re.findall(r"^\s+output: (.*)$", out, re.M)
    paths = [p.strip() for line in written for p in line.split(",")]
    assert paths and all(p.startswith(("results/paper-smoke/", "figures/paper-smoke/", "backbones/"))
                         for p in paths), sorted(set(paths))[:10]
    assert "results/paper-smoke/data/.prepared/mnist.done" in out


def test_the_critics_smoke_run_lists_every_critics_cell_in_its_own_study(tmp_path):
    where = workdir(tmp_path)
    for name in ("paper.yaml", "critics.yaml"):  # critics.yaml extends paper.yaml
        shutil.copy(ROOT / "config" / name, where / "config" / name)
    real = Study.load(ROOT / "config" / "critics.yaml").grid
    out = snakemake(where, "-n", "--configfile", "config/critics.yaml", "--config", "smoke=true").stdout
    assert trained(out) == len(real.cells) + len(real.pretrain) == len(train_cells(out))
    assert "select" in str(real.ablations["tuned-lr"]) and "figures/critics-smoke/tuned-lr.png" in out
    assert "figures/critics-smoke/replaced-blocks.png" in out


@pytest.mark.slow
def test_studies_switch_on_a_clone_with_the_committed_results(tmp_path):
    """The paper study lists all its cells beside the committed default results, the default
    study none, and switching back and forth lists no training for either's finished cells."""
    where = workdir(tmp_path)
    shutil.copy(ROOT / "config" / "paper.yaml", where / "config" / "paper.yaml")
    shutil.copytree(ROOT / "results", where / "results")
    shutil.copytree(ROOT / "figures", where / "figures")
    paper, _ = expected_cells(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()))
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    for _ in range(2):
        out = snakemake(where, "-n").stdout
        assert "train_" not in out, out[-2000:]
        out = snakemake(where, "-n", "--configfile", "config/paper.yaml").stdout
        assert trained(out) == len(paper) + len(cfg["pretrain"])
        assert "results/paper/aggregate.parquet" in out and "results/default/" not in out
        assert "figures/paper/headline.png" in out and "figures/default/" not in out


def test_a_new_ablation_in_the_config_alone_adds_its_cells_and_figure(tmp_path):
    base = tiny(headline={"rows": {"fpt": {}, "full-transformer": {"trainable": "all"}}})
    before = set(build(base).cells)  # a dry run lists exactly the grid's cells (test above)
    grown = copy.deepcopy(base)
    grown["ablations"]["my-new-one"] = {
        "rows": {"fpt": {}, "output-only": {"trainable": ["output"]}},
        "axes": {"lr": [1e-3, 1e-2]},
        "label": "{row}-lr{lr}",
    }
    out = snakemake(workdir(tmp_path, grown), "-n").stdout
    after = train_cells(out)
    cells, per_ablation = expected_cells(grown)
    new_cells, new_points = per_ablation["my-new-one"]
    assert before < after and len(after) == len(cells) == trained(out)
    # its fpt at lr 1e-3 is headline's fpt: shared, trained once
    assert len(after - before) == len(new_cells - per_ablation["headline"][0]) == new_points - 2
    assert "figures/default/my-new-one.png" in out and "figures/default/my-new-one.md" in out


@pytest.mark.parametrize("change, message", [
    (lambda c: c["ablations"]["headline"]["rows"]["fpt"].update(init="xavier"),
     "config ablations.headline.rows.fpt.init: unknown value 'xavier'; allowed: pretrained, random, statistics"),
    (lambda c: c["ablations"]["headline"]["rows"]["fpt"].update(backbone="gpt5"),
     "ablations.headline.rows.fpt.backbone: unknown value 'gpt5'; allowed: gpt2,"),
])
def test_bad_config_stops_before_any_job_with_one_line(tmp_path, change, message):
    cfg = tiny(headline={"rows": {"fpt": {}}})
    change(cfg)
    done = snakemake(workdir(tmp_path, cfg), "-n", check=False)
    assert done.returncode != 0
    errors = done.stdout
    line = next(line for line in errors.splitlines() if message in line)
    assert re.match(r"^config/config\.yaml, line \d+: ", line), line  # the line, then the key
    assert "Traceback" not in errors and "train_" not in errors


def test_a_yaml_slip_in_the_default_config_names_its_line(tmp_path):
    where = workdir(tmp_path)
    path = where / "config" / "config.yaml"
    lines = path.read_text().splitlines()
    slip = next(i for i, line in enumerate(lines) if line.startswith("  threads:"))
    lines[slip] = " " + lines[slip]
    path.write_text("\n".join(lines) + "\n")
    done = snakemake(where, "-n", check=False)
    assert done.returncode != 0
    found = re.search(r"config/config\.yaml, line (\d+): not valid YAML", done.stdout)
    # YAML names the line where the slip stops making sense: the slipped one or the next
    assert found and int(found[1]) in (slip + 1, slip + 2), done.stdout[-1500:]


# ------------------------------------------------------------------------------ aggregation

def write_cell(cells_dir: Path, cell_id: str, acc: float) -> None:
    summary = {c: None for c in results.SUMMARY_COLUMNS}
    summary.update(cell_id=cell_id, status="finished", final_test_acc=acc, task="bit-xor", seed=0)
    results.write_parquet(pd.DataFrame([summary]), cells_dir / cell_id / results.SUMMARY)
    point = {c: 0.1 for c in results.CURVE_COLUMNS}
    point.update(cell_id=cell_id, step=10, test_acc=acc)
    curve = pd.DataFrame([point])
    results.write_parquet(curve, cells_dir / cell_id / results.CURVE)


def dirs(where: Path, rows: list[dict]) -> dict[str, Path]:
    """Every member cell's directory under `where`."""
    return {row["cell_id"]: where / row["cell_id"] for row in rows}


def members(*rows):
    return [{"cell_id": c, "ablation": a, "experiment": a, "label": label, "label_order": 0,
             "figure": "bars", "task": "bit-xor", "seed": 0} for c, a, label in rows]


def test_aggregate_joins_each_membership_to_its_summary(tmp_path):
    write_cell(tmp_path, "aaaaaaaaaaaa", 0.5)
    write_cell(tmp_path, "bbbbbbbbbbbb", 0.7)
    rows = members(("aaaaaaaaaaaa", "headline", "fpt"), ("aaaaaaaaaaaa", "modality", "language"),
                   ("bbbbbbbbbbbb", "headline", "full-transformer"))
    table, curves, problems = collect(dirs(tmp_path, rows), rows)
    assert len(table) == 3 and problems == [] and len(curves) == 2
    assert list(table.loc[table["label"] == "language", "final_test_acc"]) == [0.5]


def test_aggregate_reads_each_cell_from_its_own_directory(tmp_path):
    # a grid cell that is also a pretraining lives with the pretrainings, not with the cells
    write_cell(tmp_path / "cells", "aaaaaaaaaaaa", 0.5)
    write_cell(tmp_path / "pretrain", "bbbbbbbbbbbb", 0.7)
    rows = members(("aaaaaaaaaaaa", "headline", "fpt"), ("bbbbbbbbbbbb", "headline", "full"))
    where = {"aaaaaaaaaaaa": tmp_path / "cells" / "aaaaaaaaaaaa",
             "bbbbbbbbbbbb": tmp_path / "pretrain" / "bbbbbbbbbbbb"}
    table, _, problems = collect(where, rows)
    assert problems == [] and sorted(table["final_test_acc"]) == [0.5, 0.7]


def test_aggregate_names_missing_and_unreadable_cells(tmp_path):
    write_cell(tmp_path, "aaaaaaaaaaaa", 0.5)
    (tmp_path / "cccccccccccc").mkdir()
    (tmp_path / "cccccccccccc" / results.SUMMARY).write_bytes(b"not parquet")
    rows = members(("aaaaaaaaaaaa", "a", "x"), ("bbbbbbbbbbbb", "a", "y"))
    with pytest.raises(ResultError, match=r"1 cell\(s\) not usable: .*bbbbbbbbbbbb/summary.parquet \(missing\)"):
        collect(dirs(tmp_path, rows), rows)
    table, _, problems = collect(dirs(tmp_path, rows), rows, partial=True)
    assert list(table["status"]) == ["finished", "missing"] and len(problems) == 1
    assert list(table["task"]) == ["bit-xor", "bit-xor"] and table["final_test_acc"].isna()[1]
    nothing, curves, _ = collect(dirs(tmp_path / "empty", rows), rows, partial=True)
    assert set(nothing["status"]) == {"missing"} and "final_test_acc" in nothing and curves.empty
    with pytest.raises(ResultError, match="cccccccccccc/summary.parquet: unreadable"):
        rows += members(("cccccccccccc", "a", "z"))
        collect(dirs(tmp_path, rows), rows, partial=True)


# ------------------------------------------------------------------------------- end to end

def fresh_clone(src: Path, dst: Path) -> Path:
    """What a git clone holds (no metadata, logs, data, backbones, weights), each file's time
    that of the checkout, written in the order git checks out (sorted by path)."""
    ignored = shutil.ignore_patterns(".snakemake", "logs", "data", "backbones", "model.pt",
                                     "checkpoint*.pt", ".venv", ".git", "__pycache__", "*.egg-info")
    shutil.copytree(src, dst, ignore=ignored)
    files = sorted((p for p in dst.rglob("*") if p.is_file()), key=lambda p: str(p.relative_to(dst)))
    now = time.time()
    for i, path in enumerate(files):
        os.utime(path, (now + i * 0.001, now + i * 0.001))
    return dst


def snapshot(where: Path, *folders: str) -> dict[str, bytes]:
    """Every file under `folders` of `where`, by path: what a test expects to find unchanged."""
    return {str(p.relative_to(where)): p.read_bytes() for folder in folders
            for p in sorted((where / folder).rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_small_grid_end_to_end_then_nothing_to_do_and_fresh_clone_trains_nothing(tmp_path):
    cfg = tiny(
        headline={"rows": {"fpt": {}, "full-transformer": {"trainable": "all"}}},
        **{"compute-efficiency": {"figure": "curves", "rows": {"fpt-steps-to-converge": {}}}},
    )
    cfg["attention"] = {"ablation": "headline", "label": "fpt", "seed": 0, "tasks": ["bit-xor"]}
    cfg["cka"] = {"tasks": ["bit-xor"], "examples": 100, "backbones": {"a": {}, "b": {"seed": 1}},
                  "trained": {"ablation": "headline", "label": "fpt", "seed": 0}}
    where = workdir(tmp_path / "run", cfg)
    snakemake(where, "--cores", "2")
    table = pd.read_parquet(where / "results" / "default" / "aggregate.parquet")
    assert len(table) == 6 and set(table["status"]) == {"finished"}
    for name in ("headline.png", "headline.md", "compute-efficiency.png", "attention-bit-xor.png",
                 "cka.png", "cka.md"):
        assert (where / "figures" / "default" / name).stat().st_size > 0
    assert len(list((where / "results" / "cells").glob("*/attention-1.parquet"))) == 1
    assert len(list((where / "results" / "cka").glob("bit-xor-*.parquet"))) == 1
    assert "Nothing to be done" in snakemake(where, "-n").stdout

    clone = fresh_clone(where, tmp_path / "clone")
    committed = snapshot(clone, "results", "figures")
    first = snakemake(clone, "--cores", "2").stdout
    assert "train_" not in first and "rule cka:" not in first and "restore_model" not in first
    assert snapshot(clone, "results", "figures") == committed  # redrawn, if at all, byte for byte
    shutil.rmtree(clone / "figures")
    out = snakemake(clone, "--cores", "1", "figures").stdout
    assert "train_" not in out and (clone / "figures" / "default" / "headline.png").exists()
    assert (clone / "figures" / "default" / "cka.png").exists()
    assert "Nothing to be done" in snakemake(clone, "-n", "--cores", "2").stdout
    # The clone trained nothing, so Snakemake's statistics know no training job; the compute
    # table in its report still counts every cell of the study from the summaries.
    snakemake(clone, "--report", "report.html")
    report = (clone / "report.html").read_text()
    assert "compute.md" in report and "headline.md" in report and "cka.png" in report
    compute = (clone / "figures" / "default" / "compute.md").read_text()
    cells = table.drop_duplicates("cell_id")
    hours = cells["wall_time_s"].sum() / 3600
    assert re.search(rf"\| whole study +\| all +\| +{len(cells)} \| +0 \| +{hours:.2f} \|", compute)
