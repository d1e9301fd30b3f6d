"""Texts: GoEmotions labels and selection, prompt templates and padding, neutral texts for side effects."""
