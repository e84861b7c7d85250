"""The Hugging Face option: a transformers model and a datasets dataset named in train.toml, on
dict batches.

A tiny BERT built from a config (nothing downloaded) learns toy tasks made on the fly: token
sequences, and a text dataset saved with `datasets` and tokenized by a tokenizer built here.
Needs `pip install -r requirements-hf.txt`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import train
from conftest import metrics

BERT = {
    "model_type": "bert", "vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16,
}  # fmt: skip


def tiny_bert_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str, args: str, eval_args: str
) -> train.TrainConfig:
    """Train the tiny BERT for 60 steps on the package's `dataset` factory; check that it
    evaluated at steps 30 and 60, that the loss (the model's own) went down, and that it beat
    chance on the evaluation set. Its config."""
    monkeypatch.setenv("HARCHOS_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing to download, and nothing is
    package = train.TrainConfig().model.split(".")[0]
    bert = ", ".join(f"{k} = {v!r}" for k, v in BERT.items()).replace("'", '"')
    cfg = train.load_config(
        train.PROJECT_CONFIG,
        [f'model="{package}.model:hf_model"', f"model_args={{ config = {{ {bert} }} }}",
         f'dataset="{package}.data:{dataset}"', f"dataset_args={{ {args} }}",
         f'eval_dataset="{package}.data:{dataset}"', f"eval_dataset_args={{ {eval_args} }}",
         "steps=60", "eval_every=30", "learning_rate=0.01", "log_every=10",
         f'output_dir="{tmp_path / "out"}"', f'logging_dir="{tmp_path / "runs"}"',
         'trackers=["jsonl"]'],
    )  # fmt: skip
    assert train.train(cfg).status == "finished"
    logged = metrics(tmp_path / "runs")
    evals = [m for m in logged if "eval/accuracy" in m]
    assert [m["step"] for m in evals] == [30, 60]
    # The loss came from the model's ModelOutput (labels in the batch) and went down.
    losses = [m["train/loss"] for m in logged if "train/loss" in m]
    assert losses[-1] < losses[0]  # type: ignore[operator]
    # The labels came through: better than the majority class by chance.
    assert evals[-1]["eval/accuracy"] > 0.6  # type: ignore[operator]
    return cfg


def test_a_transformers_model_on_dict_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_bert_run(tmp_path, monkeypatch, "synthetic_tokens", "",
                        'samples = 100, split = "eval"')  # fmt: skip

    # save_pretrained under accelerate: from_pretrained gives back the trained weights.
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "out"
    assert (out / "config.json").is_file()
    loaded = train.load_model(cfg, out)
    saved = load_file(out / "model.safetensors")
    state = loaded.state_dict()
    assert saved and all(torch.equal(state[k], saved[k]) for k in saved)
    assert type(loaded).__name__ == "BertForSequenceClassification"


def test_a_datasets_dataset_tokenized_by_a_local_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    import datasets
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A tokenizer and a text dataset made here: what hf_dataset loads from the Hub in real use.
    words = ["green", "sun", "wind", "dirty", "coal", "gas"]
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", *words])}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]"
    )
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert tokenizer("green coal")["input_ids"] == [2, 6]  # known words, not [UNK]
    rng = random.Random(0)

    def split(samples: int) -> datasets.Dataset:
        # Five words from one group: label 1 for the green group, 0 for the dirty one.
        labels = [rng.randrange(2) for _ in range(samples)]
        group = {1: words[:3], 0: words[3:]}
        texts = [" ".join(rng.choice(group[label]) for _ in range(5)) for label in labels]
        return datasets.Dataset.from_dict({"text": texts, "label": labels})

    datasets.DatasetDict({"train": split(256), "eval": split(100)}).save_to_disk(tmp_path / "data")
    data = f'path = "{tmp_path / "data"}", tokenizer = "{tmp_path / "tokenizer"}", max_length = 8'
    # The labels reach the model renamed `labels`, as hf_dataset promises.
    tiny_bert_run(tmp_path, monkeypatch, "hf_dataset", data, f'{data}, split = "eval"')
