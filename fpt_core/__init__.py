"""fpt_core: the Frozen Pretrained Transformer, its tasks, a resumable trainer and its results."""
__version__ = "0.1.0"
