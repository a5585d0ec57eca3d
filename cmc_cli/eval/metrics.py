"""Metrics shared by the evaluations."""

from __future__ import annotations

_ROUGE = None


def rouge_l(generation: str, reference: str) -> tuple[float, float]:
    """(recall, F-measure) of ROUGE-L, `rouge_score` with Porter stemming (as TOFU and most papers)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    s = _ROUGE.score(reference, generation)["rougeL"]
    return float(s.recall), float(s.fmeasure)


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
