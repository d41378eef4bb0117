"""Backbones: registry, offline weights, inits, group mapping, depth, export, errors."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from fpt_core.backbones import backbone_names, build_backbone, is_known_backbone, resolve
from fpt_core.backbones.offline import minilm_dir
from fpt_core.cell import FPT_GROUPS, GROUPS, ConfigError
from fpt_core.model import build_model, export_backbone, param_counts

torch.set_num_threads(1)

BIT_XOR = dict(name="bit-xor", input_kind="vector", input_dim=1, n_tokens=10, n_classes=2,
               n_readout=5, n_predictions=5, chance=0.5, threshold=1.0)


def make_spec(**overrides):
    return SimpleNamespace(**{**BIT_XOR, **overrides})


def make_cell(**overrides):
    values = dict(backbone="gpt2-tiny", init="random", trainable=FPT_GROUPS, depth=None, seed=0,
                  dropout=0.1, random_init="scaled")
    return SimpleNamespace(**{**values, **overrides})


@pytest.fixture(scope="module")
def minilm():
    return build_backbone("minilm-l6", "pretrained")


def test_registry_names():
    names = backbone_names()
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt2-tiny", "smollm2-135m",
                 "minilm-l6", "vit-base", "bert-base", "lstm"):
        assert name in names and is_known_backbone(name)


def test_known_names_ids_and_directories(tmp_path):
    assert is_known_backbone("openai-community/gpt2")
    assert is_known_backbone(str(tmp_path))
    assert is_known_backbone("backbones/gpt2-bitmem")  # a directory the pipeline will write
    assert not is_known_backbone("gpt3")


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="backbone: unknown value 'gpt3'"):
        build_backbone("gpt3", "random")


def test_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(str(tmp_path / "nothing" / "here"))


def test_unreachable_hub_says_how_to_provide_a_local_copy():
    with pytest.raises(RuntimeError, match="backbone=DIR"):
        build_backbone("fpt-ablations-test/no-such-model", "pretrained")


@pytest.mark.parametrize("name", ["gpt2-tiny", "lstm"])
@pytest.mark.parametrize("init", ["pretrained", "statistics"])
def test_random_only_backbones_refuse_pretrained_weights(name, init):
    with pytest.raises(ConfigError, match="^init: .*allowed: random"):
        build_backbone(name, init)


def test_depth_beyond_backbone_names_depth_and_range():
    # checked against the offline config, before any weights are fetched
    with pytest.raises(ConfigError, match=r"^depth: 13 .*gpt2.* allowed: 1\.\.12"):
        build_backbone("gpt2", "pretrained", depth=13)


def test_minilm_pretrained_weights_are_the_packaged_ones(minilm):
    params = dict(minilm.named_parameters())
    with safe_open(str(minilm_dir() / "model.safetensors"), "pt") as f:
        for key in ("encoder.layer.3.intermediate.dense.weight", "embeddings.position_embeddings.weight"):
            assert torch.equal(params[f"model.{key}"], f.get_tensor(key))


def test_minilm_groups_and_bit_xor_counts():
    model = build_model(make_cell(backbone="minilm-l6", init="pretrained"), make_spec())
    groups = {n: model.group_of(n) for n, _ in model.named_parameters()}
    assert groups["backbone.model.embeddings.LayerNorm.weight"] == "layernorm"
    assert groups["backbone.model.embeddings.position_embeddings.weight"] == "positions"
    assert groups["backbone.model.embeddings.token_type_embeddings.weight"] == "positions"
    assert groups["backbone.model.embeddings.word_embeddings.weight"] is None
    assert groups["backbone.model.encoder.layer.0.attention.output.dense.weight"] == "attention"
    assert groups["backbone.model.encoder.layer.0.output.dense.weight"] == "feedforward"
    assert model.pos_table is None
    counts = param_counts(model)
    assert counts["input"] == 1 * 384 + 384
    assert counts["positions"] == 10 * 384 + 384  # 10 position rows and token type 0
    assert counts["layernorm"] == (1 + 2 * 6) * 2 * 384
    assert counts["output"] == 384 * 2 + 2
    assert counts["total"] == sum(counts[g] for g in GROUPS)
    assert model(torch.randn(2, 10, 1)).shape == (2, 5, 2)


def test_statistics_init_keeps_each_tensors_mean_and_std(minilm):
    stats = build_backbone("minilm-l6", "statistics", seed=1)
    again = build_backbone("minilm-l6", "statistics", seed=1)
    pre = dict(minilm.named_parameters())
    checked = 0
    for name, p in stats.named_parameters():
        q = pre[name]
        assert torch.equal(p, dict(again.named_parameters())[name])  # seeded
        if q.numel() < 10_000:
            continue
        assert not torch.equal(p, q)
        assert abs(p.mean() - q.mean()) < 5 * q.std() / q.numel() ** 0.5 + 1e-6, name
        assert abs(p.std() / q.std() - 1) < 0.05, name
        checked += 1
    assert checked > 30


def test_depth_keeps_the_first_pretrained_blocks(minilm):
    short = build_backbone("minilm-l6", "pretrained", depth=2)
    assert short.n_blocks == 2 and short.model.config.num_hidden_layers == 2
    full = dict(minilm.named_parameters())
    for name, p in short.named_parameters():
        assert torch.equal(p, full[name])
    assert not any(".layer.2." in name for name, _ in short.named_parameters())


def test_rotary_backbone_gets_a_zero_position_table():
    model = build_model(make_cell(backbone="smollm2-135m", depth=1), make_spec())
    groups = model.named_groups()
    assert [n for n, _ in groups["positions"]] == ["pos_table"]
    assert model.pos_table.shape == (10, 576) and torch.count_nonzero(model.pos_table) == 0
    assert model.pos_table.requires_grad
    counts = param_counts(model)
    assert counts["positions"] == 10 * 576
    assert counts["layernorm"] == 3 * 576  # two RMSNorms in the block, one final
    assert all("layernorm" in n or n.endswith("model.norm.weight") for n, _ in groups["layernorm"])
    assert model(torch.randn(2, 10, 1)).shape == (2, 5, 2)
    maps = model.attention_maps(torch.randn(2, 10, 1))
    assert len(maps) == 1 and maps[0].shape == (2, 9, 10, 10)


@pytest.mark.slow
def test_smollm2_converts_once_to_a_fast_safetensors_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FPT_CACHE", str(tmp_path))
    first = build_backbone("smollm2-135m", "pretrained", depth=2)
    cache = tmp_path / "backbones" / "smollm2-135m"
    assert (cache / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert [p.name for p in tmp_path.joinpath("backbones").iterdir()] == ["smollm2-135m"]
    start = time.perf_counter()
    second = build_backbone("smollm2-135m", "pretrained", depth=2)
    assert time.perf_counter() - start < 5
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lstm_groups_counts_and_causality():
    model = build_model(make_cell(backbone="lstm"), make_spec(n_tokens=6)).eval()
    counts = param_counts(model)
    assert counts["positions"] == 0 and model.pos_table is None
    assert counts["feedforward"] == counts["attention"] == 3 * (768 * 3072 + 3072)
    assert counts["layernorm"] == 3 * (2 * 2 * 3072 + 2 * 768)
    names = {n: model.group_of(n) for n, _ in model.named_parameters()}
    assert names["backbone.layers.0.i2h.weight"] == "feedforward"
    assert names["backbone.layers.0.h2h.weight"] == "attention"
    assert names["backbone.layers.2.ln_cell.weight"] == "layernorm"
    x = torch.randn(1, 6, 1)
    x2 = x.clone()
    x2[:, 3] += 1
    with torch.no_grad():
        h, h2 = model.backbone(model.embed(x)), model.backbone(model.embed(x2))
    assert torch.equal(h[:, :3], h2[:, :3]) and not torch.equal(h[:, 3:], h2[:, 3:])
    with pytest.raises(RuntimeError, match="no attention"):
        model.attention_maps(x)


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "lstm", "vit-base"])
def test_export_then_load_as_pretrained(tmp_path, backbone):
    model = build_model(make_cell(backbone=backbone, depth=1), make_spec())
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.5)  # stands for training
        if model.pos_table is not None:
            model.pos_table.normal_()
    out = tmp_path / "exported"
    export_backbone(model, out)
    export_backbone(model, out)  # replacing an export leaves no temporary directories
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]
    loaded = build_model(make_cell(backbone=str(out), init="pretrained"), make_spec())
    assert type(loaded.backbone) is type(model.backbone)
    a, b = model.backbone.state_dict(), loaded.backbone.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if model.pos_table is not None:
        assert torch.equal(loaded.pos_table, model.pos_table)
    assert param_counts(loaded) == param_counts(model)


def test_a_random_backbone_cut_to_depth_k_is_the_first_k_blocks_of_the_whole_one():
    whole = build_backbone("gpt2-tiny", "random", seed=3)
    cut = build_backbone("gpt2-tiny", "random", seed=3, depth=1)
    assert cut.n_blocks == 1
    mine = dict(cut.named_parameters())
    shared = [n for n in mine if ".0." in n or ".h." not in n]
    assert shared
    for name, p in whole.named_parameters():
        if name in mine:
            assert torch.equal(p, mine[name]), name


def test_plain_random_init_draws_gpt2s_output_projections_at_002_as_the_papers_transformers():
    from transformers import GPT2Config

    from fpt_core.backbones import registry

    # Wider than gpt2-tiny so the spread of one draw is measured to a few per cent.
    wide = registry.BackboneSpec("wide-gpt2", "hf", "test", lambda: GPT2Config(
        n_layer=8, n_embd=256, n_head=4, n_positions=64, vocab_size=16))
    registry.BACKBONES["wide-gpt2"] = wide
    try:
        scaled = dict(build_backbone("wide-gpt2", "random", seed=1).named_parameters())
        plain = dict(build_backbone("wide-gpt2", "random", seed=1, random_init="plain").named_parameters())
    finally:
        del registry.BACKBONES["wide-gpt2"]
    projections = [n for n in plain if n.endswith("c_proj.weight")]
    assert len(projections) == 16
    for name in projections:
        assert abs(plain[name].std().item() - 0.02) < 0.001, name
        assert abs(scaled[name].std().item() - 0.02 / 4) < 0.0003, name  # 0.02 / sqrt(2 x 8)
    for name in plain.keys() - set(projections):
        assert torch.equal(plain[name], scaled[name]), name  # only the projections are redrawn


def test_random_init_is_taken_from_the_cell():
    from fpt_core.cell import make_cell
    from fpt_core.tasks import make_spec

    values = {"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random"}
    plain = make_cell({**values, "random_init": "plain"})
    model = build_model(plain, make_spec(plain))
    weight = model.backbone.model.h[0].mlp.c_proj.weight
    default = build_model(make_cell(values), make_spec(plain)).backbone.model.h[0].mlp.c_proj.weight
    assert weight.std() > 1.6 * default.std()  # 0.02 vs 0.02 / sqrt(2 x 2)
