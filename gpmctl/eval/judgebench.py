"""JudgeBench (ScalerLab, ICLR 2025): hard pairs of responses by one model to one question, labelled by objective
correctness. The official reward-model rule (ScalerLab/JudgeBench at e2c52c2: utils/judges.py, run_judge.py,
utils/metrics.py; ../shared/data/README.md "JudgeBench"), with s(A > B) from the two responses embedded once
(BT: r_A - r_B):
  single game   decision = "A>B" if s(A > B) > 0 else "B>A"   (an exact tie is "B>A");  correct iff decision == label
  both orders   (--both-orders, the official default, meant for order-sensitive judges) the pair is judged as
                (B, A) too: "A>B" if s(B > A) > 0 else "B>A", flipped back; each of the two decisions adds +1
                if it is the label and -1 if it is the other one; correct iff the sum > 0 (0 is wrong)
  score         100 x correct / pairs, per category by `source` prefix and Overall pooled over every pair of a
                file (not the mean of the categories). Each file is reported alone, as the official code does.
"""

from __future__ import annotations

from pathlib import Path

from gpmctl.errors import DataError

DATASET_ID = "ScalerLab/JudgeBench"
SPLIT = "gpt"  # the GPT-4o file (350 pairs); "claude": the Claude-3.5-Sonnet file (270)
CATEGORIES = {"mmlu-pro": "Knowledge", "livebench-reasoning": "Reasoning", "livebench-math": "Math", "livecodebench": "Coding"}
LABELS = ("A>B", "B>A")
COLUMNS = ("pair_id", "source", "question", "response_model", "response_A", "response_B", "label")


def category(source: str) -> str | None:
    """`source` (mmlu-pro-law, livebench-math, ...) -> its category; None if no prefix matches."""
    return next((name for prefix, name in CATEGORIES.items() if source == prefix or source.startswith(prefix + "-")), None)


def decision(score: float) -> str:
    """The judge's decision from s(first > second): "A>B" if strictly positive, else "B>A" (a tie too)."""
    return LABELS[0] if score > 0 else LABELS[1]


def pair_correct(label: str, score: float, score_reversed: float | None, both_orders: bool) -> int:
    """1 / 0 by the official rule from s(A > B) and s(B > A): the single game (A, B), or both orders, the
    game (B, A) flipped back to A / B, +1 / -1 per order and the sum > 0."""
    first = decision(score)
    if not both_orders:
        return int(first == label)
    second = LABELS[1] if decision(score_reversed) == LABELS[0] else LABELS[0]
    votes = sum(1 if d == label else -1 for d in (first, second))
    return int(votes > 0)


# ----------------------------------------------------------------------------------------------------
# Data


def data_tables(data: str, split: str = SPLIT, limit: int | None = None) -> list[tuple[str, list[dict]]]:
    """(name, rows) per JudgeBench file: a file, a folder (each *.jsonl in it, sorted) or a Hugging Face id
    (`split`; the name is id:split). `limit`: only the first N rows of each. Every row is checked."""
    from gpmctl.eval.rewardbench import load_rows

    path = Path(data)
    if path.is_dir():
        files = sorted(f for f in path.glob("*.jsonl") if not f.name.startswith("."))
        if not files:
            raise DataError(data, "folder holds no JudgeBench .jsonl files")
        tables = [(f.name, load_rows(str(f), split, COLUMNS), str(f)) for f in files]
    else:
        name = path.name if path.exists() else f"{data}:{split}"
        tables = [(name, load_rows(data, split, COLUMNS), data)]
    for _, rows, where in tables:
        check_rows(where, rows)
    return [(name, rows[:limit]) for name, rows, _ in tables]


def check_rows(where: str, rows: list[dict]) -> None:
    """Every field a string, `source` in a known category, `label` A>B or B>A; a bad one is one DataError."""
    for number, row in enumerate(rows, start=1):
        for key in COLUMNS:
            if not isinstance(row[key], str):
                raise DataError(where, f"expected a string, got {type(row[key]).__name__} (row {number})", line=number, field=key)
        if category(row["source"]) is None:
            known = ", ".join(f"{p}[-...]" for p in CATEGORIES)
            raise DataError(
                where, f"unknown source {row['source']!r} (row {number}); expected {known}", line=number, field="source"
            )
        if row["label"] not in LABELS:
            raise DataError(where, f"expected A>B or B>A, got {row['label']!r} (row {number})", line=number, field="label")


# ----------------------------------------------------------------------------------------------------
# Per-example scores and their aggregation


def score_examples(scorer, name: str, rows: list[dict], both_orders: bool) -> list[dict]:
    """Embed both responses of every row once (the question as one user turn) -> {"file", "pair_id", "source",
    "category", "response_model", "label", "score" s(A > B), "score_reversed" s(B > A), "decision", "correct"}
    (BT models add reward_A and reward_B)."""
    from gpmctl.eval.examples import assistant, user

    if not rows:
        return []
    responses = [[assistant(r["response_A"]), assistant(r["response_B"])] for r in rows]
    value, gate = scorer.embed([user(r["question"]) for r in rows], responses, name)
    S = scorer.score_matrix(value, gate)
    out = []
    for i, r in enumerate(rows):
        score, score_reversed = float(S[i, 0, 1]), float(S[i, 1, 0])
        record = {
            "file": name,
            "pair_id": r["pair_id"],
            "source": r["source"],
            "category": category(r["source"]),
            "response_model": r["response_model"],
            "label": r["label"],
            "score": score,
            "score_reversed": score_reversed,
            "decision": decision(score),
            "correct": pair_correct(r["label"], score, score_reversed, both_orders),
        }
        if scorer.kind == "bt":
            record.update(reward_A=float(value[i, 0]), reward_B=float(value[i, 1]))
        if scorer.last_cut[i]:
            record["truncated"] = scorer.last_cut[i]
        out.append(record)
    return out


def summary(correct: list[int]) -> dict:
    n, c = len(correct), sum(correct)
    return {"pairs": n, "correct": c, "accuracy": c / n, "score": 100 * c / n}


def aggregate(examples: list[dict], both_orders: bool) -> dict:
    """examples {"file", "category", "label", "score", "score_reversed"?, "response_model"?} -> per file: its
    response model(s), a summary per category present (in CATEGORIES order) and Overall pooled."""
    files = {}
    for name in dict.fromkeys(e["file"] for e in examples):
        sel = [e for e in examples if e["file"] == name]
        correct = [pair_correct(e["label"], e["score"], e.get("score_reversed"), both_orders) for e in sel]
        categories = {}
        for cat in CATEGORIES.values():
            picked = [c for c, e in zip(correct, sel) if e["category"] == cat]
            if picked:
                categories[cat] = summary(picked)
        models = sorted({e["response_model"] for e in sel if e.get("response_model")})
        files[name] = {"response_model": ", ".join(models) or None, "categories": categories, "overall": summary(correct)}
    rule = "both orders: +1 / -1 per order, correct iff sum > 0" if both_orders else "single game: A>B iff s(A > B) > 0"
    return {"rule": rule, "both_orders": both_orders, "files": files}


def read_scores(path: str, both_orders: bool) -> list[dict]:
    """Per-example records written by --examples: label, source (or category), score, and score_reversed for
    --both-orders; `file` names the data file each row came from (default: this file's name)."""
    from gpmctl.eval.examples import example_fields

    out = []
    for fields in example_fields(path):
        row = fields.row
        if fields.text("label") not in LABELS:
            raise fields.error("label", f"expected A>B or B>A, got {row['label']!r}")
        source = fields.text("source", required=False)
        if source is not None and category(source) is None:
            raise fields.error("source", f"unknown source {source!r}; expected {', '.join(CATEGORIES)}[-...]")
        cat = category(source) if source is not None else fields.text("category")
        if cat not in CATEGORIES.values():
            raise fields.error("category", f"expected one of {', '.join(CATEGORIES.values())}, got {cat!r}")
        fields.number("score")
        fields.number("score_reversed", required=both_orders)
        row["category"], row["file"] = cat, fields.text("file", required=False) or Path(path).name
        fields.text("response_model", required=False)
        out.append(row)
    return out
