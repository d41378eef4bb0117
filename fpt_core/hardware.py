"""What the machine offers, detected rather than assumed: native bf16, fused attention, compile.

bf16 pays only where the hardware multiplies in it: a GPU with bf16 tensor cores (compute
capability 8.0 or later) or a CPU with AMX or AVX-512 BF16. Elsewhere (an AVX2 EPYC, a V100)
torch emulates it and a bf16 step runs several times slower than fp32, so check_precision
refuses it unless the config allows falling back to fp32.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from fpt_core.errors import ConfigError

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
BF16_ARM_FEATURE = "bf16"  # aarch64's BFMMLA/BFDOT (Graviton3, Neoverse V1/V2); no x86 flag is named so
BF16_MIN_CAPABILITY = (8, 0)  # Ampere: the first bf16 tensor cores
TF32_MIN_CAPABILITY = (8, 0)  # Ampere: the first TF32 tensor cores
FALLBACK_HINT = "train: {precision_fallback: true} in a config, precision_fallback=true to fpt train"


def read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _first_value(text: str, keys: tuple[str, ...]) -> str | None:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys:
            return value.strip()
    return None


def parse_cpu_flags(text: str) -> set[str]:
    """The first processor's flags (x86 "flags", aarch64 "Features"); every core has the same."""
    value = _first_value(text, ("flags", "Features"))
    return set(value.split()) if value else set()


def parse_cpu_model(text: str) -> str | None:
    return _first_value(text, ("model name", "Model Name", "Processor"))


def cpu_flags(text: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (or from `text`); empty where unavailable."""
    return parse_cpu_flags(read_cpuinfo() if text is None else text)


def cpu_model(text: str | None = None) -> str:
    model = parse_cpu_model(read_cpuinfo() if text is None else text)
    return model or platform.processor() or platform.machine() or "unknown CPU"


def cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def machine_name(device: torch.device, text: str | None = None) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model(text)


def native_bf16(device: torch.device, capability: tuple[int, int] | None = None,
                flags: set[str] | None = None) -> bool:
    """Whether the hardware multiplies in bf16 itself; capability and flags default to queries."""
    device = torch.device(device)
    if device.type == "cuda":
        capability = cuda_capability(device) if capability is None else capability
        return tuple(capability) >= BF16_MIN_CAPABILITY
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        return any(f in flags for f in BF16_CPU_FLAGS + (BF16_ARM_FEATURE,))
    return False


def _why_not_native(device: torch.device, capability, flags) -> str:
    if device.type == "cuda":
        capability = cuda_capability(device) if capability is None else capability
        major, minor = capability
        return f"compute capability {major}.{minor} < {BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]}"
    return f"no {'/'.join(BF16_CPU_FLAGS)}"


def native_tf32(device: torch.device, capability: tuple[int, int] | None = None) -> bool:
    """Whether the device has TF32 tensor cores: a CUDA GPU of compute capability 8.0 or later."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    capability = cuda_capability(device) if capability is None else capability
    return tuple(capability) >= TF32_MIN_CAPABILITY


def check_precision(precision: str, device: torch.device, allow_fallback: bool, *,
                    capability: tuple[int, int] | None = None, flags: set[str] | None = None,
                    name: str | None = None) -> str:
    """The precision to run: `precision` itself, or fp32 for bf16 or tf32 on hardware that lacks
    it when allow_fallback (another cell id, which the caller says); without it, a ConfigError."""
    device = torch.device(device)
    lacks_bf16 = precision == "bf16" and not native_bf16(device, capability, flags)
    lacks_tf32 = precision == "tf32" and not native_tf32(device, capability)
    if not (lacks_bf16 or lacks_tf32):
        return precision
    if allow_fallback:
        return "fp32"
    kind = "GPU" if device.type == "cuda" else "CPU"
    name = name or machine_name(device)
    if lacks_bf16:
        why = (f"bf16 is not native on this {kind} ({name}, "
               f"{_why_not_native(device, capability, flags)}) and runs several times slower than fp32")
    else:
        why = (f"tf32 needs the TF32 tensor cores of a CUDA GPU of compute capability "
               f"{TF32_MIN_CAPABILITY[0]}.{TF32_MIN_CAPABILITY[1]} or later, and this is a {kind} ({name})")
    raise ConfigError(f"precision: {why}; allowed here: fp32 (or allow the fallback with {FALLBACK_HINT})")


@contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """TF32 matrix products for a tf32 cell on a GPU, and none for any other cell (torch's
    default since 1.12), restored afterwards: a pack's cells share one process."""
    if torch.device(device).type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@dataclass(frozen=True)
class GPU:
    """A GPU's data-sheet dense peaks in TFLOP/s (no 2:4 sparsity): bf16 tensor cores (fp16 on
    the V100), fp32 on CUDA cores, TF32 tensor cores (None: it has none), and whether its bf16
    is native (the V100's is emulated)."""

    name: str
    bf16: float
    fp32: float
    tf32: float | None
    native_bf16: bool = True

    def precision(self, precision: str, allow_fallback: bool) -> str:
        """What a cell of `precision` runs as on this GPU, as check_precision would decide."""
        lacks = (precision == "bf16" and not self.native_bf16) or (precision == "tf32" and self.tf32 is None)
        if not lacks:
            return precision
        if allow_fallback:
            return "fp32"
        raise ConfigError(f"precision: {precision} is not native on the {self.name} the jobs run on "
                          f"(train: gpu); allowed there: fp32 (or allow the fallback with "
                          f"{FALLBACK_HINT})")


GPUS = {
    "h100-sxm": GPU("NVIDIA H100 SXM5 80GB", 989.4, 66.9, 494.7),
    "h100-pcie": GPU("NVIDIA H100 PCIe 80GB", 756.5, 51.0, 378.0),
    "h200": GPU("NVIDIA H200 141GB", 989.4, 66.9, 494.7),
    "a100-80gb": GPU("NVIDIA A100 80GB", 312.0, 19.5, 156.0),
    "a100-40gb": GPU("NVIDIA A100 40GB", 312.0, 19.5, 156.0),
    "v100": GPU("NVIDIA V100 SXM2 (fp16 tensor cores, no bf16, no TF32)", 125.0, 15.7, None, False),
    "l40s": GPU("NVIDIA L40S", 362.05, 91.6, 183.0),
    "rtx-4090": GPU("NVIDIA GeForce RTX 4090 (fp32 accumulate)", 165.2, 82.6, 82.6),
    "a10": GPU("NVIDIA A10", 125.0, 31.2, 62.5),
}


def c_compiler() -> str | None:
    """The C++ compiler inductor would call on the CPU, if any."""
    for candidate in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def compile_usable(device: torch.device) -> bool:
    """torch.compile can generate code here: inductor imports, plus a C++ compiler on the CPU or
    triton on a GPU."""
    if importlib.util.find_spec("torch._inductor") is None:
        return False
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return c_compiler() is not None


def sdpa_available(device: torch.device) -> bool:
    """A fused scaled_dot_product_attention kernel runs here (checked on a tiny call)."""
    fn = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    if fn is None:
        return False
    try:
        q = torch.zeros(1, 1, 2, 8, device=device)
        fn(q, q, q, is_causal=True)
    except RuntimeError:
        return False
    return True


def levers(device: torch.device) -> dict:
    """What this hardware offers a training step."""
    device = torch.device(device)
    out = {
        "device": device.type,
        "machine": machine_name(device),
        "native_bf16": native_bf16(device),
        "sdpa": sdpa_available(device),
        "compile": compile_usable(device),
        "threads": torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    if device.type == "cpu":
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the ATen kernels' ISA
    else:
        out["capability"] = ".".join(map(str, cuda_capability(device)))
    return out


def pipeline_device(name: str) -> torch.device | None:
    """The device a grid's jobs will run on, where this machine can tell: `cuda` only where a
    GPU is visible (a cluster's login node often has none while its jobs get one)."""
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available() and name in ("cuda", "auto"):
        return torch.device("cuda")
    return torch.device("cpu") if name == "auto" else None


def fall_back(values: dict, device: torch.device | None, allow_fallback: bool,
              gpu: str | None = None) -> dict:
    """A resolved cell's values with its precision checked against `device`, or where this
    machine cannot see the jobs' device (a cluster's login node), against the GPU the config
    names (`gpu`, a key of GPUS; None: unchecked): bf16 or tf32 where the hardware lacks it is
    refused (ConfigError naming `precision`), or with allow_fallback becomes fp32, which is
    another cell with its own id."""
    precision = values.get("precision", "fp32")
    if precision == "fp32":
        return values
    if device is not None:
        return {**values, "precision": check_precision(precision, device, allow_fallback)}
    if gpu in GPUS:
        return {**values, "precision": GPUS[gpu].precision(precision, allow_fallback)}
    return values
