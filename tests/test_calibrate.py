"""fpt calibrate: every step shape of a study timed into its calibration file, the parity lines,
cells that do not fit refused one line each, and `fpt plan` and the train jobs' Slurm requests
read from the file."""
import contextlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import _runs
import pytest

from fpt_core import commands, measure
from fpt_core.flops import cell_work
from fpt_core.study import Study

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ".test/config.yaml"
FILE = "results/test/calibration.json"
GIB = 1 << 30


def fpt(where: Path, *args: str) -> subprocess.CompletedProcess:
    return _runs.fpt(*args, cwd=where, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


@contextlib.contextmanager
def inside(where: Path):
    cwd = os.getcwd()
    os.chdir(where)
    try:
        yield
    finally:
        os.chdir(cwd)


def plan(where: Path) -> tuple[str, str]:
    """`fpt plan` of the test study in `where`, in this process (its imports already paid):
    stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with inside(where), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert commands.plan_main(["--configfile", CONFIG]) == 0, err.getvalue()
    return out.getvalue(), err.getvalue()


def total_hours(text: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith("total (distinct cells)"))
    return float(line.split()[-1].replace(",", ""))


def study_keys(where: Path) -> dict[str, list[str]]:
    """Key text -> cell ids, computed here from the study as the Snakefile loads it."""
    with inside(where):
        study = Study.load(CONFIG)
    keys: dict[str, list[str]] = {}
    for cell in study.cells().values():
        key = json.dumps(cell_work(cell, study.grid, study.run.feature_cache).key)
        keys.setdefault(key, []).append(cell.id)
    return keys


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A copy of the test study, its stated plan, then `fpt calibrate` run on it."""
    where = tmp_path_factory.mktemp("calibrate")
    for name in (".test", "paper"):
        shutil.copytree(ROOT / name, where / name)
    stated, _ = plan(where)
    done = fpt(where, "calibrate", "--configfile", CONFIG, "--device", "cpu", "--budget", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    return where, stated, done.stdout


def test_the_file_holds_every_step_shape_of_the_study_timed(calibrated):
    where, _, out = calibrated
    data = json.loads((where / FILE).read_text())
    keys = study_keys(where)
    assert {json.dumps(e["key"]) for e in data["steps"]} == set(keys)
    assert all(e["measured"] and e["seconds"] > 0 and e["peak_bytes"] > 0 for e in data["steps"])
    assert {e["cells"] for e in data["steps"]} == {len(ids) for ids in keys.values()}
    assert data["device_type"] == "cpu" and data["torch"] and data["date"] and data["budget_s"] == 60
    assert data["fit"]["a"] > 0 or data["fit"]["b"] > 0
    assert out.count("\nstep    ") == len(keys)


def test_parity_lines_agree_exactly_on_the_cpu_and_cover_both_input_kinds(calibrated):
    where, _, out = calibrated
    lines = [line for line in out.splitlines() if line.startswith("parity  ")]
    checks = json.loads((where / FILE).read_text())["parity"]
    assert len(lines) == len(checks) >= 2
    assert all(line.endswith(")") and ": agreed (loss 0 " in line for line in lines)
    assert all(c["loss_diff"] == 0 and c["update_diff"] == 0 for c in checks)
    kinds = " ".join(lines)
    for kind in ("vector input", "tokens input", "frozen", "fully trained", "gpt2 family"):
        assert kind in kinds


def test_plan_uses_the_calibration_and_its_hours_follow_it(calibrated, tmp_path):
    where, stated, _ = calibrated
    shutil.copytree(where, tmp_path / "w")
    where = tmp_path / "w"
    assert "estimated: stated" in stated and "GPU-hours" in stated
    once, _ = plan(where)
    assert "estimated: calibrated on " in once and FILE in once
    assert "CPU-hours" in once and "calibrated cpu" in once
    assert total_hours(once) != total_hours(stated)
    data = json.loads((where / FILE).read_text())
    for entry in data["steps"]:
        entry["seconds"] *= 2
    data["fit"]["a"] *= 2
    data["fit"]["b"] *= 2
    (where / FILE).write_text(json.dumps(data))
    twice, _ = plan(where)
    assert total_hours(twice) == pytest.approx(2 * total_hours(once), rel=0.01)
    data["device_type"] = "cuda"  # measured elsewhere than the study's jobs run (device: cpu)
    (where / FILE).write_text(json.dumps(data))
    other, note = plan(where)
    assert "estimated: stated" in other and "not used" in note


def test_train_jobs_ask_for_runtime_and_memory_from_the_calibration(calibrated, tmp_path, monkeypatch):
    shutil.copytree(calibrated[0], tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    data = json.loads(Path(FILE).read_text())
    Path(FILE).unlink()
    study = Study.load(CONFIG)
    pack = next(iter(study.packs.values()))
    assert study.runtime(pack) == 10 * len(pack) and study.mem_mb(pack) == 4000  # the config's
    for entry in data["steps"]:
        entry["seconds"], entry["host_peak_bytes"] = 60.0, 0
    data["fit"].update(a=0.0, b=0.0)
    Path(FILE).write_text(json.dumps(data))
    study = Study.load(CONFIG)
    steps = sum(c.steps for c in pack)
    # 1.5 x the calibrated minutes + 10 of start-up, rounded up to 5
    assert study.runtime(pack) == -(-(1.5 * steps + 10) // 5) * 5
    base = study.mem_mb(pack)
    for entry in data["steps"]:
        entry["host_peak_bytes"] = GIB
    Path(FILE).write_text(json.dumps(data))
    study = Study.load(CONFIG)
    assert study.mem_mb(pack) - base == pytest.approx(1.5 * 1024, abs=100)  # 1.5 x the peak


def test_a_cell_that_does_not_fit_is_refused_one_line_each(tmp_path, monkeypatch, capsys):
    for name in (".test", "paper"):
        shutil.copytree(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)

    def probe(cell, spec, device, *args, **kwargs):  # fully trained cells need 8 GiB, others 1 MiB
        return measure.Probe(0.01, 8 * GIB if "attention" in cell.trainable else 1 << 20, 1 << 20)

    monkeypatch.setattr(measure, "probe_step", probe)
    study = Study.load(CONFIG)
    too_big = {c.id for c in study.cells().values() if "attention" in c.trainable}
    assert 0 < len(too_big) < len(study.cells())
    code = commands.calibrate_main(["--configfile", CONFIG, "--device", "cpu", "--budget", "20",
                                    "--memory-limit", "4096"])
    out = capsys.readouterr().out
    refused = [line for line in out.splitlines() if line.startswith("does not fit: ")]
    assert code == 2
    assert sorted(line.split("[")[1].split("]")[0] for line in refused) == sorted(too_big)
    assert all("(measured), cpu has 4.00 GiB" in line for line in refused)
    assert not Path(FILE).exists()
