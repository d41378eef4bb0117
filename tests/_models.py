"""Model helpers shared by tests."""
import torch


def without_dropout(build):
    def build_model_without_dropout(*args, **kwargs):
        model = build(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        return model

    return build_model_without_dropout
