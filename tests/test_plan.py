"""fpt plan: FLOPs of a step, stated and measured seconds, the per-ablation summary, Slurm runtimes."""
import re

import pytest
import yaml

from fpt_core import plan
from fpt_core.cell import FPT_GROUPS, make_cell
from fpt_core.configfile import load_strict
from fpt_core.errors import ConfigError
from fpt_core.grid import build
from fpt_core.model import build_model
from fpt_core.tasks import make_spec

TINY = dict(batch=2, tokens=4, hidden=8, ff=32, layers=1, input_dim=3, input_kind="vector",
            n_readout=1, out_per_token=5)


def tiny_config(steps=40, seeds=(0,), tasks=("bit-xor",)):
    return {
        "defaults": {"backbone": "gpt2-tiny", "init": "random", "trainable": "fpt", "batch_size": 4,
                     "steps": steps, "eval_every": 20, "eval_size": 8},
        "axes": {"task": list(tasks), "seed": list(seeds)},
        "ablations": {
            "headline": {"rows": {"fpt": {}, "full": {"trainable": "all"}}},
            "again": {"rows": {"fpt": {}}},  # the same cells as headline's fpt row
        },
    }


def cell(**values):
    return make_cell({"task": "bit-xor", "backbone": "gpt2", "init": "random", "progress": False,
                      "batch_size": 16, "steps": 200_000, "eval_every": 2000, **values})


def total_hours(text: str) -> float:
    line = next(l for l in text.splitlines() if l.startswith("total (distinct cells)"))
    return float(line.split()[-1].replace(",", ""))


def test_step_flops_match_a_hand_count():
    # B=2, T=4, d=8, f=32, one block, 3 input features, 5 logits from one readout token
    inp, proj, scores, mlp, out = 384, 8 * 8 * 8 * 8, 4 * 2 * 4 * 4 * 8, 4 * 8 * 8 * 32, 160
    forward = inp + proj + scores + mlp + out
    fpt = plan.step_flops(**TINY, trainable=FPT_GROUPS)
    # output weight and input grads, activation grads through the frozen block (attention's two
    # products twice), the input layer's weight grads; no weight grads for the block
    assert fpt == {"forward": forward, "backward": 2 * out + proj + 2 * scores + mlp + inp,
                   "total": forward + 2 * out + proj + 2 * scores + mlp + inp}
    assert plan.step_flops(**TINY, trainable=("output",))["backward"] == out
    more = plan.step_flops(**TINY, trainable=FPT_GROUPS + ("feedforward", "attention"))
    assert more["backward"] == fpt["backward"] + mlp + proj


def test_model_flops_read_the_built_architecture():
    c = make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "progress": False})
    model = build_model(c, make_spec(c), device="meta")
    want = plan.step_flops(batch=16, tokens=10, hidden=64, ff=256, layers=2, input_dim=1,
                           input_kind="vector", n_readout=5, out_per_token=2, trainable=FPT_GROUPS)
    assert plan.model_flops(model, batch=16) == want


def test_a_kept_depth_is_the_first_blocks_of_the_whole_architecture():
    one = make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "depth": 1})
    whole = plan.arch_of(build_model(make_cell({"task": "bit-xor", "backbone": "gpt2-tiny",
                                                "init": "random"}), make_spec(one), device="meta"))
    assert plan.arch_of(build_model(one, make_spec(one), device="meta")) == whole.first(1)


def test_hours_grow_with_steps_and_with_cells():
    rate = plan.StatedRate("a100-80gb")
    base = plan.estimate(build(tiny_config(steps=40)), rate)
    longer = plan.estimate(build(tiny_config(steps=400)), rate)
    more = plan.estimate(build(tiny_config(steps=40, seeds=(0, 1, 2))), rate)
    assert (longer["seconds"].values > base["seconds"].values).all()
    assert len(more) == 3 * len(base)
    assert more["gpu_hours"].sum() > base["gpu_hours"].sum()
    assert (base["method"] == "stated a100-80gb fp32").all()


def test_a_bigger_backbone_costs_more_per_step():
    rate = plan.StatedRate("h100-sxm")
    small, big = (plan.cell_work(cell(backbone=b)) for b in ("gpt2", "gpt2-medium"))
    assert big.step_flops > 2 * small.step_flops
    assert rate.seconds(big)[0] > rate.seconds(small)[0]


def test_bf16_uses_tensor_cores_except_where_there_are_none():
    fp32, bf16 = (plan.cell_work(cell(task="bit-memory", precision=p)) for p in ("fp32", "bf16"))
    a100 = plan.StatedRate("a100-80gb")
    assert a100.seconds(bf16)[0] < a100.seconds(fp32)[0]
    assert a100.seconds(bf16)[1] == "stated a100-80gb bf16"
    assert plan.StatedRate("v100").seconds(bf16)[1] == "stated v100 fp32"


def test_output_only_on_cached_features_steps_only_the_output_layer():
    fpt = plan.cell_work(cell(task="digits"))
    cached = plan.cell_work(cell(task="digits", trainable="output"))
    live = plan.cell_work(cell(task="digits", trainable="output", feature_cache=False))
    assert cached.cached and not live.cached and not fpt.cached
    assert cached.step_flops < live.step_flops / 100 < fpt.step_flops
    # generated tasks draw fresh examples: nothing to cache
    assert not plan.cell_work(cell(trainable="output")).cached


def test_runtime_requests_differ_by_task_and_keep_the_headroom():
    xor, memory = cell(task="bit-xor"), cell(task="bit-memory")  # 10 vs 120 tokens
    assert plan.runtime_minutes(memory) > plan.runtime_minutes(xor) >= 15
    for c in (xor, memory):
        minutes = plan.runtime_minutes(c)
        seconds = plan.StatedRate().seconds(plan.cell_work(c))[0]
        assert minutes % 5 == 0 and minutes >= 2 * seconds / 60 + 10
    assert plan.runtime_minutes(cell(steps=10)) == 15  # the floor
    assert plan.runtime_minutes(cell(task="bit-memory", steps=10**9)) == 7 * 24 * 60  # the ceiling
    both = plan.runtime_minutes_for([xor, memory])
    assert plan.runtime_minutes(memory) < both < plan.runtime_minutes(xor) + plan.runtime_minutes(memory)


def test_a_pipeline_pretrained_backbone_costs_what_its_source_does():
    config = {**tiny_config(), "pretrain": {"bits": {"task": "bit-memory", "trainable": "all"}}}
    config["ablations"] = {"modality": {"rows": {"random": {}, "bits": {"backbone": "backbones/bits"}}}}
    grid = build(config)
    by_row = {m.label: grid.cells[m.cell_id] for m in grid.members}
    source, pretrained = (plan.cell_work(by_row[r], grid) for r in ("random", "bits"))
    assert pretrained.step_flops == source.step_flops
    with pytest.raises(ConfigError, match="pass grid="):
        plan.runtime_minutes(by_row["bits"])
    df = plan.estimate(grid, plan.StatedRate())
    assert "pretrain:bits" in set(df["ablations"])


def test_the_paper_plan_lists_every_ablation_and_its_total_is_over_distinct_cells():
    config = load_strict("config/paper.yaml")
    grid = build(config)
    df = plan.estimate(grid, plan.StatedRate("a100-80gb"))
    assert len(df) == len(grid.cells) + len(grid.pretrain)
    assert df["cell_id"].is_unique and (df["seconds"] > 0).all()
    text = plan.summarize(df)
    for name in config["ablations"]:
        assert re.search(rf"^{re.escape(name)}\s+\d+\s+\d+\s+[\d,.]+$", text, re.M), name
    assert total_hours(text) == pytest.approx(df["gpu_hours"].sum(), rel=1e-3, abs=0.06)
    per_ablation = df.assign(a=df["ablations"].str.split(",")).explode("a")
    assert per_ablation["gpu_hours"].sum() > df["gpu_hours"].sum()  # shared cells, counted once


def test_the_summary_counts_a_shared_cell_once(tmp_path):
    df = plan.estimate(build(tiny_config(seeds=(0, 1))), plan.StatedRate())
    text = plan.summarize(df)
    rows = [re.match(r"^(\S+).*?\s(\d+)\s+\d+\s+\S+$", line) for line in text.splitlines()]
    cells = {m.group(1): int(m.group(2)) for m in rows if m}
    assert cells["headline"] == 4 and cells["again"] == 2 and cells["total"] == 4
    assert total_hours(text) == pytest.approx(df["gpu_hours"].sum(), rel=1e-2)


def test_measured_mode_times_real_steps_and_says_so():
    grid = build(tiny_config(tasks=("bit-xor", "bit-memory")))
    rate = plan.MeasuredRate("cpu", max_keys=3, budget_s=20, warmup=1, timed=2)
    df = plan.estimate(grid, rate)
    assert (df["seconds"] > 0).all()
    assert set(df["method"]) <= {"measured cpu", "scaled cpu"} and "measured cpu" in set(df["method"])
    a, b = rate.fit
    assert a > 0 or b > 0
    assert rate.describe().startswith("measured on cpu")


def test_fit_two_recovers_flops_and_launch_terms():
    a, b = 2e-11, 1e-3
    points = [(f, u, a * f + b * u) for f, u in ((1e9, 10), (1e11, 10), (1e10, 50))]
    assert plan.fit_two(points) == pytest.approx((a, b), rel=1e-6)
    assert plan.fit_two(points[:1]) == pytest.approx(((a * 1e9 + b * 10) / 1e9, 0.0))


def test_an_unknown_gpu_is_one_line_naming_the_allowed(tmp_path, capsys):
    with pytest.raises(ConfigError, match="gpu: unknown value 'h300'; allowed: h100-sxm, h100-pcie"):
        plan.StatedRate("h300")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    assert plan.main(["--configfile", str(path), "--gpu", "h300"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "allowed: h100-sxm" in err and "a10" in err


def test_main_prints_the_table_and_how_it_estimated(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    assert plan.main(["--configfile", str(path), "--gpu", "l40s", "--cells"]) == 0
    out = capsys.readouterr().out
    assert "total (distinct cells)" in out and "estimated: stated, nothing measured: NVIDIA L40S" in out
    with pytest.raises(SystemExit) as e:
        plan.main(["--help"])
    assert e.value.code == 0 and "--measure" in capsys.readouterr().out


def test_a_yaml_slip_in_a_configfile_is_one_line_with_its_line_number(tmp_path, capsys):
    """Snakemake parses a --configfile before the workflow and names no line; fpt plan does."""
    path = tmp_path / "slip.yaml"
    path.write_text("study: slip\ntrain:\n  steps: 3\n   lr: 2\n")
    assert plan.main(["--configfile", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and f"{path}, line 4: not valid YAML" in err
