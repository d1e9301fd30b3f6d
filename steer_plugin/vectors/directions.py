"""Directions from per-text states of one layer (numpy, float64): PCA of differences, a logistic-regression
probe, and the principal components of the neutral states that ``--neutral-pcs`` projects out.

Every function takes ``[texts, hidden]`` arrays of one layer; ``build_vector`` loops over the layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# the probe's L2 penalty on the standardised weights: sklearn's LogisticRegression(C=1) against the summed
# (class-balanced) log-loss
PROBE_L2 = 1.0
_NEWTON_STEPS = 100


def pair_indices(n_target: int, n_baseline: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which target text is paired with which baseline text: both shuffled with one seeded generator
    (``rng = np.random.default_rng(seed)``; target order ``rng.permutation(n_target)``, then baseline order
    ``rng.permutation(n_baseline)``), paired by index, truncated to the smaller class."""
    rng = np.random.default_rng(seed)
    t, b = rng.permutation(n_target), rng.permutation(n_baseline)
    n = min(n_target, n_baseline)
    return t[:n], b[:n]


def first_principal_component(diffs: np.ndarray) -> np.ndarray:
    """The unit first right singular vector of ``diffs`` [N, H], *not* centred.

    repeng's ``pca_diff`` fits sklearn's PCA, which subtracts the mean difference first; with its contrastive
    pairs (one prompt, two personas) the spread of the differences is the concept. GoEmotions pairs are two
    unrelated texts: their mean difference is the emotion and their spread mostly text-to-text noise, so
    centring would throw the signal away. The uncentred first component maximises E[(d.u)^2] =
    (mean.u)^2 + u'Cov u: the mean difference plus the direction it varies along most (RepE's random sign
    flips of the pairs give the same axis)."""
    _, _, vt = np.linalg.svd(diffs, full_matrices=False)
    return vt[0]


def probe_weights(positive: np.ndarray, negatives: Sequence[np.ndarray], l2: float = PROBE_L2) -> np.ndarray:
    """A logistic regression of ``positive`` [N, H] against the ``negatives`` (one array per class), its
    weights mapped back to the raw space (so ``w . x`` is the logit up to a constant).

    Features are standardised (pooled mean and standard deviation; a constant feature gets weight 0); the
    classes are balanced (the positive class weighs as much as all negatives together, and each negative class
    the same); the objective, the weighted log-loss summed over the texts plus ``l2 / 2 * ||w||^2`` (intercept
    free), is strictly convex and is minimised by Newton's method with step halving: deterministic.
    """
    x = np.concatenate([positive, *negatives]).astype(np.float64)
    n = len(x)
    y = np.concatenate([np.ones(len(positive)), np.zeros(n - len(positive))])
    weight = np.concatenate(
        [np.full(len(positive), n / (2 * len(positive)))]
        + [np.full(len(c), n / (2 * len(negatives) * len(c))) for c in negatives]
    )
    mean, std = x.mean(0), x.std(0)
    scale = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, np.inf)  # constant feature: weight 0
    z = np.concatenate([(x - mean) / scale, np.ones((n, 1))], axis=1)
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0  # the intercept

    def loss(beta: np.ndarray) -> float:
        f = z @ beta
        return float(weight @ (np.logaddexp(0.0, f) - y * f) + 0.5 * (penalty * beta) @ beta)

    beta = np.zeros(z.shape[1])
    current = loss(beta)
    for _ in range(_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(z @ beta)))
        grad = z.T @ (weight * (p - y)) + penalty * beta
        hess = (z.T * (weight * p * (1 - p))) @ z + np.diag(penalty)
        step = np.linalg.solve(hess + 1e-12 * np.eye(len(beta)), grad)
        t = 1.0
        while t > 1e-8 and loss(beta - t * step) > current:
            t /= 2
        beta, previous = beta - t * step, current
        current = loss(beta)
        if previous - current <= 1e-12 * max(abs(current), 1.0):
            break
    return beta[:-1] / scale


def principal_components(states: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` principal components [k, H] (unit rows) of ``states`` [N, H], centred."""
    _, _, vt = np.linalg.svd(states - states.mean(0), full_matrices=False)
    return vt[:k]


def project_out(vector: np.ndarray, components: np.ndarray) -> np.ndarray:
    """``vector`` [H] minus its projection on the span of the orthonormal ``components`` [k, H]."""
    return vector - components.T @ (components @ vector)
