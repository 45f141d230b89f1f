"""Any preference file (`gpmctl.data.sources.read_source`): per-pair scores, then metrics.pair_report;
and the cyclic sets' extras (per-cycle accuracy and the best a scalar reward can reach)."""

from __future__ import annotations


from gpmctl.errors import DataError

GROUP_KEYS = ("subset", "kind")


def score_records(scorer, records: list) -> list[dict]:
    """PreferenceRecords -> {"id"?, "subset"?, meta..., "label"?, "score", "p", "correct"}, one per pair."""
    import torch

    if not records:
        return []
    value, gate = scorer.embed([r.prompt for r in records], [[r.chosen, r.rejected] for r in records], "pairs")
    s = scorer.score_matrix(value, gate)[:, 0, 1]
    p = torch.sigmoid(s / scorer.tau)
    out = []
    for i, r in enumerate(records):
        record = {"id": r.id, "subset": r.subset}
        record.update((k, v) for k, v in (r.meta or {}).items() if k not in record)
        record.update(label=r.label, score=float(s[i]), p=float(p[i]), correct=1 if s[i] > 0 else 0)
        out.append({k: v for k, v in record.items() if v is not None})
    return out


def read_scores(path: str, tau: float | None = None) -> list[dict]:
    """Per-example records written by --examples: each needs `score` and `p` (or `score` and --tau, or `p`
    alone, then score = logit(p) sign only)."""
    import math

    from gpmctl.eval.scoring import example_rows

    out = []
    for number, row in example_rows(path):
        if row.get("p") is None:
            if row.get("score") is None or tau is None:
                raise DataError(path, "needs p (or score with --tau)", line=number)
            row["p"] = 1.0 / (1.0 + math.exp(-row["score"] / tau))
        if row.get("score") is None:
            row["score"] = row["p"] - 0.5  # only its sign is used
        out.append(row)
    return out


def cyclic_report(examples: list[dict], rows_for_ceiling: list[dict] | None) -> dict:
    """Per-cycle accuracy (meta `cycle`), the share of cycles with every pair right, and the BT ceiling
    (gpmctl.data.cyclic.best_scalar_accuracy) when the rows name their items."""
    from gpmctl.data.cyclic import ITEM_WORDS, best_scalar_accuracy

    cycles: dict[str, list[int]] = {}
    for e in examples:
        if e.get("cycle") is not None:
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
    if rows and all(r.get("chosen_item") in ITEM_WORDS and r.get("rejected_item") in ITEM_WORDS for r in rows):
        num_items = 1 + max(max(ITEM_WORDS.index(r["chosen_item"]), ITEM_WORDS.index(r["rejected_item"])) for r in rows)
        out["bt_ceiling"] = best_scalar_accuracy(rows, num_items)
    return out
