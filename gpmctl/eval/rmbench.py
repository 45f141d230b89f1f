"""RM-Bench (THU-KEG, ICLR 2025): style-controlled pairs, scored as a 3x3 matrix per row.

Each row has 3 chosen and 3 rejected responses in styles 0 concise, 1 detailed plain, 2 detailed markdown.
    acc[i][j] = 1 if s(chosen[i] > rejected[j]) > 0 else 0          (strict: ties count 0)
The matrix is averaged over a domain's rows; then
    hard   = mean of the upper triangle (i < j: chosen plainer than rejected)
    normal = mean of the diagonal
    easy   = mean of the lower triangle
    domain = mean(hard, normal, easy);  overall = mean of the domains present.
The domain is the file name's stem before "_" (chat, code, math, safety-refuse, safety-response); the two
safety files form one "safety" domain whose matrix is averaged over the rows of both files together.
"""

from __future__ import annotations

from pathlib import Path

from gpmctl.errors import DataError

DOMAINS = ("chat", "code", "math", "safety")
STYLES = ("concise", "detailed_plain", "detailed_markdown")


def domain_of(path: str | Path) -> str:
    stem = Path(path).name.split("_")[0].split(".")[0]
    return "safety" if stem.startswith("safety") else stem


def data_files(spec: list[str]) -> list[Path]:
    """Folders (their *.json files) and files -> sorted list of files."""
    files: list[Path] = []
    for item in spec:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.glob("*.json") if not f.name.startswith("."))
            if not found:
                raise DataError(item, "folder holds no RM-Bench .json files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(item, "no such file or folder")
    return files


def read_rows(path: Path) -> list[dict]:
    import json

    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(str(path), f"invalid JSON ({e.msg})", line=e.lineno) from None
    if not isinstance(rows, list):
        raise DataError(str(path), "expected a JSON list of rows")
    for number, row in enumerate(rows, start=1):
        for key in ("chosen", "rejected"):
            value = row.get(key) if isinstance(row, dict) else None
            if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
                raise DataError(str(path), f"expected a list of 3 strings (row {number})", line=number, field=key)
        if not isinstance(row.get("prompt"), str):
            raise DataError(str(path), f"expected a string (row {number})", line=number, field="prompt")
    return rows


def row_matrix(score) -> list[list[int]]:
    """score(i, j) = s(chosen[i] > rejected[j]) -> the 3x3 0/1 matrix."""
    return [[1 if score(i, j) > 0 else 0 for j in range(3)] for i in range(3)]


def matrix_summary(matrices: list[list[list[float]]]) -> dict:
    """Per-row 3x3 matrices -> {"matrix": mean matrix, "hard", "normal", "easy", "average", "rows"}."""
    n = len(matrices)
    mean = [[sum(m[i][j] for m in matrices) / n for j in range(3)] for i in range(3)]
    upper = [mean[i][j] for i in range(3) for j in range(3) if i < j]
    diagonal = [mean[i][i] for i in range(3)]
    lower = [mean[i][j] for i in range(3) for j in range(3) if i > j]
    hard, normal, easy = sum(upper) / 3, sum(diagonal) / 3, sum(lower) / 3
    return {"rows": n, "matrix": mean, "hard": hard, "normal": normal, "easy": easy, "average": (hard + normal + easy) / 3}


def aggregate(examples: list[dict]) -> dict:
    """examples: {"domain", "matrix": 3x3 0/1} -> per domain summaries, overall hard/normal/easy and overall."""
    domains = {}
    for name in sorted({e["domain"] for e in examples}, key=lambda d: (DOMAINS.index(d) if d in DOMAINS else len(DOMAINS), d)):
        domains[name] = matrix_summary([e["matrix"] for e in examples if e["domain"] == name])
    out = {"domains": domains}
    if domains:
        k = len(domains)
        for key in ("hard", "normal", "easy"):
            out[key] = sum(d[key] for d in domains.values()) / k
        out["overall"] = sum(d["average"] for d in domains.values()) / k
    out["missing_domains"] = [d for d in DOMAINS if d not in domains]
    return out


def score_examples(scorer, path: Path, rows: list[dict]) -> list[dict]:
    """Embed the 6 responses of every row once -> {"file", "domain", "id", "scores": 3x3 s(chosen_i > rejected_j),
    "matrix": 3x3 0/1}."""
    from gpmctl.eval.scoring import assistant, user

    if not rows:
        return []
    completions = [[assistant(t) for t in r["chosen"] + r["rejected"]] for r in rows]
    value, gate = scorer.embed([user(r["prompt"]) for r in rows], completions, path.name)
    S = scorer.score_matrix(value, gate)[:, :3, 3:]  # [n, 3 chosen, 3 rejected]
    domain = domain_of(path)
    out = []
    for i, r in enumerate(rows):
        scores = S[i].tolist()
        matrix = row_matrix(lambda a, b: scores[a][b])
        out.append({"file": path.name, "domain": domain, "id": r.get("id"), "scores": scores, "matrix": matrix})
    return out


def read_scores(path: str) -> list[dict]:
    """Per-example records written by --examples; the matrix is recomputed from `scores` when present."""
    from gpmctl.eval.scoring import example_rows

    out = []
    for number, row in example_rows(path):
        if not isinstance(row.get("domain"), str):
            raise DataError(path, "missing", line=number, field="domain")
        if row.get("scores") is not None:
            row["matrix"] = row_matrix(lambda a, b: row["scores"][a][b])
        elif row.get("matrix") is None:
            raise DataError(path, "needs scores or matrix", line=number)
        out.append(row)
    return out
