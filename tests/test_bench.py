import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers.activations import GELUTanh, NewGELUActivation

from fpt_bench import bench, timing, workload
from fpt_bench.measures import measure_dry_run
from fpt_core import hardware
from fpt_core.cell import make_cell
from fpt_core.dropout import CounterDropout
from fpt_core.errors import ConfigError
from fpt_core.flops import model_flops
from fpt_core.member import LiveBatches, loss_and_correct
from fpt_core.train import train_cell

KEYS = {"measure", "device", "dtype", "ours", "baseline", "ratio", "unit", "target", "met", "peak_mem_mb"}


def test_ours_is_the_library_bf16_model_and_the_reference_computes_the_same_logits():
    s = bench.settings_from(bench.parse_args(["--tiny", "--device", "cpu"]))
    spec = workload.make_spec("cifar10")
    ours, _, _ = workload.build(workload.bench_cell(s, "cifar10", precision="bf16"), spec, s.device)
    ref, _, _ = workload.build(workload.bench_cell(s, "cifar10", precision="fp32"), spec, s.device)
    workload.paper_style(ref)
    matrices = [m.weight for m in ours.backbone.modules() if type(m).__name__ in ("Linear", "Conv1D")]
    assert matrices and all(w.dtype == torch.bfloat16 for w in matrices if not w.requires_grad)
    assert all(p.dtype == torch.float32 for p in ours.parameters() if p.requires_grad)
    assert any(isinstance(m, GELUTanh) for m in ours.modules())
    assert all(p.dtype == torch.float32 for p in ref.parameters())
    assert any(isinstance(m, NewGELUActivation) for m in ref.modules())
    assert not any(isinstance(m, GELUTanh) for m in ref.modules())
    assert workload.attention_name(ref) == "eager"
    assert any(isinstance(m, CounterDropout) for m in ours.modules())  # ours: counter-based masks
    assert not any(isinstance(m, CounterDropout) for m in ref.modules())  # the paper's: torch's
    ours.eval(), ref.eval()
    x = torch.randn(4, spec.n_tokens, spec.input_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(x).float(), ref(x).float()
    assert torch.allclose(a, b, atol=2e-2, rtol=2e-2)


def test_tiny_bench_prints_one_ratio_per_measure(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    threads = torch.get_num_threads()
    try:
        rc = bench.main(["--tiny", "--repeats", "1", "--only", "step,mfu,output_only,shared,dropout",
                         "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    printed = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
    written = [json.loads(s) for s in out.read_text().splitlines()]
    assert rc == 0 and printed == written
    assert written[0]["measure"] == "levers"
    written = [ln for ln in written[1:] if "skipped" not in ln]
    measures = [ln["measure"] for ln in written]
    assert measures.count("step_throughput") == 2 and measures.count("mfu") == 2
    assert {"output_only_epoch", "counter_dropout"} <= set(measures)
    assert measures.count("shared_backbone") == 2  # the cifar10 and bit-xor shapes at batch 4
    assert all(ln["batch"] == 4 for ln in written if ln["measure"] == "shared_backbone")
    for ln in written:
        assert KEYS <= set(ln), ln
        assert "error" not in ln, ln
        assert ln["device"].startswith("cpu")
        assert ln["ours"] > 0 and ln["baseline"] > 0 and ln["peak_mem_mb"] > 0
        assert ln["ratio"] == pytest.approx(ln["ours"] / ln["baseline"], rel=1e-3)
        assert ln["met"] == (ln["ratio"] >= ln["target"])
    assert {ln["shape"] for ln in written if ln["measure"] == "step_throughput"} == {"cifar10", "bit-memory"}
    precision = bench.fastest_precision(torch.device("cpu"))
    assert {ln["dtype"] for ln in written if ln["measure"] == "step_throughput"} == {f"{precision} vs fp32"}
    for ln in written:
        if ln["measure"] == "mfu":  # a fraction of the matmul peak measured in the same dtype
            assert ln["dtype"] == precision and ln["fraction"] > 0 and ln["baseline_fraction"] > 0


# ------------------------------------------------------------ what the hardware offers

def run_bench(argv, capsys) -> list[dict]:
    threads = torch.get_num_threads()
    try:
        rc = bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]


def without_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda text=None: {"avx2", "fma"})


def test_the_first_line_reports_the_levers_and_bf16_is_skipped_where_it_is_not_native(monkeypatch, capsys):
    without_native_bf16(monkeypatch)
    lines = run_bench(["--only", "dry_run", "--workdir", "/nonexistent", "--device", "cpu"], capsys)
    levers, bf16 = lines[:2]
    assert KEYS <= set(levers) and KEYS <= set(bf16)
    assert levers["measure"] == "levers" and levers["precision"] == "fp32"
    assert levers["native_bf16"] is False and {"sdpa", "compile", "threads", "machine"} <= set(levers)
    assert "no native bf16" in levers["device"]
    assert bf16["measure"] == "step_throughput" and bf16["dtype"] == "bf16 vs fp32"
    assert "not native" in bf16["skipped"] and "fp32" in bf16["skipped"]


def test_native_bf16_makes_bf16_our_precision(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda text=None: {"avx512f", "amx_bf16"})
    s = bench.settings_from(bench.parse_args(["--tiny", "--device", "cpu"]))
    assert s.precision == "bf16" and workload.bench_cell(s, "cifar10").precision == "bf16"
    assert bench.skips(s) == (s, [])
    without_native_bf16(monkeypatch)
    s = bench.settings_from(bench.parse_args(["--tiny", "--device", "cpu"]))
    assert s.precision == "fp32" and workload.bench_cell(s, "cifar10").precision == "fp32"


def test_quick_skips_compiling_on_a_cpu_and_compile_where_it_cannot_build(monkeypatch):
    without_native_bf16(monkeypatch)
    s = bench.settings_from(bench.parse_args(["--quick", "--compile", "--device", "cpu"]))
    s, lines = bench.skips(s)
    assert s.compile is False and "30-100 s" in lines[-1]["skipped"]
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", "")
    s, lines = bench.skips(bench.settings_from(bench.parse_args(["--tiny", "--compile", "--device", "cpu"])))
    assert s.compile is False and "cannot generate code" in lines[-1]["skipped"]


def test_a_spent_quick_budget_skips_the_rest_with_a_line(monkeypatch, capsys):
    monkeypatch.setattr(bench, "QUICK_BUDGET_S", 0.0)
    lines = run_bench(["--quick", "--only", "output_only,shared", "--device", "cpu"], capsys)
    skipped = [ln for ln in lines if ln["measure"] in ("output_only_epoch", "shared_backbone")]
    assert len(skipped) == 3 and all("budget" in ln["skipped"] for ln in skipped)
    assert all(KEYS <= set(ln) for ln in skipped)


def test_the_budget_shares_what_is_left_by_weight_and_cuts_repeats():
    budget = timing.Budget(100.0)
    budget.weights = [3.0, 1.0]
    budget.begin()
    assert budget.until - budget.start == pytest.approx(75.0, abs=0.5)
    calls = []
    timed = timing.alternate({"a": lambda: calls.append(1)}, 50, torch.device("cpu"), until=0.0)
    assert len(timed["a"]["all_s"]) == 1 and len(calls) == 2  # the warm-up and one repeat


def test_dry_run_is_skipped_with_a_reason_without_a_snakefile(tmp_path, capsys):
    assert bench.main(["--only", "dry_run", "--workdir", str(tmp_path)]) == 0
    *_, ln = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert KEYS <= set(ln)
    assert ln["measure"] == "dry_run" and ln["met"] is False and "Snakefile" in ln["skipped"]


def test_unknown_measure_is_a_config_error():
    with pytest.raises(ConfigError, match="--only"):
        bench.main(["--only", "speed"])


@pytest.mark.slow
def test_bf16_reaches_the_same_accuracy_as_fp32_on_digits(tmp_path):
    accs = {}
    for precision in ("fp32", "bf16"):
        cell = make_cell({"task": "digits", "backbone": "gpt2-tiny", "init": "random",
                          "steps": 400, "eval_every": 400, "lr": 1e-3, "batch_size": 32,
                          "precision": precision})
        accs[precision] = train_cell(cell, tmp_path / precision).iloc[0]["final_test_acc"]
    assert accs["fp32"] > 0.5
    assert abs(accs["fp32"] - accs["bf16"]) < 0.05


def test_a_dry_run_over_its_time_is_stopped_and_said_so():
    root = Path(bench.__file__).resolve().parents[1]
    (ln,) = measure_dry_run(root, limit_s=0.0)
    assert KEYS <= set(ln) and ln["ours"] is None and "not done in 0 s" in ln["skipped"]


def test_a_step_forms_no_frozen_weight_gradient_and_does_the_counted_flops():
    s = bench.settings_from(bench.parse_args(["--tiny", "--device", "cpu"]))
    spec = workload.make_spec("cifar10")
    cell = workload.bench_cell(s, "cifar10", precision="fp32", batch_size=4)
    model, params, _ = workload.build(cell, spec, s.device)
    source = LiveBatches(model, workload.TensorPool(spec, 4), cell, s.device)
    with FlopCounterMode(display=False) as counter:  # the trainer's forward, loss and backward
        loss_and_correct(source, *source.train_batch(0), cell, s.device)[0].backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(p.grad is not None for p in params)
    counted = model_flops(model, 4)["total"]
    assert counter.get_total_flops() == pytest.approx(counted, rel=0.01)
