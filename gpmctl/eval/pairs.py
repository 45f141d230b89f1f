"""Any preference file (`gpmctl.data.sources.read_source`): per-pair scores, then metrics.pair_report;
and the cyclic sets' extras (per-cycle accuracy and the best a scalar reward can reach)."""

from __future__ import annotations

from gpmctl.errors import DataError
from gpmctl.eval.metrics import agrees_with_label

GROUP_KEYS = ("subset", "kind")


def pair_correct(score: float, label: float | None) -> int | None:
    """1 / 0: the model does / does not prefer the label's side (None means 1); None for a label of 0.5."""
    label = 1.0 if label is None else label
    return None if label == 0.5 else int(agrees_with_label(score, label))


def score_records(scorer, records: list) -> list[dict]:
    """PreferenceRecords -> {"id"?, "subset"?, meta..., "label"?, "score", "p", "correct"?}, one per pair
    (`correct` as metrics.agrees_with_label; absent for a label of 0.5)."""
    import torch

    if not records:
        return []
    s, _ = scorer.pair_scores([r.prompt for r in records], [r.chosen for r in records], [r.rejected for r in records], "pairs")
    p = torch.sigmoid(s / scorer.tau)
    out = []
    for i, r in enumerate(records):
        record = {"id": r.id, "subset": r.subset}
        record.update((k, v) for k, v in (r.meta or {}).items() if k not in record)
        record.update(label=r.label, score=float(s[i]), p=float(p[i]), correct=pair_correct(float(s[i]), r.label))
        record["truncated"] = scorer.last_cut[i] or None
        out.append({k: v for k, v in record.items() if v is not None})
    return out


def read_scores(path: str, tau: float | None = None) -> list[dict]:
    """Per-example records written by --examples: each needs `score` and `p` (or `score` and --tau, or `p`
    alone, then score = logit(p) sign only); `correct` is recomputed from score and label."""
    import math

    from gpmctl.eval.examples import example_fields

    out = []
    for fields in example_fields(path):
        row = fields.row
        fields.probability("label", required=False)
        score, p = fields.number("score", required=False), fields.probability("p", required=False)
        if score is not None and p is not None and (score > 0 > p - 0.5 or score < 0 < p - 0.5):
            raise fields.error("p", f"{p!r} is on the other side of 1/2 from score {score!r}")
        if row.get("p") is None:
            if row.get("score") is None or tau is None:
                raise fields.error("p", "missing (P(chosen > rejected), as --examples writes it)")
            row["p"] = 1.0 / (1.0 + math.exp(-row["score"] / tau))
        if row.get("score") is None:
            row["score"] = row["p"] - 0.5  # only its sign is used
        row["correct"] = pair_correct(row["score"], row.get("label"))
        out.append(row)
    return out


def cyclic_report(examples: list[dict], rows_for_ceiling: list[dict] | None) -> dict:
    """Per-cycle accuracy (meta `cycle`), the share of cycles with every pair right, and the BT ceiling
    (gpmctl.data.cyclic.best_scalar_accuracy) when the rows name their items (at most MAX_EXACT_ITEMS)."""
    from gpmctl.data.cyclic import MAX_EXACT_ITEMS, best_scalar_accuracy

    cycles: dict[str, list[int]] = {}
    for e in examples:
        if e.get("cycle") is not None and e.get("correct") is not None:
            cycles.setdefault(str(e["cycle"]), []).append(e["correct"])
    if not cycles:
        raise DataError("cyclic", "the rows have no `cycle` key: use `gpmctl eval pairs` for non-cyclic data", field="cycle")
    per_cycle = {c: sum(v) / len(v) for c, v in sorted(cycles.items(), key=lambda kv: (len(kv[0]), kv[0]))}
    out = {
        "cycles": len(per_cycle),
        "mean_cycle_accuracy": sum(per_cycle.values()) / len(per_cycle),
        "cycles_all_right": sum(1 for a in per_cycle.values() if a == 1.0) / len(per_cycle),
        "per_cycle": per_cycle,
    }
    rows = rows_for_ceiling or []
    items = {r.get(key) for r in rows for key in ("chosen_item", "rejected_item")}
    if rows and all(isinstance(item, str) for item in items) and len(items) <= MAX_EXACT_ITEMS:
        out["bt_ceiling"] = best_scalar_accuracy(rows)
    return out
