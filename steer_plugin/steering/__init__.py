"""Steering in use: side effects (KL, perplexity), alpha calibration to KL budgets, checks, generation."""
