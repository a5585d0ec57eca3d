"""Metrics shared by the evaluations."""

from __future__ import annotations

from cmc_cli.data.answers import rouge_l  # noqa: F401  (here for eval/; computed in data/answers.py)


def harmonic_mean(values: list[float]) -> float:
    """n / sum(1/x); 0 when any value is 0 (as scipy.stats.hmean), NaN for no values."""
    if not values:
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def pairwise_outcome(first_order_a_wins: bool | None, second_order_a_wins: bool | None) -> float:
    """Score of response X judged twice, once as A (first order) and once as B (second order):
    1 if it wins both, 0 if it loses both, 0.5 otherwise (a tie, or the judge follows the position)."""
    wins = int(first_order_a_wins is True) + int(second_order_a_wins is False)
    losses = int(first_order_a_wins is False) + int(second_order_a_wins is True)
    if wins == 2:
        return 1.0
    if losses == 2:
        return 0.0
    return 0.5


def paired_bootstrap(a: list[float], b: list[float], n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean of the per-item differences a_i - b_i (the same items scored two ways) and its percentile
    bootstrap confidence interval: (mean, low, high)."""
    import numpy as np

    if len(a) != len(b) or not a:
        raise ValueError(f"a paired comparison needs the same non-empty items on both sides ({len(a)} vs {len(b)})")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (over seeds); half-width NaN for n < 2."""
    import math

    from scipy.stats import t

    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    return m, float(t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n))
