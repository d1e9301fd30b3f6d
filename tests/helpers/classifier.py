"""Tiny random emotion classifiers (GoEmotions sigmoid, Ekman softmax) and an independent reference for their
scores: a separately loaded model, one text at a time."""

from __future__ import annotations

import functools
from pathlib import Path

from steer_plugin.data.goemotions import LABELS

SENTENCES = [
    "I am so angry today and I hate waiting",
    "what a lovely day it is, thank you so much",
    "the table is made of wood",
    "tell me about yourself",
    "she cried all night because her dog died",
    "wow I did not expect that at all",
    "the meeting is scheduled for ten o'clock",
]


def build_tokenizer(folder: Path, max_length: int = 64):
    """A WordLevel tokenizer trained on SENTENCES, [CLS] x [SEP], saved into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=max_length,
    )  # fmt: skip
    fast.save_pretrained(folder)
    return fast


def build_goemotions_classifier(folder: Path) -> str:
    """Tiny random BERT with the 28 GoEmotions labels, multi-label (sigmoid)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tok = build_tokenizer(folder)
    labels = list(LABELS)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, pad_token_id=0, initializer_range=0.5,
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        problem_type="multi_label_classification",
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    return str(folder)


def build_ekman_classifier(folder: Path) -> str:
    """Tiny random RoBERTa with the 7 Ekman labels (capitalised, as some hub models have), softmax."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tok = build_tokenizer(folder)
    labels = ["Anger", "Disgust", "Fear", "Joy", "Neutral", "Sadness", "Surprise"]
    cfg = RobertaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=80, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        initializer_range=0.5, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
    )  # fmt: skip
    torch.manual_seed(1)
    RobertaForSequenceClassification(cfg).save_pretrained(folder)
    return str(folder)


@functools.cache
def _reference_model(folder: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder).eval()


def reference_probs(folder: str, text: str, multi_label: bool) -> list[float]:
    """Independent computation: a separately loaded model, one text at a time (no padding, no batching)."""
    import torch

    tok, model = _reference_model(folder)
    with torch.no_grad():
        logits = model(**tok(text, return_tensors="pt")).logits[0].double()
    return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)).tolist()


class ForwardCounter:
    def __init__(self, model) -> None:
        self.calls = 0
        self.rows: list[int] = []
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.rows.append(int(output.logits.shape[0]))

    def remove(self) -> None:
        self.handle.remove()
