"""Backbones: registry, kinds, offline weights, inits, group mapping, depth, export, errors,
Tan et al.'s baselines."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import time

import pytest
import torch
import torch.nn.functional as F
from _models import make_cell, make_spec, register_tiny
from safetensors import safe_open
from transformers import GPT2Config

from fpt_core.backbones import (
    BACKBONES,
    backbone_names,
    build_backbone,
    is_known_backbone,
    n_blocks_of,
    registry,
    resolve,
)
from fpt_core.backbones.base import TINY, BackboneSpec, read_marker
from fpt_core.backbones.offline import minilm_dir
from fpt_core.backbones.vit import ViTBackbone
from fpt_core.cell import GROUPS, ConfigError
from fpt_core.cell import make_cell as real_cell
from fpt_core.model import build_model, export_backbone, param_counts
from fpt_core.tasks import make_spec as task_spec

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def minilm():
    return build_backbone("minilm-l6", "pretrained")


def test_registry_names():
    names = backbone_names()
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt2-tiny", "smollm2-135m",
                 "minilm-l6", "vit-base", "vit-base-in21k-ft-in1k", "bert-base", "lstm"):
        assert name in names and is_known_backbone(name)


def test_the_papers_vit_is_the_in1k_fine_tuned_checkpoint_and_vit_base_the_21k_one():
    paper, in21k = BACKBONES["vit-base-in21k-ft-in1k"], BACKBONES["vit-base"]
    assert paper.weights() == "google/vit-base-patch16-224"
    assert in21k.weights() == "google/vit-base-patch16-224-in21k"
    assert registry.kind_of(paper) is registry.kind_of(in21k) is ViTBackbone
    assert paper.config().to_dict() == in21k.config().to_dict()
    assert "fine-tuned" in paper.summary and "21k only" in in21k.summary


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


@pytest.mark.parametrize("backbone, depth", [
    ("gpt2-tiny", 1), ("lstm", 1), ("vit-base", 1), ("attention@gpt2-tiny", None),
    ("none@gpt2-tiny", None)])
def test_export_then_load_as_pretrained(tmp_path, backbone, depth):
    model = build_model(make_cell(backbone=backbone, depth=depth), make_spec())
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


def test_plain_random_init_draws_gpt2s_output_projections_at_002_as_the_papers_transformers(
        monkeypatch):
    # Wider than gpt2-tiny so the spread of one draw is measured to a few per cent.
    monkeypatch.setitem(registry.BACKBONES, "wide-gpt2", BackboneSpec(
        "wide-gpt2", "hf", "test",
        lambda: GPT2Config(n_layer=8, n_embd=256, n_head=4, n_positions=64, vocab_size=16)))
    scaled = dict(build_backbone("wide-gpt2", "random", seed=1).named_parameters())
    plain = dict(build_backbone("wide-gpt2", "random", seed=1, random_init="plain").named_parameters())
    projections = [n for n in plain if n.endswith("c_proj.weight")]
    assert len(projections) == 16
    for name in projections:
        assert abs(plain[name].std().item() - 0.02) < 0.001, name
        assert abs(scaled[name].std().item() - 0.02 / 4) < 0.0003, name  # 0.02 / sqrt(2 x 8)
    for name in plain.keys() - set(projections):
        assert torch.equal(plain[name], scaled[name]), name  # only the projections are redrawn


def test_random_init_is_taken_from_the_cell():
    values = {"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random"}
    plain = real_cell({**values, "random_init": "plain"})
    model = build_model(plain, task_spec(plain))
    weight = model.backbone.model.h[0].mlp.c_proj.weight
    default = build_model(real_cell(values), task_spec(plain)).backbone.model.h[0].mlp.c_proj.weight
    assert weight.std() > 1.6 * default.std()  # 0.02 vs 0.02 / sqrt(2 x 2)


def test_each_kind_states_its_shape_for_the_flop_model(monkeypatch):
    gpt2 = build_backbone("gpt2-tiny", "random")  # hidden 64, feed-forward 256, 2 blocks
    block = ((64 * 192, "attention"), (64 * 64, "attention"),
             (64 * 256, "feedforward"), (256 * 64, "feedforward"))
    assert gpt2.matrices() == block * 2
    assert gpt2.attention_shape() == (2, 64)
    assert (gpt2.launch_units_per_block, gpt2.launch_units_per_token) == (1.0, 0.0)
    attention = build_backbone("attention@gpt2-tiny", "random")
    assert attention.matrices() == block[:2] and attention.attention_shape() == (1, 64)
    none = build_backbone("none@gpt2-tiny", "random")
    assert none.matrices() == () and none.attention_shape() == (0, 64)
    register_tiny(monkeypatch)
    lstm = build_backbone("tiny-lstm", "random")  # hidden 16, 2 layers
    assert lstm.matrices() == ((16 * 64, "feedforward"), (16 * 64, "attention")) * 2
    assert lstm.attention_shape() == (0, 0)
    assert (lstm.launch_units_per_block, lstm.launch_units_per_token) == (0.0, 0.5)


# ---------------------------------------------------------------- Tan et al. 2024's baselines

def tan_counts(kind: str, base: str) -> dict[str, int]:
    """Parameters per group of kind@base on bit-xor (10 tokens of 1 feature, 5 readout tokens of
    2 classes), from the base's published shape."""
    hidden, ff, token_type_rows = {"gpt2-tiny": (64, 256, 0), "minilm-l6": (384, 1536, 1)}[base]
    blocks, has_ff = {"none": (0, 0), "attention": (1, 0), "block": (1, 1)}[kind]
    return {
        "input": hidden + hidden,
        "positions": (10 + token_type_rows) * hidden,
        # outside the blocks: GPT-2's final ln_f, BERT's embedding LayerNorm; in a block one
        # before (GPT-2) or after (BERT) each sublayer; weight and bias each
        "layernorm": 2 * hidden * (1 + blocks + has_ff),
        "attention": blocks * 4 * (hidden * hidden + hidden),  # query, key, value, output
        "feedforward": has_ff * (hidden * ff + ff + ff * hidden + hidden),
        "output": hidden * 2 + 2,
    }


@pytest.mark.parametrize("base", ["gpt2-tiny", "minilm-l6"])
@pytest.mark.parametrize("kind", ["none", "attention", "block"])
def test_tan_baselines_have_the_bases_width_and_train_whole(kind, base):
    model = build_model(make_cell(backbone=f"{kind}@{base}", trainable=GROUPS), make_spec())
    expected = tan_counts(kind, base)
    counts = param_counts(model)
    assert {g: counts[g] for g in GROUPS} == expected
    assert counts["trainable"] == counts["total"] == sum(expected.values())
    assert model.backbone.n_blocks == (kind != "none")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(4, 10, 1), torch.randint(0, 2, (4, 5))
    loss = F.cross_entropy(model(x).reshape(-1, 2), y.reshape(-1))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    unchanged = [n for n, p in model.named_parameters()
                 if n in before and torch.equal(p, before[n])]
    # a key bias adds the same amount to every score of a query, which softmax ignores
    assert all(n.endswith("key.bias") for n in unchanged), unchanged


@pytest.mark.parametrize("base", registry.transformer_names())
def test_every_registry_transformer_reduces_to_its_attention_sublayer(base):
    counts = param_counts(build_model(make_cell(backbone=f"attention@{base}"), make_spec(),
                                      device="meta"))
    assert counts["feedforward"] == 0 and counts["attention"] > 0 and counts["layernorm"] > 0


def test_tan_names_exist_for_every_registry_transformer_and_nothing_else():
    assert "lstm" not in registry.transformer_names() and len(registry.transformer_names()) == 10
    assert "block@gpt2" in BACKBONES and "block@gpt2" not in backbone_names()
    assert BACKBONES["attention@minilm-l6"].config is BACKBONES["minilm-l6"].config
    for name in ("block@lstm", "block@nothing", "mlp@gpt2", "block@block@gpt2"):
        assert name not in BACKBONES and not is_known_backbone(name)
    with pytest.raises(ConfigError, match="block@lstm: the base after @ must be a registry "
                                          "transformer; allowed: gpt2, "):
        resolve("block@lstm")
    with pytest.raises(ConfigError, match="^init: backbone block@gpt2 has no pretrained weights"):
        build_backbone("block@gpt2", "pretrained")
    with pytest.raises(ConfigError, match=r"^depth: 1 .* 0 blocks; allowed: null"):
        build_backbone("none@gpt2-tiny", "random", depth=1)
    assert (n_blocks_of("none@gpt2"), n_blocks_of("attention@gpt2-xl"),
            n_blocks_of("block@vit-base")) == (0, 1, 1)
    # GPT-2's random init scales c_proj by its depth: switches for a block of it, not for none
    assert registry.random_init_matters("block@gpt2") and registry.random_init_matters("gpt2-tiny")
    assert not registry.random_init_matters("none@gpt2")
    assert not registry.random_init_matters("block@minilm-l6")


def test_tiny_stand_ins_keep_each_kind_and_its_blocks(tmp_path):
    names = ["block@gpt2", "attention@minilm-l6", "none@smollm2-135m", "vit-base", "lstm"]
    written = registry.write_tiny_backbones(tmp_path, names)
    for name in names:
        spec = BACKBONES[name]
        assert read_marker(written[name])["kind"] == spec.kind
        loaded = build_backbone(str(written[name]), "pretrained")
        assert type(loaded) is registry.KINDS[spec.kind]
        assert (loaded.n_blocks, loaded.hidden) == (n_blocks_of(name), TINY["hidden"])
    with pytest.raises(ConfigError, match="no tiny stand-in for 'gpt3'"):
        registry.write_tiny_backbones(tmp_path, ["gpt3"])
