"""fpt plan: FLOPs of a step, stated and measured seconds, the levers, the per-ablation summary,
Slurm runtimes, and the command's one-line refusals."""
import re

import pytest
import yaml

from fpt_core import flops, measure, plan
from fpt_core.cell import FPT_GROUPS, make_cell
from fpt_core.commands import plan_main
from fpt_core.errors import ConfigError
from fpt_core.grid import build
from fpt_core.model import build_model
from fpt_core.study import Study
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
    return make_cell({"task": "bit-xor", "backbone": "gpt2", "init": "random", "batch_size": 16,
                      "steps": 200_000, "eval_every": 2000, **values})


def seconds(rate, c, **kwargs):
    return rate.seconds(flops.cell_work(c), **{"precision": c.precision, "steps": c.steps, **kwargs})


def total_hours(text: str) -> float:
    line = next(l for l in text.splitlines() if l.startswith("total (distinct cells)"))
    return float(line.split()[-1].replace(",", ""))


def lever_totals(text: str) -> list[float]:
    lines = text.split("each added in turn:")[1].strip().splitlines()[:len(plan.STAGES)]
    return [float(re.search(r"([\d,.]+)(  \([+-]\d+%\))?$", line)[1].replace(",", "")) for line in lines]


def test_step_flops_match_a_hand_count():
    # B=2, T=4, d=8, f=32, one block, 3 input features, 5 logits from one readout token
    inp, proj, scores, mlp, out = 384, 8 * 8 * 8 * 8, 4 * 2 * 4 * 4 * 8, 4 * 8 * 8 * 32, 160
    forward = inp + proj + scores + mlp + out
    fpt = flops.step_flops(**TINY, trainable=FPT_GROUPS)
    # output weight and input grads, activation grads through the frozen block (attention's two
    # products twice), the input layer's weight grads; no weight grads for the block
    assert fpt == {"forward": forward, "backward": 2 * out + proj + 2 * scores + mlp + inp,
                   "total": forward + 2 * out + proj + 2 * scores + mlp + inp}
    assert flops.step_flops(**TINY, trainable=("output",))["backward"] == out
    more = flops.step_flops(**TINY, trainable=FPT_GROUPS + ("feedforward", "attention"))
    assert more["backward"] == fpt["backward"] + mlp + proj


def test_model_flops_read_the_built_architecture():
    c = make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random"})
    model = build_model(c, make_spec(c), device="meta")
    want = flops.step_flops(batch=16, tokens=10, hidden=64, ff=256, layers=2, input_dim=1,
                            input_kind="vector", n_readout=5, out_per_token=2, trainable=FPT_GROUPS)
    assert flops.model_flops(model, batch=16) == want


def test_a_kept_depth_is_the_first_blocks_of_the_whole_architecture():
    one = make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "depth": 1})
    whole = flops.arch_of(build_model(make_cell({"task": "bit-xor", "backbone": "gpt2-tiny",
                                                 "init": "random"}), make_spec(one), device="meta"))
    assert flops.arch_of(build_model(one, make_spec(one), device="meta")) == whole.first(1)


def test_hours_grow_with_steps_and_with_cells():
    rate = plan.StatedRate("a100-80gb")
    base = plan.estimate(build(tiny_config(steps=40)), rate)
    longer = plan.estimate(build(tiny_config(steps=400)), rate)
    more = plan.estimate(build(tiny_config(steps=40, seeds=(0, 1, 2))), rate)
    assert (longer["seconds"].values > base["seconds"].values).all()
    assert len(more) == 3 * len(base)
    assert more["hours"].sum() > base["hours"].sum()
    assert (base["method"] == "stated a100-80gb fp32").all()


def test_a_bigger_backbone_costs_more_per_step():
    rate = plan.StatedRate("h100-sxm")
    small, big = cell(backbone="gpt2"), cell(backbone="gpt2-medium")
    assert flops.cell_work(big).step_flops > 2 * flops.cell_work(small).step_flops
    assert seconds(rate, big) > seconds(rate, small)


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_tensor_core_precisions_are_faster_except_where_the_gpu_has_none(precision):
    fp32, fast = cell(task="bit-memory"), cell(task="bit-memory", precision=precision)
    a100 = plan.StatedRate("a100-80gb")
    assert seconds(a100, fast) < seconds(a100, fp32)
    assert a100.method(flops.cell_work(fast), precision) == f"stated a100-80gb {precision}"
    v100 = plan.StatedRate("v100")  # no bf16, no TF32: the trainer's fallback runs fp32 there
    assert v100.method(flops.cell_work(fast), precision) == "stated v100 fp32"
    assert seconds(v100, fast) == seconds(v100, fp32)


def test_tf32_is_assumed_no_faster_than_bf16_until_measured():
    for gpu in ("a100-80gb", "h100-sxm", "a10"):
        rate = plan.StatedRate(gpu)
        assert rate.flops_per_s("tf32") == rate.flops_per_s("bf16") == 1e12 * rate.spec.bf16 * plan.MFU["tensor"]
        assert rate.flops_per_s("fp32") < rate.flops_per_s("tf32")
    assert "TF32 at bf16's rate, no higher, until measured" in plan.StatedRate().describe()


def test_output_only_on_cached_features_steps_only_the_output_layer():
    fpt = flops.cell_work(cell(task="digits"))
    cached = flops.cell_work(cell(task="digits", trainable="output", dropout=0.0))
    live = flops.cell_work(cell(task="digits", trainable="output", dropout=0.0), feature_cache=False)
    assert cached.cached and not live.cached and not fpt.cached
    assert cached.step_flops < live.step_flops / 100 < fpt.step_flops
    # generated tasks draw fresh examples, and dropout makes features random: nothing to cache
    assert not flops.cell_work(cell(trainable="output", dropout=0.0)).cached
    assert not flops.cell_work(cell(task="digits", trainable="output")).cached


def test_stopping_at_convergence_runs_the_papers_steps_to_converge_and_the_patience():
    converge = {("bit-xor", "pretrained"): 500.0, ("bit-xor", "random"): 20000.0}
    pretrained = cell(init="pretrained", stop="converged", patience=5)
    assert plan.expected_steps(pretrained, converge) == 500 + 5 * 2000
    assert plan.expected_steps(cell(stop="converged", steps=30000), converge) == 30000  # capped
    assert plan.expected_steps(cell(init="pretrained"), converge) == 200_000  # stop: budget
    assert plan.expected_steps(cell(task="digits", stop="converged"), converge) == 200_000  # unknown


def test_the_papers_table6_is_read_from_reported_csv():
    converge = plan.convergence_steps("paper/reported.csv")
    assert converge[("cifar10-lra", "pretrained")] == 300000
    assert converge[("bit-xor", "random")] == 20000
    assert plan.convergence_steps(None) == {}


def test_the_seeds_of_a_cell_step_together_and_share_the_launches():
    config = tiny_config(seeds=(0, 1, 2, 3))
    config["defaults"].update(backbone="minilm-l6", init="pretrained")
    config["ablations"]["cached"] = {"rows": {"output": {"trainable": ["output"], "dropout": 0.0}}}
    grid = build(config)
    alone = plan.estimate(grid, plan.StatedRate())
    together = plan.estimate(grid, plan.StatedRate(), together=3)
    fpt = together[together["ablations"].str.contains("again")]
    assert sorted(fpt["companions"]) == [1, 3, 3, 3]  # four seeds in groups of at most three
    full = together[together["ablations"] == "headline"]
    assert sorted(full["companions"]) == [1, 3, 3, 3]  # their blocks trained: stacked, not shared
    cached = together[together["ablations"] == "cached"]
    assert set(cached["companions"]) == {1}  # a step on cached features costs next to nothing
    assert together["hours"].sum() < alone["hours"].sum()
    assert (together["flops_per_step"] == alone["flops_per_step"]).all()


def test_a_pipeline_pretrained_backbone_costs_what_its_source_does():
    config = {**tiny_config(), "pretrain": {"bits": {"task": "bit-memory", "trainable": "all"}}}
    config["ablations"] = {"modality": {"rows": {"random": {}, "bits": {"backbone": "backbones/bits"}}}}
    grid = build(config)
    by_row = {m.label: grid.cells[m.cell_id] for m in grid.members}
    source, pretrained = (flops.cell_work(by_row[r], grid) for r in ("random", "bits"))
    assert pretrained.step_flops == source.step_flops
    with pytest.raises(ConfigError, match="pass grid="):
        plan.runtime_minutes_for([by_row["bits"]])
    df = plan.estimate(grid, plan.StatedRate())
    assert "pretrain:bits" in set(df["ablations"])


def test_runtime_requests_differ_by_task_and_keep_the_headroom():
    xor, memory = cell(task="bit-xor"), cell(task="bit-memory")  # 10 vs 120 tokens
    minutes = {c.task: plan.runtime_minutes_for([c]) for c in (xor, memory)}
    assert minutes["bit-memory"] > minutes["bit-xor"] >= 15
    for c in (xor, memory):
        assert minutes[c.task] % 5 == 0
        assert minutes[c.task] >= 2 * seconds(plan.StatedRate(), c) / 60 + 10
    assert plan.runtime_minutes_for([cell(steps=10)]) == 15  # the floor
    assert plan.runtime_minutes_for([cell(task="bit-memory", steps=10**9)]) == 7 * 24 * 60  # ceiling
    both = plan.runtime_minutes_for([xor, memory])
    assert minutes["bit-memory"] < both < sum(minutes.values())
    # a cell that may stop early is given time for its whole budget
    assert plan.runtime_minutes_for([cell(task="bit-memory", stop="converged")]) == minutes["bit-memory"]


def test_the_paper_plan_with_its_levers_is_at_most_3000_a100_hours():
    study = Study.load("config/paper.yaml")
    df = study.estimate(plan.StatedRate("a100-80gb"))
    assert len(df) == len(study.grid.cells) + len(study.grid.pretrain)
    assert df["cell_id"].is_unique and (df["seconds"] > 0).all()
    text = plan.summarize(df)
    for name in study.grid.ablations:
        assert re.search(rf"^{re.escape(name)}\s+\d+\s+\d+\s+[\d,.]+$", text, re.M), name
    assert total_hours(text) == pytest.approx(df["hours"].sum(), rel=1e-3, abs=0.06)
    stages = lever_totals(text)
    assert stages[0] > stages[1] > stages[2] > stages[3]  # each lever cuts
    assert stages[0] > 10_000 and stages[3] <= 3000
    assert stages[3] == pytest.approx(total_hours(text), rel=1e-3)  # as configured: every lever on
    per_ablation = df.assign(a=df["ablations"].str.split(",")).explode("a")
    assert per_ablation["hours"].sum() > df["hours"].sum()  # shared cells, counted once


def test_the_summary_counts_a_shared_cell_once():
    df = plan.estimate(build(tiny_config(seeds=(0, 1))), plan.StatedRate())
    text = plan.summarize(df)
    rows = [re.match(r"^(\S+).*?\s(\d+)\s+\d+\s+\S+$", line) for line in text.splitlines()]
    cells = {m.group(1): int(m.group(2)) for m in rows if m}
    assert cells["headline"] == 4 and cells["again"] == 2 and cells["total"] == 4
    assert total_hours(text) == pytest.approx(df["hours"].sum(), rel=1e-2)
    assert "GPU-hours" in text.splitlines()[0]


def test_measured_mode_times_real_steps_and_says_so():
    grid = build(tiny_config(tasks=("bit-xor", "bit-memory")))
    rate = measure.MeasuredRate("cpu", max_keys=3, budget_s=20, warmup=1, timed=2)
    df = plan.estimate(grid, rate)
    assert (df["seconds"] > 0).all()
    assert set(df["method"]) <= {"measured cpu", "scaled cpu"} and "measured cpu" in set(df["method"])
    a, b = rate.fit
    assert a > 0 or b > 0
    assert rate.describe().startswith("measured on cpu") and rate.unit == "CPU-hours"


def test_fit_two_recovers_flops_and_launch_terms():
    a, b = 2e-11, 1e-3
    points = [(f, u, a * f + b * u) for f, u in ((1e9, 10), (1e11, 10), (1e10, 50))]
    assert measure.fit_two(points) == pytest.approx((a, b), rel=1e-6)
    assert measure.fit_two(points[:1]) == pytest.approx(((a * 1e9 + b * 10) / 1e9, 0.0))


def test_an_unknown_gpu_is_one_line_naming_the_allowed(tmp_path, capsys):
    with pytest.raises(ConfigError, match="gpu: unknown value 'h300'; allowed: h100-sxm, h100-pcie"):
        plan.StatedRate("h300")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    assert plan_main(["--configfile", str(path), "--gpu", "h300"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "allowed: h100-sxm" in err and "a10" in err


def test_main_prints_the_table_and_how_it_estimated(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    assert plan_main([str(path), "--gpu", "l40s", "--cells"]) == 0  # as snakemake --configfile
    out = capsys.readouterr().out
    assert "total (distinct cells)" in out and "estimated: stated, nothing measured: NVIDIA L40S" in out
    assert plan_main(["--configfile", str(path), "--gpu", "l40s"]) == 0
    assert plan_main([str(path), "--configfile", "other.yaml"]) == 2
    assert "given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        plan_main(["--help"])
    assert e.value.code == 0 and "--measure" in capsys.readouterr().out


def test_a_yaml_slip_in_a_configfile_is_one_line_with_its_line_number(tmp_path, capsys):
    """Snakemake parses a --configfile before the workflow and names no line; fpt plan does."""
    path = tmp_path / "slip.yaml"
    path.write_text("study: slip\ntrain:\n  steps: 3\n   lr: 2\n")
    assert plan_main(["--configfile", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and f"{path}, line 4: not valid YAML" in err


def test_a_cell_whose_paper_number_sits_at_its_floor_is_priced_at_its_budget():
    study = Study.load("config/paper.yaml")
    floored = study.floored()
    rows = {(m.experiment, m.label, m.task): m.cell_id for m in study.grid.members}
    assert rows[("transformer-vs-lstm", "frozen-random-lstm", "bit-xor")] in floored  # paper: 50.0
    assert rows[("pretraining-modality", "random", "bit-memory")] in floored  # 75.8: the 75% baseline
    assert rows[("headline", "fpt", "bit-xor")] not in floored  # 100
    lstm = study.grid.cells[rows[("transformer-vs-lstm", "frozen-random-lstm", "bit-xor")]]
    converge = study.convergence()
    assert plan.expected_steps(lstm, converge, floored) == lstm.steps
    assert plan.expected_steps(lstm, converge) < lstm.steps
    assert plan.at_floor(study.grid, None) == frozenset()
