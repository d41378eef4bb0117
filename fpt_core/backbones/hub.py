"""Loading transformers models: configs and weights from the hub, a directory or a config alone,
quietly, with fused attention and activations where the architecture has them.

transformers is imported where it is first used: the import takes seconds, which commands that
only read the registry's names never pay.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import torch
from torch import nn

from fpt_core import dropout
from fpt_core.errors import ConfigError, DataError


@contextlib.contextmanager
def quiet_transformers():
    """Silence load reports and progress bars; errors still raise."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Eager attention (which returns its weights) for the duration of one call."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def use_counter_attention(model: nn.Module) -> None:
    """A model that runs torch's fused attention (sdpa) switched to fpt_core.dropout's attention
    function: the same fused call where nothing is dropped, and attention-probability dropout by
    the counter-based hash in training. Other implementations (eager, where a model has no
    sdpa) are left as they are."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(dropout.COUNTER_ATTENTION,
                                functools.partial(dropout.attention, sdpa=sdpa_attention_forward))
    AttentionMaskInterface.register(dropout.COUNTER_ATTENTION, sdpa_mask)  # sdpa's masks
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(dropout.COUNTER_ATTENTION)


def _with_sdpa(make, *args, **kwargs):
    """Fused attention where the architecture supports it, its default otherwise."""
    try:
        return make(*args, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError):
        return make(*args, **kwargs)  # a real error raises again here


def fuse_activations(model: nn.Module) -> nn.Module:
    """GPT-2's gelu_new runs as eight Python elementwise ops (and their backward); GELUTanh is
    the same function in one kernel."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(module, name, GELUTanh())
    return model


def hf_from_config(config) -> nn.Module:
    from transformers import AutoModel

    with quiet_transformers():
        model = _with_sdpa(AutoModel.from_config, config, dtype=torch.float32)
    return fuse_activations(model.float())


# The last pretrained model loaded, as loaded: a pack trains many cells of one backbone in one
# process, and each gets a copy instead of reading the weights again.
_LOADED: dict[tuple, nn.Module] = {}


def hf_from_pretrained(source: str, backbone: str, **config_overrides) -> nn.Module:
    key = (source, tuple(sorted(config_overrides.items())))
    if key not in _LOADED:
        before = torch.random.get_rng_state()
        model = _load_pretrained(source, backbone, **config_overrides)
        if not torch.equal(before, torch.random.get_rng_state()):
            return model  # drew weights at random (e.g. a head absent from the checkpoint): a
            # copy would carry the first cell's draw, so each cell loads its own
        _LOADED.clear()
        _LOADED[key] = model
    return copy.deepcopy(_LOADED[key])


def _load_pretrained(source: str, backbone: str, **config_overrides) -> nn.Module:
    from transformers import AutoModel

    try:
        with quiet_transformers():
            model = _with_sdpa(
                AutoModel.from_pretrained, source, dtype=torch.float32, **config_overrides
            )
    except OSError as err:
        raise hub_error(backbone, source, err) from None
    return fuse_activations(model.float())


def hf_config(source: str, backbone: str):
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(source)
    except OSError as err:
        raise hub_error(backbone, source, err) from None


def hub_error(backbone: str, source: str, err: Exception) -> Exception:
    if Path(source).is_dir():
        return ConfigError(
            f"backbone: {source} is not a loadable model directory (no config.json or weights: "
            f"{type(err).__name__})"
        )
    return DataError(
        f"backbone {backbone}: cannot load {source}: not in the local Hugging Face cache and the "
        f"hub is unreachable (or HF_HUB_OFFLINE=1, or no such model); on a machine with internet run "
        f"`hf download {source} --local-dir DIR`, copy DIR here and pass backbone=DIR"
    )
