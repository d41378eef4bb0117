"""The everyday uses, done as a user does them: on a fresh clone of the repository with its
committed results and no .snakemake/, run the README's commands. Add an ablation to a copy of
the default config; start a study of your own; make a slip in a config; a job that fails."""
import subprocess
from pathlib import Path

import _runs
import pandas as pd
import pytest
import yaml
from test_pipeline import fresh_clone, snakemake, snapshot, train_cells, trained

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clone(tmp_path):
    return fresh_clone(ROOT, tmp_path / "clone")


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def write(where: Path, name: str, config: dict) -> str:
    (where / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return name


def fpt(where: Path, *args: str) -> subprocess.CompletedProcess:
    return _runs.fpt(*args, cwd=where)


def test_the_first_command_trains_nothing_and_changes_nothing(clone):
    committed = snapshot(clone, "results", "figures")
    out = snakemake(clone, "--cores", "2").stdout
    assert "train_" not in out and "restore_model" not in out and "rule cka:" not in out
    assert snapshot(clone, "results", "figures") == committed
    assert "Nothing to be done" in snakemake(clone, "-n").stdout


def test_an_ablation_added_to_a_copy_of_the_default_config_trains_its_cell_alone(clone):
    config = default_config()
    config["ablations"]["lr-check"] = {"rows": {"lr3e-3": {"lr": 3.0e-3}},
                                       "axes": {"task": ["bit-xor"], "seed": [0]}}
    copy = write(clone, "mine.yaml", config)
    committed = snapshot(clone, "figures")
    dry = snakemake(clone, "-n", "--cores", "2", "--configfile", copy).stdout
    assert trained(dry) == 1 and len(train_cells(dry)) == 1
    assert "rule aggregate:" in dry and "figures/default/lr-check.png" in dry
    snakemake(clone, "--cores", "2", "--configfile", copy)
    assert (clone / "figures" / "default" / "lr-check.png").stat().st_size > 0
    table = pd.read_parquet(clone / "results" / "default" / "aggregate.parquet")
    assert set(table.loc[table["ablation"] == "lr-check", "status"]) == {"finished"}
    now = snapshot(clone, "figures")
    # every ablation's figure as committed; the study's compute and stopping tables count the new cell
    study_wide = {f"figures/default/{name}" for name in ("compute.md", "compute.png", "compute.tex", "stopping.md")}
    assert {path for path, data in committed.items() if now[path] != data} == study_wide
    assert "| lr-check " in (clone / "figures" / "default" / "compute.md").read_text()
    assert "Nothing to be done" in snakemake(clone, "-n", "--configfile", copy).stdout


def test_a_study_of_your_own_trains_nothing_it_shares_and_draws_every_figure(clone):
    config = {**default_config(), "study": "lrsweep"}
    copy = write(clone, "lrsweep.yaml", config)
    dry = snakemake(clone, "-n", "--cores", "2", "--configfile", copy).stdout
    assert "train_" not in dry and "restore_model" not in dry and "rule cka:" not in dry
    snakemake(clone, "--cores", "2", "--configfile", copy)
    drawn = {p.name for p in (clone / "figures" / "lrsweep").iterdir()}
    for name in config["ablations"]:
        assert {f"{name}.png", f"{name}.md", f"{name}.tex"} <= drawn, name
    assert {"cka.png", "compute.md", "attention-bit-xor.png", "attention-bit-memory.png"} <= drawn
    ours = pd.read_parquet(clone / "results" / "lrsweep" / "aggregate.parquet")
    theirs = pd.read_parquet(clone / "results" / "default" / "aggregate.parquet")
    assert set(ours["cell_id"]) == set(theirs["cell_id"])


@pytest.mark.parametrize("slip", ["rows misspelt", "axes out-dented"])
def test_a_config_slip_is_refused_alike_by_fpt_plan_and_snakemake(clone, slip):
    text = (ROOT / "config" / "config.yaml").read_text()
    if slip == "rows misspelt":
        text = text.replace("  headline:\n    title", "  headline:\n    rwos: {}\n    title", 1)
    else:
        text = text.replace("    axes:\n      task: [bit-xor]\n", "  axes:\n    task: [bit-xor]\n", 1)
    (clone / "slip.yaml").write_text(text)
    plan = fpt(clone, "plan", "slip.yaml")
    run = snakemake(clone, "-n", "--configfile", "slip.yaml", check=False)
    assert plan.returncode == 2 and run.returncode != 0
    message = plan.stderr.strip().removeprefix("error: ")
    assert plan.stderr.count("\n") == 1 and "slip.yaml, line " in message
    assert message in run.stdout and "Traceback" not in run.stdout
    expected = "unknown key" if slip == "rows misspelt" else "is a key of an ablation"
    assert expected in message
    assert fpt(clone, "plan", "config/paper.yaml").returncode == 0  # as snakemake --configfile takes it


def test_a_failed_figure_job_leaves_every_committed_figure_as_it_was(clone):
    (clone / "broken.csv").write_text("a,b\n1,2\n")  # not the paper's numbers: drawing fails
    config = {**default_config(), "figures": {"metric": "final_test_acc", "reported": "broken.csv"}}
    copy = write(clone, "broken.yaml", config)
    committed = snapshot(clone, "figures")
    run = snakemake(clone, "--cores", "2", "--configfile", copy, check=False)
    assert run.returncode != 0 and "Error in rule draw_figures" in run.stdout
    assert snapshot(clone, "figures") == committed
