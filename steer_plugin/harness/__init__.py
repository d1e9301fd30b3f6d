"""lm-evaluation-harness: the ``steered_hf`` model, prefix reuse, config batching, the emotion classifier, our tasks."""
