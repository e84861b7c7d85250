"""Datasets. `train.toml`'s `dataset` and `eval_dataset` name one of these factories (or any
`module:function`).

A dataset yields `(inputs, target)` pairs, for `loss(model(inputs), target)`, or dicts of tensors,
as Hugging Face datasets do, for `model(**batch)` (see `train.py`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset


def synthetic(
    samples: int = 512, inputs: int = 16, classes: int = 4, seed: int = 0, split: str = "train"
) -> Dataset:
    """A learnable classification task: labels come from a fixed random linear teacher.

    `seed` picks the task (the teacher); `split` picks the samples, so "train" and "eval" are
    disjoint draws of the same task.
    """
    teacher = torch.randn(inputs, classes, generator=torch.Generator().manual_seed(seed))
    offset = sum(split.encode())  # a different stream of samples per split
    x = torch.randn(samples, inputs, generator=torch.Generator().manual_seed(seed + offset))
    return TensorDataset(x, (x @ teacher).argmax(dim=1))


class DictDataset(Dataset):
    """Columns of equal length as a dataset of dicts: `{"input_ids": ..., "labels": ...}`."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: column[index] for name, column in self.columns.items()}


def synthetic_tokens(
    samples: int = 256, *, length: int = 8, vocab: int = 32, classes: int = 2, seed: int = 0,
    split: str = "train",
) -> Dataset:  # fmt: skip
    """Token sequences labelled by whether token 1 occurs more often than token 2, as dict
    samples (`input_ids`, `attention_mask`, `labels`), the shape of a tokenized text dataset."""
    generator = torch.Generator().manual_seed(seed + sum(split.encode()))
    ids = torch.randint(0, vocab, (samples, length), generator=generator)
    labels = ((ids == 1).sum(dim=1) > (ids == 2).sum(dim=1)).long() % classes
    return DictDataset({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})


def hf_dataset(
    path: str,
    *,
    split: str = "train",
    name: str | None = None,
    tokenizer: str = "",
    text_column: str = "text",
    max_length: int = 128,
    load_args: dict[str, Any] | None = None,
) -> Dataset:
    """A Hugging Face `datasets` dataset (`pip install -r requirements-hf.txt`), as torch tensors.

    `path` is a dataset on the Hub (e.g. "glue"), a loading script or builder ("csv", "json",
    with `load_args = { data_files = "..." }`), or a folder written by `Dataset.save_to_disk`.
    With `tokenizer` (a Hub name or folder), `text_column` is tokenized to `max_length` tokens
    (padded). A `label` column is renamed `labels`, as Hugging Face models expect.
    """
    from pathlib import Path

    import datasets

    folder = Path(path)
    if (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(path)
        data = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        data = datasets.load_dataset(path, name, split=split, **(load_args or {}))
    if tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        data = data.map(
            lambda rows: tok(rows[text_column], truncation=True, padding="max_length",
                             max_length=max_length),
            batched=True,
        )  # fmt: skip
    if "label" in data.column_names and "labels" not in data.column_names:
        data = data.rename_column("label", "labels")
    keep = [c for c in ("input_ids", "attention_mask", "token_type_ids", "labels", "pixel_values")
            if c in data.column_names]  # fmt: skip
    data.set_format("torch", columns=keep)
    return data  # type: ignore[no-any-return]
