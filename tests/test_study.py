"""The study: every command gets the same cells from the same config (the Snakefile, fpt plan,
fpt status), the study's paths, and a description whose hash moves with what the figures show."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fpt_core import hardware, plan, status
from fpt_core.errors import ConfigError
from fpt_core.study import Study

ROOT = Path(__file__).resolve().parents[1]


def tiny(**extra) -> dict:
    return {
        "defaults": {"backbone": "gpt2-tiny", "init": "random", "steps": 4, "eval_every": 2,
                     "eval_size": 8, "batch_size": 2},
        "axes": {"task": ["bit-xor"], "seed": [0, 1]},
        "ablations": {"headline": {"rows": {"fpt": {}, "full": {"trainable": "all"}}}},
        "train": {"device": "cpu"},
        **extra,
    }


def test_bf16_falls_back_alike_in_the_study_the_plan_and_status(tmp_path, monkeypatch):
    """Where bf16 is not native, precision_fallback makes bf16 cells fp32 cells (other ids):
    every command must name the fallen-back ids, not the ones a bf16 machine would train."""
    config = tiny(defaults={**tiny()["defaults"], "precision": "bf16"},
                  train={"device": "cpu", "precision_fallback": True})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(hardware, "native_bf16", lambda *a, **k: True)
    native = set(Study.load(path).grid.cells)
    monkeypatch.setattr(hardware, "native_bf16", lambda *a, **k: False)
    study = Study.load(path)
    fallen = set(study.grid.cells)
    assert fallen.isdisjoint(native) and len(fallen) == len(native) == 4
    assert {c.precision for c in study.grid.cells.values()} == {"fp32"}
    monkeypatch.chdir(tmp_path)
    assert set(status.collect(Study.load(path))["cell_id"]) == fallen
    assert set(plan.estimate(Study.load(path).grid, plan.StatedRate())["cell_id"]) == fallen


def test_the_snakefile_names_the_same_ids_as_the_study(tmp_path):
    """A dry run in a process where bf16 is not native lists exactly the study's ids there."""
    where = tmp_path / "w"
    where.mkdir()
    for name in ("Snakefile", "workflow", "profiles", "environment.yml", "paper"):
        src = ROOT / name
        (os.symlink(src, where / name))
    config = tiny(defaults={**tiny()["defaults"], "precision": "bf16"},
                  train={"device": "cpu", "precision_fallback": True})
    (where / "config").mkdir()
    (where / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    script = ("import sys; import fpt_core.hardware as h; h.native_bf16 = lambda *a, **k: False;"
              "from snakemake.cli import main; sys.argv = ['snakemake', '-n', '--cores', '1'];"
              "main()")
    out = subprocess.run([sys.executable, "-c", script], cwd=where, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    listed = set(__import__("re").findall(r"\[([0-9a-f]{12})\]", out.stdout + out.stderr))
    os.chdir(where)
    try:
        hardware_native = hardware.native_bf16
        hardware.native_bf16 = lambda *a, **k: False
        expected = set(Study.load("config/config.yaml").grid.cells)
    finally:
        hardware.native_bf16 = hardware_native
        os.chdir(ROOT)
    assert listed == expected, out.stdout[-2000:] + out.stderr[-2000:]


def test_paths_of_a_study_and_of_its_smoke_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = Study.from_config({**tiny(), "study": "mine"})
    cell = next(iter(study.grid.cells))
    assert (study.results_dir, study.figures_dir) == ("results/mine", "figures/mine")
    assert study.cell_dir(cell) == f"results/cells/{cell}" and not study.smoke
    smoke = Study.from_config({**tiny(), "study": "mine"}, smoke_run=True)
    assert smoke.name == "mine-smoke" and smoke.smoke
    assert smoke.cell_dir(next(iter(smoke.grid.cells))).startswith("results/mine-smoke/cells/")
    assert set(smoke.grid.cells).isdisjoint(study.grid.cells)
    assert smoke.run.device == "cpu" and smoke.data_dir.startswith("results/mine-smoke/")


def test_the_description_moves_with_what_the_figures_show_and_only_with_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = Study.from_config(tiny()).description_file
    assert Study.from_config(tiny()).description_file == base
    retitled = tiny()
    retitled["ablations"]["headline"]["title"] = "another title"
    assert Study.from_config(retitled).description_file != base
    grown = tiny()
    grown["ablations"]["more"] = {"rows": {"lr": {"lr": 3e-3}}}
    assert Study.from_config(grown).description_file != base
    moved = tiny(train={"device": "cpu", "threads": 2, "mem_mb": 999})
    assert Study.from_config(moved).description_file == base  # how jobs run draws nothing


def test_packs_hold_the_unfinished_cells_and_a_pretraining_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny(pretrain={"bits": {"task": "bit-xor", "trainable": "all"},
                            "unused": {"task": "bit-memory", "trainable": "all"}},
                  train={"device": "cpu", "pack_cells": 3})
    config["ablations"]["headline"]["rows"]["bits"] = {"backbone": "backbones/bits", "init": "pretrained"}
    study = Study.from_config(config)
    assert list(study.grid.pretrain) == ["bits"]  # nothing loads the other: it does not train
    packs = study.packs
    pretrain = next(iter(study.pretrain_ids))
    assert [pretrain] in [[c.id for c in cells] for cells in packs.values()]
    packed = [c.id for cells in packs.values() for c in cells]
    assert sorted(packed) == sorted(study.cells()) and max(map(len, packs.values())) <= 3
    done = next(iter(study.grid.cells))
    Path(study.summary(done)).parent.mkdir(parents=True)
    Path(study.summary(done)).write_text("")
    assert done not in [c.id for cells in Study.from_config(config).packs.values() for c in cells]


def test_references_to_tasks_and_rows_name_the_key_the_user_wrote():
    with pytest.raises(ConfigError, match=r"^config attention\.tasks\[0\]: unknown value 'no-such-task'"):
        Study.from_config(tiny(attention={"ablation": "headline", "label": "fpt",
                                          "tasks": ["no-such-task"]}))
    with pytest.raises(ConfigError, match=r"^config cka\.tasks\[0\]: unknown value 'no-such-task'"):
        Study.from_config(tiny(cka={"tasks": ["no-such-task"], "backbones": {"a": {}}}))
    with pytest.raises(ConfigError, match=r"^config attention: no cell of ablation 'headline', row "
                                          r"'nope', seed 0 on bit-xor"):
        Study.from_config(tiny(attention={"ablation": "headline", "label": "nope",
                                          "tasks": ["bit-xor"]}))
    with pytest.raises(ConfigError, match=r"^config data\.listops\.n_trian: unknown option"):
        Study.from_config(tiny(data={"listops": {"n_trian": 5}}))


def test_a_misplaced_block_names_its_line_and_what_happened(tmp_path):
    path = tmp_path / "slip.yaml"
    config = tiny()
    ablations = config.pop("ablations")
    text = yaml.safe_dump(config, sort_keys=False) + yaml.safe_dump({"ablations": ablations})
    text += "  axes:\n    task: [bit-xor]\n"  # an ablation's axes, out-dented by two spaces
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        Study.load(path)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t == "  axes:")
    message = str(error.value)
    assert message.startswith(f"{path}, line {line}: config ablations.axes: 'axes' is a key of an ablation")
    assert "'headline'" in message and "\n" not in message
    (tmp_path / "typo.yaml").write_text(text.replace("  axes:\n    task: [bit-xor]\n", "")
                                        .replace("    rows:", "    rwos:"))
    with pytest.raises(ConfigError, match=r"line \d+: config ablations\.headline\.rwos: unknown key"):
        Study.load(tmp_path / "typo.yaml")


def test_the_study_json_holds_the_members_and_figure_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = Study.from_config(tiny())
    description = json.loads(json.dumps(study.description()))
    assert {m["cell_id"] for m in description["members"]} == set(study.grid.cells)
    assert description["ablations"]["headline"]["kind"] == "bars"
