import pandas as pd
import pytest
import torch

from fpt_core import hardware
from fpt_core.errors import ConfigError

CPU = torch.device("cpu")
CUDA = torch.device("cuda")

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx fma avx2 sha_ni
bugs\t\t: sysret_ss_attrs

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 avx fma avx2 sha_ni
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd sve i8mm bf16 svebf16
CPU implementer\t: 0x41
"""


def test_the_parser_reads_flags_and_model_from_cpuinfo_text():
    assert hardware.cpu_flags(EPYC) == {"fpu", "vme", "sse", "sse2", "avx", "fma", "avx2", "sha_ni"}
    assert hardware.cpu_model(EPYC) == "AMD EPYC 7B13"
    assert "bf16" in hardware.cpu_flags(GRAVITON3)
    assert hardware.cpu_flags("") == set()


@pytest.mark.parametrize("text, native", [(EPYC, False), (SAPPHIRE_RAPIDS, True), (GRAVITON3, True), ("", False)])
def test_native_bf16_on_the_cpu_follows_the_flags(text, native):
    assert hardware.native_bf16(CPU, flags=hardware.cpu_flags(text)) is native


def test_avx512_without_bf16_is_not_native():
    assert not hardware.native_bf16(CPU, flags={"avx2", "avx512f", "avx512bw", "avx512_vnni"})
    assert hardware.native_bf16(CPU, flags={"avx512f", "avx512_bf16"})


@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_native_bf16_on_a_gpu_follows_the_compute_capability(capability, native):
    assert hardware.native_bf16(CUDA, capability=capability) is native


def test_bf16_without_native_support_is_refused_in_one_line_naming_field_machine_and_values():
    flags = hardware.cpu_flags(EPYC)
    with pytest.raises(ConfigError) as err:
        hardware.check_precision("bf16", CPU, False, flags=flags, name=hardware.cpu_model(EPYC))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("precision: bf16")
    assert "AMD EPYC 7B13" in msg and "amx_bf16" in msg
    assert "allowed here: fp32" in msg and "precision_fallback: true" in msg


def test_the_gpu_refusal_names_the_gpu_and_its_capability():
    with pytest.raises(ConfigError, match=r"^precision: bf16 .*GPU \(Tesla V100.*7\.0 < 8\.0.*allowed here: fp32"):
        hardware.check_precision("bf16", CUDA, False, capability=(7, 0), name="Tesla V100-SXM2-16GB")


def test_fallback_runs_fp32_and_native_hardware_keeps_bf16():
    epyc = hardware.cpu_flags(EPYC)
    assert hardware.check_precision("bf16", CPU, True, flags=epyc) == "fp32"
    assert hardware.check_precision("bf16", CPU, False, flags=hardware.cpu_flags(SAPPHIRE_RAPIDS)) == "bf16"
    assert hardware.check_precision("bf16", CUDA, False, capability=(8, 6)) == "bf16"
    assert hardware.check_precision("bf16", CUDA, True, capability=(7, 5)) == "fp32"


def test_tf32_needs_an_ampere_gpu_and_is_refused_in_one_line_elsewhere():
    with pytest.raises(ConfigError) as err:
        hardware.check_precision("tf32", CPU, False, flags=hardware.cpu_flags(SAPPHIRE_RAPIDS),
                                 name="Intel Xeon")
    msg = str(err.value)
    assert msg.startswith("precision: tf32 needs the TF32 tensor cores") and "\n" not in msg
    assert "CPU (Intel Xeon)" in msg and "allowed here: fp32" in msg
    with pytest.raises(ConfigError, match=r"GPU \(Tesla V100\)"):
        hardware.check_precision("tf32", CUDA, False, capability=(7, 0), name="Tesla V100")
    assert hardware.check_precision("tf32", CUDA, False, capability=(8, 0)) == "tf32"
    assert hardware.check_precision("tf32", CPU, True, flags=set()) == "fp32"


def test_a_named_gpu_decides_the_precision_where_the_jobs_device_is_not_visible():
    assert hardware.fall_back({"precision": "tf32"}, None, True, gpu="a100-80gb") == {"precision": "tf32"}
    assert hardware.fall_back({"precision": "tf32"}, None, True, gpu="v100") == {"precision": "fp32"}
    assert hardware.fall_back({"precision": "bf16"}, None, True, gpu="v100") == {"precision": "fp32"}
    with pytest.raises(ConfigError, match=r"^precision: tf32 is not native on the NVIDIA V100"):
        hardware.fall_back({"precision": "tf32"}, None, False, gpu="v100")


def test_tf32_is_on_for_a_tf32_cell_and_off_for_others_then_restored():
    before = torch.backends.cuda.matmul.allow_tf32
    with hardware.precision_context("tf32", CUDA):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with hardware.precision_context("fp32", CUDA):
        assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_fp32_runs_everywhere():
    assert hardware.check_precision("fp32", CPU, False, flags=set()) == "fp32"
    assert hardware.check_precision("fp32", CUDA, False, capability=(6, 1)) == "fp32"


def test_this_machine_is_detected_not_assumed():
    text = hardware.read_cpuinfo()
    assert hardware.native_bf16(CPU) == hardware.native_bf16(CPU, flags=hardware.cpu_flags(text))
    if not text:
        assert hardware.cpu_flags() == set()


def test_levers_report_what_this_machine_offers(monkeypatch):
    got = hardware.levers(CPU)
    assert got["native_bf16"] == hardware.native_bf16(CPU)
    assert got["sdpa"] is True  # every torch this project supports has a CPU SDPA kernel
    assert got["threads"] == torch.get_num_threads() and got["cores"] >= 1
    assert got["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", "")
    assert hardware.levers(CPU)["compile"] is False  # no compiler: inductor cannot build kernels


# ------------------------------------------------------------ bf16 refused before any job

NO_BF16 = {"avx2", "fma"}


def test_a_bf16_cell_is_refused_or_falls_back_to_the_fp32_cell_before_training(monkeypatch, tmp_path, capsys):
    from fpt_core import cli, hardware
    from fpt_core.cell import make_cell

    monkeypatch.setattr(hardware, "cpu_flags", lambda text=None: NO_BF16)
    cell_args = ["task=bit-xor", "backbone=gpt2-tiny", "init=random", "precision=bf16", "steps=2",
                 "eval_every=2", "eval_size=10"]
    args = ["train", *cell_args, "device=cpu", "progress=false"]
    assert cli.main([*args, f"out={tmp_path / 'refused'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: precision: bf16 is not native on this CPU")
    assert not (tmp_path / "refused").exists()

    assert cli.main([*args, "precision_fallback=true", f"out={tmp_path / 'fp32'}"]) == 0
    summary = pd.read_parquet(tmp_path / "fp32" / "summary.parquet").iloc[0]
    fp32 = make_cell({k.split("=")[0]: k.split("=")[1] for k in cell_args} | {"precision": "fp32"})
    assert summary["precision"] == "fp32" and summary["cell_id"] == fp32.id
    assert "training the fp32 cell" in capsys.readouterr().err


def test_the_grid_refuses_bf16_where_it_is_not_native_unless_fallback_is_allowed(monkeypatch):
    from fpt_core import hardware
    from fpt_core.errors import ConfigError

    monkeypatch.setattr(hardware, "cpu_flags", lambda text=None: NO_BF16)
    cpu = hardware.pipeline_device("cpu")
    with pytest.raises(ConfigError, match=r"^precision: bf16 is not native"):
        hardware.fall_back({"precision": "bf16"}, cpu, allow_fallback=False)
    assert hardware.fall_back({"precision": "bf16"}, cpu, allow_fallback=True) == {"precision": "fp32"}
    assert hardware.fall_back({"precision": "bf16"}, None, allow_fallback=False) == {"precision": "bf16"}
    monkeypatch.setattr(hardware, "cpu_flags", lambda text=None: NO_BF16 | {"amx_bf16"})
    assert hardware.fall_back({"precision": "bf16"}, cpu, allow_fallback=False) == {"precision": "bf16"}
