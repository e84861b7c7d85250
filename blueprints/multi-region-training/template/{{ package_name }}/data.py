"""Datasets. `train.toml`'s `dataset` names one of these factories (or any `module:function`).

A dataset yields `(inputs, target)` pairs; `train.py` computes `loss(model(inputs), target)`.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset


def synthetic(samples: int = 512, inputs: int = 16, classes: int = 4, seed: int = 0) -> Dataset:
    """A learnable classification task: labels come from a fixed random linear teacher."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, inputs, generator=generator)
    teacher = torch.randn(inputs, classes, generator=generator)
    return TensorDataset(x, (x @ teacher).argmax(dim=1))
