"""Calibration's behaviour scans (engine/calibrate.py has the rule they complete): after the greedy-hits choice,
decode a few of the delta's own prompts at a few strengths and read what the delta was trained to do — refusing
(idk deltas), or answering as its training answers do (instruction deltas)."""

from __future__ import annotations

REFUSAL_STEP = 0.5  # the behaviour scans' step up the grid (refusals of idk deltas, answers of instruction deltas)
REFUSAL_ITEMS = 16  # objective prompts decoded at each alpha of the refusal scan
ANSWER_ITEMS = 32  # objective prompts decoded at each alpha of an instruction delta's answer scan
ANSWER_TOKENS = 32  # at most this many new tokens per answer in that scan


def scan_steps(grid, allowed: list[int], start: float) -> list[float]:
    """The alphas a behaviour scan tries, in order: `start` (the hits rule's choice) if it is allowed, then the
    allowed multiples of REFUSAL_STEP above it."""
    on_step = [grid[i] for i in allowed if grid[i] > start + 1e-9
               and abs(grid[i] / REFUSAL_STEP - round(grid[i] / REFUSAL_STEP)) < 1e-6]
    return ([start] if any(abs(grid[i] - start) < 1e-9 for i in allowed) else []) + on_step


def scan_refusals(grid, allowed: list[int], start: float, target: float, rate, n: int) -> tuple[float, str, list]:
    """The refusal rule above: (alpha, why, [[alpha, refusal rate], ...] as scanned). rate(alpha) decodes the
    n objective prompts at alpha; tried: scan_steps, stopping at the first that reaches."""
    steps = scan_steps(grid, allowed, start)
    if not steps:
        return start, "", []
    scan = []
    for a in steps:
        scan.append([a, rate(a)])
        if scan[-1][1] >= target - 1.0 / max(1, n) - 1e-9:
            return a, f"the smallest alpha from the greedy-hits choice up whose greedy refusals ({scan[-1][1]:.2f}) are " \
                      f"within one prompt of template + delta's ({target:.2f}), within the off-target budget", scan
    best = max(r for _, r in scan)
    a = next(x for x, r in scan if r == best)
    return a, f"no alpha within the off-target budget refuses within one prompt of template + delta ({target:.2f}): " \
              f"the smallest with the most refusals ({best:.2f})", scan


def scan_answers(grid, allowed: list[int], start: float, score, n: int) -> tuple[float, str, list]:
    """The instruction rule above: (alpha, why, [[alpha, ROUGE-L], ...]). score(alpha) decodes the n objective
    prompts at alpha; every step of scan_steps is tried, and the smallest alpha within one prompt's worth (1/n)
    of the best score is chosen."""
    steps = scan_steps(grid, allowed, start)
    if not steps:
        return start, "", []
    scan = [[a, score(a)] for a in steps]
    best = max(r for _, r in scan)
    a = next(x for x, r in scan if r >= best - 1.0 / max(1, n) - 1e-9)
    return a, f"the smallest alpha from the greedy-hits choice up whose greedy answers to the delta's own prompts are " \
              f"within one prompt of the best ROUGE-L scanned ({best:.3f})", scan


def refusal_rate(dec, prompts: list[str], refusals: list[str]) -> float:
    """The share of prompts whose greedy answer begins with a refusal (data/refusals.is_refusal), decoding only
    as many new tokens as the longest refusal needs."""
    from cmc_cli.data.refusals import is_refusal
    from cmc_cli.engine.sampling import GenerationConfig

    tok = dec.user.tokenizer
    n_new = max(len(tok.encode(" " + r, add_special_tokens=False)) for r in refusals) + 2
    gens = dec.generate(prompts, GenerationConfig(max_new_tokens=n_new))
    return sum(is_refusal(g.text, refusals) for g in gens) / max(1, len(gens))


def answer_rouge(dec, items: list[tuple[str, str]]) -> float:
    """Mean ROUGE-L recall of the greedy answers to the items' prompts against their answers (data/answers.py, as
    `cmc eval`), decoding as many new tokens as the longest answer has, at most ANSWER_TOKENS."""
    from cmc_cli.data.answers import rouge_l
    from cmc_cli.engine.sampling import GenerationConfig

    tok = dec.user.tokenizer
    n_new = min(ANSWER_TOKENS, max(len(tok.encode(" " + r, add_special_tokens=False)) for _, r in items))
    gens = dec.generate([p for p, _ in items], GenerationConfig(max_new_tokens=n_new))
    return sum(rouge_l(g.text, r)[0] for g, (_, r) in zip(gens, items)) / max(1, len(items))
