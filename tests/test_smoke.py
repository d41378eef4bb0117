"""The smoke run's stand-ins: fixtures read by the real readers, tiny backbones loaded by the
registry as directories, and smoke cells that keep every field but length, data and backbone."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModel

from fpt_core import grid, smoke
from fpt_core.backbones import BACKBONES, build_backbone, n_blocks_of
from fpt_core.backbones.base import TINY, read_marker
from fpt_core.backbones.hf import HFBackbone
from fpt_core.backbones.lstm import LSTMBackbone
from fpt_core.backbones.registry import kind_of, write_tiny_backbones
from fpt_core.cell import make_cell
from fpt_core.errors import ConfigError, DataError
from fpt_core.model import build_model, export_backbone
from fpt_core.run import Run
from fpt_core.tasks import make_spec, make_task
from fpt_core.tasks.images import MNIST
from fpt_core.tasks.listops import ListOps
from fpt_core.train import load_trained, train_cell

ROOT = Path(__file__).resolve().parents[1]
PAPER_TASKS = ["bit-memory", "bit-xor", "listops", "mnist", "cifar10", "cifar10-lra", "remote-homology"]
FILE_TASKS = ["listops", "mnist", "cifar10", "cifar10-lra", "remote-homology"]
TINY_NAMES = [n for n in BACKBONES if n != "gpt2-tiny"]  # gpt2-tiny is small already
FPT = ["input", "positions", "layernorm", "output"]
ALL = ["input", "positions", "layernorm", "attention", "feedforward", "output"]


@pytest.fixture(scope="module")
def smoke_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    data = smoke.write_fixtures(root / "data")
    write_tiny_backbones(root / "backbones", TINY_NAMES)
    return root / "backbones", data


def smoke_cell(smoke_dirs, **values):
    return make_cell(smoke.smoke_cell_values(values, smoke_dirs[0]))


def smoke_run(smoke_dirs) -> Run:
    """The run settings of a smoke study: its fixtures, the CPU."""
    return Run(data_dir=str(smoke_dirs[1]), device="cpu", progress=False)


# ---------------------------------------------------------------- fixtures

@pytest.mark.parametrize("name", PAPER_TASKS)
def test_fixtures_load_through_the_real_readers_in_the_tasks_shapes(smoke_dirs, name):
    values = {"task": name, "max_len": 512 if name == "listops" else None}
    cell = make_cell(smoke.smoke_cell_values(values, smoke_dirs[0]))
    task = make_task(cell, data_dir=smoke_dirs[1])
    spec = task.spec
    x, y = task.train_batch(0, 16)  # the paper grid's largest batch
    per_token = () if spec.input_kind == "tokens" else (spec.input_dim,)
    assert x.shape == (16, spec.n_tokens, *per_token)
    assert y.shape == (16, spec.n_predictions) and 0 <= y.min() and y.max() < spec.n_classes
    if spec.input_kind == "tokens":
        assert 0 <= x.min() and x.max() < spec.input_dim and (x > 0).any()
    held_out = torch.cat([b[1] for b in task.eval_batches(64)])
    assert len(held_out) == 2  # the smoke cell's eval_size
    split = task.training_split()
    if name in FILE_TASKS:
        assert len(split[1]) >= 16
        if name != "remote-homology":  # 1195 folds cannot all fit a tiny fixture
            assert set(split[1].flatten().tolist()) == set(range(10))


def test_fixture_folders_are_marked_rewritten_the_same_and_real_data_is_kept(tmp_path):
    data = smoke.write_fixtures(tmp_path / "data", tasks=["cifar10-lra", "bit-xor"])
    assert sorted(p.name for p in data.iterdir()) == ["cifar10"]  # bit-xor reads no files
    files = sorted((data / "cifar10").rglob("*"))
    before = {f: f.read_bytes() for f in files if f.is_file()}
    assert (data / "cifar10" / smoke.FIXTURE_MARKER).is_file()
    smoke.write_fixtures(data, tasks=["cifar10"])
    assert {f: f.read_bytes() for f in files if f.is_file()} == before
    real = tmp_path / "real"
    (real / "mnist" / "MNIST" / "raw").mkdir(parents=True)
    (real / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"real")
    with pytest.raises(DataError, match="not a smoke fixture"):
        smoke.write_fixtures(real, tasks=["mnist"])
    assert (real / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes() == b"real"
    with pytest.raises(ConfigError, match="task: unknown value 'imagenet'"):
        smoke.write_fixtures(tmp_path / "other", tasks=["imagenet"])


def test_a_fixture_that_fails_half_written_leaves_nothing_in_place(tmp_path, monkeypatch):
    def half(cls, folder, seed=0):
        ListOps.write_fixture(folder, seed)
        raise OSError("disk full")

    monkeypatch.setattr(MNIST, "write_fixture", classmethod(half))
    with pytest.raises(OSError, match="disk full"):
        smoke.write_fixtures(tmp_path, tasks=["mnist"])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- tiny backbones

def real_class(name):
    config = BACKBONES[name].config()
    return LSTMBackbone if kind_of(BACKBONES[name]) is LSTMBackbone else AutoModel._model_mapping[type(config)]


@pytest.mark.parametrize("name", TINY_NAMES)
def test_tiny_backbone_is_the_real_class_narrow_with_every_block(smoke_dirs, name):
    directory = smoke_dirs[0] / name
    assert read_marker(directory)["kind"] == BACKBONES[name].kind
    backbone = build_backbone(str(directory), "random")
    model = backbone if isinstance(backbone, LSTMBackbone) else backbone.model
    assert type(model) is real_class(name)
    assert backbone.n_blocks == n_blocks_of(name) and backbone.hidden == TINY["hidden"]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 10_000 * backbone.n_blocks + 40_000  # a 1024-row position table at most
    if backbone.n_blocks <= 12:
        assert n_params < 200_000


@pytest.mark.parametrize("name", [n for n in TINY_NAMES if BACKBONES[n].weights is not None])
def test_tiny_backbone_loads_as_a_directory_with_every_init(smoke_dirs, name):
    directory = str(smoke_dirs[0] / name)
    saved = load_file(str(Path(directory) / "model.safetensors"))
    built = {init: build_backbone(directory, init, seed=3) for init in ("pretrained", "statistics", "random")}
    weights = {init: dict(b.model.named_parameters()) for init, b in built.items()}
    matrices = [k for k in saved if saved[k].dim() == 2 and k in weights["pretrained"]]
    assert matrices
    for key in matrices:
        assert torch.equal(weights["pretrained"][key], saved[key])
        assert not torch.equal(weights["random"][key], saved[key])
        drawn = weights["statistics"][key]
        assert not torch.equal(drawn, saved[key])
        assert torch.allclose(drawn.mean(), saved[key].mean(), atol=0.02)
        assert torch.allclose(drawn.std(), saved[key].std(), rtol=0.2, atol=1e-3)


def test_a_random_only_backbone_refuses_pretrained_weights_in_a_smoke_cell_too(smoke_dirs):
    for init in ("pretrained", "statistics"):
        with pytest.raises(ConfigError, match="backbone lstm has no pretrained weights"):
            smoke.smoke_cell_values({"backbone": "lstm", "init": init}, smoke_dirs[0])
    assert smoke_cell(smoke_dirs, backbone="lstm", init="random").backbone.endswith("/lstm")


@pytest.mark.parametrize("name, depth", [("gpt2", 1), ("gpt2", 3), ("gpt2", 12), ("gpt2-medium", 24)])
def test_depth_k_keeps_the_first_k_tiny_blocks(smoke_dirs, name, depth):
    directory = str(smoke_dirs[0] / name)
    whole = build_backbone(directory, "pretrained")
    cut = build_backbone(directory, "pretrained", depth=depth)
    assert cut.n_blocks == depth
    kept = dict(cut.model.h.named_parameters())
    assert all(torch.equal(p, kept[k]) for k, p in whole.model.h.named_parameters() if k in kept)
    assert {k.split(".")[0] for k in kept} == {str(i) for i in range(depth)}


def test_a_depth_beyond_the_real_backbone_is_refused_as_in_the_real_run(smoke_dirs):
    with pytest.raises(ConfigError, match="depth: 13 is out of range for backbone gpt2"):
        smoke.smoke_cell_values({"backbone": "gpt2", "depth": 13}, smoke_dirs[0])


@pytest.mark.parametrize("name", TINY_NAMES)
def test_an_fpt_on_each_tiny_backbone_runs_every_task_shape(smoke_dirs, name):
    for task in PAPER_TASKS:
        init = "random" if BACKBONES[name].weights is None else "pretrained"
        cell = smoke_cell(smoke_dirs, task=task, backbone=name, init=init, trainable=FPT)
        spec = make_spec(cell)
        limit = BACKBONES[name].config()
        limit = getattr(limit, "max_position_embeddings", None) if not isinstance(limit, dict) else None
        own_positions = kind_of(BACKBONES[name]) is HFBackbone and name != "smollm2-135m"
        if own_positions and spec.n_tokens > limit:
            with pytest.raises(ConfigError, match=f"holds {limit} positions"):  # as the real one
                build_model(cell, spec)
            continue
        model = build_model(cell, spec).eval()
        x, _ = make_task(cell, data_dir=smoke_dirs[1]).train_batch(0, 1)
        with torch.no_grad():
            logits = model(x)
        assert logits.shape == (1, spec.n_predictions, spec.n_classes)
        assert torch.isfinite(logits).all()


# ---------------------------------------------------------------- smoke cells

def test_smoke_values_change_only_backbone_and_length(smoke_dirs):
    real = dict(task="listops", backbone="gpt2-medium", init="statistics", trainable=["layernorm", "output"],
                depth=6, lr=3e-4, batch_size=16, steps=10000, eval_every=100, seed=2, dropout=0.2,
                max_len=512, tokenizer="fixed", precision="bf16", threshold=0.3)
    out = smoke.smoke_cell_values(real, smoke_dirs[0])
    changed = {k for k in real if out[k] != real[k]} | (out.keys() - real.keys())
    assert changed == {"backbone", "batch_size", "steps", "eval_every", "eval_size"}
    assert Path(out["backbone"]) == smoke_dirs[0] / "gpt2-medium"
    assert (out["steps"], out["batch_size"], out["eval_size"]) == (2, 2, 2)
    smoke_config, _ = smoke.smoke_config({"study": "x", "train": {"device": "cuda", "data_dir": "data"}})
    assert smoke_config["train"]["device"] == "cpu"  # a smoke study runs on the CPU, on fixtures
    assert smoke_config["train"]["data_dir"] == "results/x-smoke/data"
    short = smoke.smoke_cell_values({"steps": 1, "batch_size": 1, "eval_size": 1}, smoke_dirs[0])
    assert (short["steps"], short["batch_size"], short["eval_size"]) == (1, 1, 1)
    assert short["backbone"].endswith("gpt2")  # the cell's default backbone is mapped too


def test_directories_stay_and_tiny_paths_are_never_read_as_hub_ids(smoke_dirs, tmp_path):
    own = smoke.smoke_cell_values({"backbone": "backbones/bitmem-gpt2-abc"}, smoke_dirs[0])
    assert own["backbone"] == "backbones/bitmem-gpt2-abc"
    assert smoke.tiny_backbone_path("tiny", "gpt2") == "./tiny/gpt2"
    with pytest.raises(ConfigError, match="backbones_dir"):
        smoke.tiny_backbone_path("backbones", "gpt2")


def test_every_paper_cell_has_its_own_smoke_cell(smoke_dirs):
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    real = grid.build(config)
    cells = [*real.cells.values(), *real.pretrain.values()]
    assert sorted({c.backbone for c in cells} & set(BACKBONES)) == [
        "bert-base", "gpt2", "gpt2-large", "gpt2-medium", "lstm", "vit-base-in21k-ft-in1k"]
    ids = {make_cell(smoke.smoke_cell_values(c.to_dict(), smoke_dirs[0])).id for c in cells}
    assert len(ids) == len(cells)


def test_pretrain_export_and_a_cell_on_it_run_end_to_end(smoke_dirs, tmp_path):
    pretrain = smoke_cell(smoke_dirs, task="bit-memory", backbone="gpt2", init="random",
                          trainable=ALL, seed=100, batch_size=2, steps=40000)
    summary = train_cell(pretrain, tmp_path / "pretrain", smoke_run(smoke_dirs))
    assert summary["steps_done"].item() == 2 and summary["status"].item() == "finished"
    _, model, _ = load_trained(tmp_path / "pretrain" / "model.pt", data_dir=str(smoke_dirs[1]))
    exported = export_backbone(model, tmp_path / "backbones" / "bitmem-gpt2")
    for task, trainable in (("cifar10-lra", FPT), ("listops", ["output"])):
        cell = smoke_cell(smoke_dirs, task=task, backbone=str(exported), init="statistics",
                          trainable=trainable, batch_size=16, steps=600000, max_len=512)
        summary = train_cell(cell, tmp_path / task, smoke_run(smoke_dirs))
        curve = json.loads((tmp_path / task / "progress.json").read_text())
        assert curve["state"] == "finished" and summary["steps_done"].item() == 2
        assert summary["params_total"].item() < 200_000
