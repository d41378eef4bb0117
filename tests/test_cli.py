import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _runs import FPT, fpt


def test_params_match_the_paper_for_cifar10_on_gpt2():
    result = fpt("params", "task=cifar10", "backbone=gpt2", "init=random")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts["input"] == 37_632
    assert counts["output"] == 7_690
    assert counts["layernorm"] == 38_400
    assert counts["positions"] == 49_152
    assert counts["trainable"] == 37_632 + 7_690 + 38_400 + 49_152
    assert counts["total"] > 85_000_000


def test_lists_name_every_task_its_options_and_the_offline_backbones():
    from fpt_core.tasks import TASKS

    lines = fpt("tasks").stdout.splitlines()
    named = {line.split()[0]: line for line in lines if not line.startswith(" ")}
    assert list(named) == list(TASKS)
    assert all(TASKS[name].description in line for name, line in named.items())
    assert "(trivial baseline 75%)" in named["bit-memory"]
    options = [line.split()[0] for line in lines if line.startswith(" ")]
    assert options == [f"{o}:" for cls in TASKS.values() for o in cls.options]
    backbones = fpt("backbones").stdout
    for name in ("gpt2", "gpt2-xl", "minilm-l6", "smollm2-135m", "vit-base", "bert-base", "lstm"):
        assert name in backbones


@pytest.mark.parametrize("args, key", [
    (["train", "lrr=1"], "lrr"),
    (["train", "task=imagenet"], "task"),
    (["train", "backbone=gpt5"], "backbone"),
    (["train", "init=xavier"], "init"),
    (["train", "trainable=input,bias"], "trainable"),
    (["train", "steps=ten"], "steps"),
    (["params", "task=cifar10", "backbone=gpt2", "depth=13"], "depth"),
    (["data", "imagenet"], "task"),
    (["frobnicate"], "command"),
])
def test_bad_input_is_one_line_naming_the_key(args, key):
    result = fpt(*args)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {key}:")


def test_missing_data_says_which_files_to_put_where(tmp_path):
    result = fpt("train", "task=cifar10", "backbone=gpt2-tiny", "init=random", f"data_dir={tmp_path}",
                 f"out={tmp_path / 'out'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(tmp_path) in result.stderr and "cifar10" in result.stderr.lower()


@pytest.mark.parametrize("command", ["train", "params", "tasks", "backbones", "data", "plan", "status", "bench"])
def test_every_command_has_help(command):
    result = fpt(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: fpt {command}") or f"fpt {command}" in result.stdout


def test_train_help_lists_every_field_with_its_allowed_values():
    out = fpt("train", "--help").stdout
    assert "example: fpt train task=" in out
    init = next(line for line in out.splitlines() if line.split()[:1] == ["init"])
    assert "str" in init and "[pretrained | random | statistics]" in init
    assert "val_size" in out and "[budget | converged]" in out
    assert "Ctrl-C" in out and "metrics.csv" in out


def test_the_catalog_that_listings_print_is_the_registries():
    from fpt_core import catalog
    from fpt_core.backbones import BACKBONES
    from fpt_core.cell import make_cell
    from fpt_core.tasks import TASKS, make_spec

    assert list(catalog.TASKS) == list(TASKS)
    for name, row in catalog.TASKS.items():  # a default cell's shape
        spec = make_spec(make_cell({"task": name, "backbone": "gpt2-tiny", "init": "random"}))
        assert (spec.input_kind, spec.n_tokens, spec.input_dim, spec.n_predictions, spec.n_classes,
                spec.chance) == row[:5] + (row.chance,), name
        assert (row.description, row.baseline, row.options) == (
            TASKS[name].description, TASKS[name].baseline, TASKS[name].options)
    # the backbone families (none@<base>, ...) are listed by their pattern, not registered by name
    assert {n: s.summary for n, s in BACKBONES.items()} == {
        n: summary for n, summary in catalog.BACKBONES.items() if "@" not in n}


def test_listing_backbones_and_help_do_not_import_torch():
    # `fpt tasks` reads the task classes, and so imports torch
    code = ("import sys; from fpt_core.cli import main; main(['backbones']); main([]); "
            "print('torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stderr.strip() == "False"


def test_a_malformed_cell_file_is_one_line_with_its_line_number(tmp_path):
    cell = tmp_path / "cell.yaml"
    cell.write_text("task: bit-xor\n  steps: 3\n")
    result = fpt("train", str(cell))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "cell.yaml, line 2: not valid YAML" in result.stderr


def test_ctrl_c_writes_a_checkpoint_says_one_line_and_the_rerun_resumes(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    args = [*FPT, "train", "task=bit-xor", "backbone=gpt2-tiny",
            "init=random", "steps=100000", "eval_every=50", "progress=false", f"out={out}"]

    def run_until(marker: Path | str, log: Path) -> tuple[int, str]:
        """Start the command, press Ctrl-C once `marker` (a file, or a line in its stderr) shows."""
        with open(log, "w") as err:
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, text=True)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                    marker.exists() if isinstance(marker, Path) else marker in log.read_text()):
                time.sleep(0.2)
            time.sleep(1.0)  # a few steps more
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        return process.returncode, log.read_text()

    code, stderr = run_until(out / "metrics.csv", tmp_path / "first.log")
    assert code == 128 + signal.SIGINT
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("stopped: SIGINT: checkpoint written at step")
    assert json.loads((out / "progress.json").read_text())["state"] == "interrupted"
    stopped_at = int(stderr.split("at step ")[-1].split()[0])
    assert stopped_at >= 50

    code, stderr = run_until("resumed from step", tmp_path / "second.log")
    assert f"resumed from step {stopped_at} " in stderr and code == 128 + signal.SIGINT


def test_results_get_the_mode_the_umask_gives(tmp_path):
    import os
    import stat

    out = tmp_path / "run"
    code = (f"import os; os.umask(0o022); from fpt_core.cli import main; main(['train', "
            f"'task=bit-xor', 'backbone=gpt2-tiny', 'init=random', 'steps=4', 'eval_every=2', "
            f"'progress=false', 'out={out}'])")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    for name in ("summary.parquet", "curve.parquet", "model.pt", "metrics.csv", "progress.json"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o644, name


def test_a_hub_backbone_offline_is_one_line_saying_what_to_do(tmp_path):
    result = fpt("train", "task=bit-xor", "backbone=gpt2", "init=pretrained", "steps=2",
                 f"out={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: backbone gpt2: cannot load")
    assert "backbone=DIR" in lines[0]


def test_the_papers_switches_are_in_train_help_and_refused_in_one_line():
    out = fpt("train", "--help").stdout
    for field, allowed in (("padding", "[left | right]"), ("homology_long", "[truncate | drop]"),
                           ("random_init", "[scaled | plain]")):
        line = next(line for line in out.splitlines() if line.split()[:1] == [field])
        assert allowed in line, line
    result = fpt("train", "task=listops", "padding=middle")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: padding: unknown value 'middle'; allowed: left, right")


def test_tensorboard_reads_every_evaluation_of_a_run_stopped_by_ctrl_c_and_resumed(tmp_path):
    """metrics=csv,tensorboard through the real command: TensorBoard's reader finds the loss and
    accuracy of every evaluation, once each, across a Ctrl-C and the resumed run."""
    import signal
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = [*FPT, "train", "task=bit-xor", "backbone=gpt2-tiny",
            "init=random", "steps=300", "eval_every=50", "eval_size=64", "progress=false",
            "metrics=csv,tensorboard", f"out={out}"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 128 + signal.SIGINT
    subprocess.run(args, check=True, capture_output=True, text=True)

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train_loss", "test_loss", "test_acc", "train_acc"} <= set(events.Tags()["scalars"])
    logged = [(e.step, e.value) for e in events.Scalars("test_acc")]
    assert sorted(step for step, _ in logged) == [50, 100, 150, 200, 250, 300]
    csv = pd.read_csv(out / "metrics.csv")
    assert list(csv["step"]) == [50, 100, 150, 200, 250, 300]
    assert dict(logged) == pytest.approx(dict(zip(csv["step"], csv["test_acc"])))


def wandb_records(path: Path):
    """The records of a W&B offline run file (.wandb), parsed with W&B's own protobuf schema.

    The file is a LevelDB log (a 7-byte ':W&B' header, then 32 KiB blocks of records, each with
    a 7-byte header and possibly split across blocks); W&B's Python reader of it was removed in
    0.22, and `wandb sync` reads it only to upload, so the container is read here.
    """
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pieces = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # the block's padding
            pos += left
            continue
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def test_wandb_offline_run_holds_every_evaluation_across_ctrl_c_and_resume(tmp_path):
    """metrics=csv,wandb through the real command with W&B offline: the runs it writes under the
    cell's directory carry the cell's id and config, and between them every evaluation's
    metrics once, as in metrics.csv."""
    import signal
    import time

    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    args = [*FPT, "train", "task=bit-xor", "backbone=gpt2-tiny",
            "init=random", "steps=300", "eval_every=50", "eval_size=64", "progress=false",
            "metrics=csv,wandb", f"out={out}"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 128 + signal.SIGINT
    subprocess.run(args, check=True, capture_output=True, text=True, env=env)

    runs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 2, runs  # the stopped run and the resumed one, both kept
    cell_id = pd.read_parquet(out / "summary.parquet")["cell_id"].iloc[0]
    logged = {}
    for run in runs:
        for record in wandb_records(run):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert record.run.run_id == cell_id
                config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
                assert config["task"] == "bit-xor" and config["steps"] == 300
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                       for i in record.history.item}
                assert row["_step"] not in logged, f"step {row['_step']} logged twice"
                logged[row["_step"]] = row
    csv = pd.read_csv(out / "metrics.csv")
    assert sorted(logged) == list(csv["step"]) == [50, 100, 150, 200, 250, 300]
    for column in ("train_loss", "test_loss", "test_acc", "train_acc"):
        assert [logged[s][column] for s in csv["step"]] == pytest.approx(list(csv[column]))
