"""The independent reference for side effects (KL to the unsteered model, steered perplexity): each text
alone, a plain forward hook adding the delta, float64 log_softmax."""

from __future__ import annotations

import math

import torch

from tests.helpers.tiny import CORPUS, decoder_blocks

TEXTS = [*CORPUS[:8], "Hi there.", "Go", "A"]  # different lengths; "Go" has 2 tokens (no prefix), "A" 1 (skipped)


def reference(model, tokenizer, texts, delta_by_layer, positions):
    """Each text alone (no padding), a plain forward hook adding the delta, float64 log_softmax."""
    blocks = decoder_blocks(model)
    kl_sum = nll_sum = 0.0
    n_tok = 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if len(ids) < 2:
            continue
        n, c = len(ids), len(ids) // 2
        inp = torch.tensor([ids[:-1]])
        mask = torch.zeros(1, n - 1, 1)
        if positions == "all":
            mask[:] = 1
        else:
            mask[0, c - 1 : n - 1] = 1

        def make_hook(d):
            def hook(module, args, out):
                if isinstance(out, tuple):
                    return (out[0] + mask * d, *out[1:])
                return out + mask * d

            return hook

        with torch.no_grad():
            p = torch.log_softmax(model(input_ids=inp).logits[0].double(), -1)
            handles = [blocks[l].register_forward_hook(make_hook(d)) for l, d in delta_by_layer.items()]
            try:
                q = torch.log_softmax(model(input_ids=inp).logits[0].double(), -1)
            finally:
                for h in handles:
                    h.remove()
        for j in range(c, n):
            kl_sum += float((p[j - 1].exp() * (p[j - 1] - q[j - 1])).sum())
            nll_sum += -float(q[j - 1, ids[j]])
            n_tok += 1
    return kl_sum / n_tok, math.exp(nll_sum / n_tok), n_tok
