"""Backbones of the FPT: a registry of named ones, hub ids, directories and the LSTM baseline."""
from fpt_core.backbones.base import Backbone, BackboneSpec
from fpt_core.backbones.registry import (
    BACKBONES,
    KINDS,
    backbone_names,
    build_backbone,
    is_known_backbone,
    n_blocks_of,
    resolve,
)

__all__ = [
    "BACKBONES",
    "KINDS",
    "Backbone",
    "BackboneSpec",
    "backbone_names",
    "build_backbone",
    "is_known_backbone",
    "n_blocks_of",
    "resolve",
]
