"""Sweeps and what they found: plan and folder, results files, leaderboards, paired statistics, reports, the run."""
