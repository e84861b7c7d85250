"""Models. `train.toml`'s `model` names one of these factories (or any `module:function`)."""

from __future__ import annotations

from typing import Any

import torch
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


class TinyTextClassifier(nn.Module):
    """Mean of token embeddings, then a linear layer. Called the Hugging Face way,
    `model(input_ids=..., attention_mask=..., labels=...)`, it returns a dict with `logits`, and
    `loss` when given `labels`, as a `ModelOutput` does."""

    def __init__(self, vocab: int = 32, hidden: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        weights = mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits = self.head(pooled)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def tiny_text_classifier(vocab: int = 32, hidden: int = 32, classes: int = 2) -> nn.Module:
    return TinyTextClassifier(vocab, hidden, classes)


def hf_model(
    name: str = "",
    task: str = "AutoModelForSequenceClassification",
    config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A `transformers` model (`pip install -r requirements-hf.txt`).

    `name` is a Hub model or a local folder: its pretrained weights are loaded
    (`task.from_pretrained(name, **kwargs)`, e.g. `num_labels = 2`). Without a name, `config`
    describes a fresh model (`{ model_type = "bert", hidden_size = 64, ... }`), randomly
    initialised: nothing is downloaded.
    """
    import transformers

    auto = getattr(transformers, task)
    if name:
        return auto.from_pretrained(name, **kwargs)  # type: ignore[no-any-return]
    settings = dict(config or {})
    model_type = settings.pop("model_type", "bert")
    built = transformers.AutoConfig.for_model(model_type, **settings, **kwargs)
    return auto.from_config(built)  # type: ignore[no-any-return]
