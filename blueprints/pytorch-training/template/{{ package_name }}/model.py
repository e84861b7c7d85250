"""Models. `train.toml`'s `model` names one of these factories (or any `module:function`)."""

from __future__ import annotations

from torch import nn


def tiny_mlp(
    inputs: int = 16, hidden: int = 64, classes: int = 4, dropout: float = 0.1
) -> nn.Module:
    """A two-layer perceptron: trains in seconds on a CPU.

    The dropout layer makes training use the RNG, so checkpoints must carry RNG state for a
    resumed run to match an uninterrupted one.
    """
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, classes),
    )
