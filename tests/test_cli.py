import json
import subprocess
import sys

import pytest


def fpt(*args):
    return subprocess.run([sys.executable, "-m", "fpt_core.cli", *args], capture_output=True, text=True)


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


def test_lists_name_every_task_and_the_offline_backbones():
    tasks = fpt("tasks").stdout.split()
    assert {"bit-memory", "bit-xor", "listops", "mnist", "cifar10", "cifar10-lra",
            "remote-homology", "digits"} <= set(t.split()[0] for t in fpt("tasks").stdout.splitlines())
    backbones = fpt("backbones").stdout
    for name in ("gpt2", "gpt2-xl", "minilm-l6", "smollm2-135m", "vit-base", "bert-base", "lstm"):
        assert name in backbones
    assert tasks


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
    result = fpt("train", "task=mnist", "backbone=gpt2-tiny", "init=random", f"data_dir={tmp_path}",
                 f"out={tmp_path / 'out'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(tmp_path) in result.stderr and "mnist" in result.stderr.lower()
