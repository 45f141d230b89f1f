"""Pairwise metrics on saved scores: accuracy, mean P(chosen > rejected), calibration, breakdowns.

Calibration counts every pair in both orders: (P, y) and (1 - P, 1 - y), where P = P(chosen > rejected)
and y the label (1 unless the data gives a soft label). The reliability table (10 equal bins over
[0, 1], a P of exactly 1 in the last bin) is then symmetric, and neither it nor the expected calibration
error depends on which side a file calls "chosen":
    ECE = sum_b (n_b / N) * |mean P in b - mean y in b|     over the 2N oriented predictions.
Accuracy asks whether the model prefers the side the label prefers (y > 0.5: chosen, y < 0.5: rejected);
a pair labelled exactly 0.5 prefers neither side, so it is left out of accuracy (not out of calibration).
"""

from __future__ import annotations

from collections.abc import Sequence


def agrees_with_label(score, label):
    """Whether s(chosen > rejected) picks the label's side: score > 0 where label > 0.5, score < 0 where
    label < 0.5, never where label == 0.5 (ties are wrong). Python floats or same-shape tensors."""
    return ((score > 0) & (label > 0.5)) | ((score < 0) & (label < 0.5))


def reliability_table(probs: Sequence[float], labels: Sequence[float] | None = None, bins: int = 10) -> list[dict]:
    """-> one row per bin: {"bin": [lo, hi], "count", "mean_p", "observed"} (mean_p/observed None when empty)."""
    labels = [1.0] * len(probs) if labels is None else labels
    sums = [[0, 0.0, 0.0] for _ in range(bins)]
    for p, y in zip(probs, labels):
        for q, z in ((p, y), (1.0 - p, 1.0 - y)):
            b = min(int(q * bins), bins - 1)
            sums[b][0] += 1
            sums[b][1] += q
            sums[b][2] += z
    rows = []
    for b, (n, sp, sy) in enumerate(sums):
        mean_p, observed = (sp / n, sy / n) if n else (None, None)
        rows.append({"bin": [b / bins, (b + 1) / bins], "count": n, "mean_p": mean_p, "observed": observed})
    return rows


def expected_calibration_error(table: list[dict]) -> float:
    total = sum(r["count"] for r in table)
    return sum(r["count"] / total * abs(r["mean_p"] - r["observed"]) for r in table if r["count"]) if total else float("nan")


def pair_summary(scores: Sequence[float], probs: Sequence[float], labels: Sequence[float] | None = None) -> dict:
    """Accuracy over the pairs whose label has a side (`agrees_with_label`; None if none has), mean
    P(chosen > rejected), ECE; pairs counted, and those counted in accuracy."""
    n = len(scores)
    if not n:
        return {"pairs": 0}
    labels = [1.0] * n if labels is None else labels
    decided = [(s, y) for s, y in zip(scores, labels) if y != 0.5]
    table = reliability_table(probs, labels)
    return {
        "pairs": n,
        "accuracy_pairs": len(decided),
        "accuracy": sum(1 for s, y in decided if agrees_with_label(s, y)) / len(decided) if decided else None,
        "mean_prob": sum(probs) / n,
        "ece": expected_calibration_error(table),
    }


def pair_report(examples: list[dict], group_keys: Sequence[str] = ("subset", "kind")) -> dict:
    """examples: {"score", "p", "label"?, "subset"?, "kind"?} -> overall summary + reliability table +
    a summary per value of each group key present."""
    scores = [e["score"] for e in examples]
    probs = [e["p"] for e in examples]
    labels = [1.0 if e.get("label") is None else float(e["label"]) for e in examples]
    report = pair_summary(scores, probs, labels)
    report["reliability"] = reliability_table(probs, labels)
    for key in group_keys:
        values = sorted({str(e[key]) for e in examples if e.get(key) is not None})
        if not values:
            continue
        groups = {}
        for value in values:
            sel = [e for e in examples if e.get(key) is not None and str(e[key]) == value]
            groups[value] = pair_summary(
                [e["score"] for e in sel],
                [e["p"] for e in sel],
                [1.0 if e.get("label") is None else float(e["label"]) for e in sel],
            )
        report[f"by_{key}"] = groups
    return report
