"""How an answer compares with its reference, text against text: shared by evaluation (eval/) and by calibration's
scan of an instruction delta's answers (engine/calibrate.py), so that both read the same number."""

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
