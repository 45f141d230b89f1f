"""RM-Bench (THU-KEG, ICLR 2025): style-controlled pairs, scored as a 3x3 matrix per row.

Each row has 3 chosen and 3 rejected responses in styles 0 concise, 1 detailed plain, 2 detailed markdown.
    acc[i][j] = 1 if s(chosen[i] > rejected[j]) > 0 else 0          (strict: ties count 0)
The matrix is averaged over a domain's rows; then
    hard   = mean of the upper triangle (i < j: chosen plainer than rejected)
    normal = mean of the diagonal
    easy   = mean of the lower triangle
    domain = mean(hard, normal, easy);  overall = mean of the domains present.
A row's domain is its own `domain` field, as in the official total_dataset.json (chat, code, math,
safety-refuse, safety-response), else its file name's stem before "_" (chat_filtered.json: chat); as in the
official code, safety-refuse and safety-response form one "safety" domain whose matrix is averaged over the
rows of both. A domain naming none of the four is an error. total_dataset.json holds the rows of every
per-domain file, so a folder that has it is read as that file alone.
"""

from __future__ import annotations

from pathlib import Path

from gpmctl.errors import DataError

DOMAINS = ("chat", "code", "math", "safety")
STYLES = ("concise", "detailed_plain", "detailed_markdown")
TOTAL_FILE = "total_dataset.json"


def domain_name(value: str) -> str | None:
    """A domain field or file stem -> one of DOMAINS ("safety-refuse" -> "safety"); None if it names none."""
    return next((d for d in DOMAINS if value == d or value.startswith(d + "-")), None)


def domain_of(path: str | Path) -> str | None:
    """The domain a per-domain file's name gives (safety-refuse_filtered.json -> safety); None for others."""
    return domain_name(Path(path).name.split("_")[0].split(".")[0])


def row_domain(path: str | Path, number: int, row: dict) -> str:
    """Row `number` (1-based) of `path` -> its domain: its `domain` field, else the file's name."""
    value = row.get("domain")
    found = domain_of(path) if value is None else domain_name(value) if isinstance(value, str) else None
    if found is None:
        problem = "absent, and the file name names no domain" if value is None else f"unknown domain {value!r}"
        raise DataError(
            str(path), f"{problem} (row {number}); expected chat, code, math or safety[-...]", line=number, field="domain"
        )
    return found


def data_files(spec: list[str]) -> list[Path]:
    """Folders (their *.json files, or their total_dataset.json alone) and files -> sorted list of files."""
    from gpmctl.utils import log

    files: list[Path] = []
    for item in spec:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.glob("*.json") if not f.name.startswith("."))
            if not found:
                raise DataError(item, "folder holds no RM-Bench .json files")
            if p / TOTAL_FILE in found:
                if len(found) > 1:
                    log(f"rmbench: {p / TOTAL_FILE} holds every domain: the folder's other .json files are not read")
                found = [p / TOTAL_FILE]
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(item, "no such file or folder")
    total = next((f for f in files if f.name == TOTAL_FILE), None)
    if total is not None and len(files) > 1:
        raise DataError(str(total), "holds every domain, so other RM-Bench files beside it would count rows twice: pass it alone")
    return files


def read_rows(path: Path) -> list[dict]:
    from gpmctl.data.files import file_rows

    rows = [row for _, row in file_rows(path)]
    for number, row in enumerate(rows, start=1):
        for key in ("chosen", "rejected"):
            value = row.get(key) if isinstance(row, dict) else None
            if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
                raise DataError(str(path), f"expected a list of 3 strings (row {number})", line=number, field=key)
        if not isinstance(row.get("prompt"), str):
            raise DataError(str(path), f"expected a string (row {number})", line=number, field="prompt")
        row_domain(path, number, row)
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


def score_examples(scorer, path: Path, rows: list[dict], first: int = 0) -> list[dict]:
    """Embed the 6 responses of every row once -> {"file", "domain", "id", "scores": 3x3 s(chosen_i > rejected_j),
    "matrix": 3x3 0/1}. `first`: the index in the file of rows[0] (for the row numbers of errors)."""
    from gpmctl.eval.examples import assistant, user

    if not rows:
        return []
    completions = [[assistant(t) for t in r["chosen"] + r["rejected"]] for r in rows]
    value, gate = scorer.embed([user(r["prompt"]) for r in rows], completions, path.name)
    S = scorer.score_matrix(value, gate)[:, :3, 3:]  # [n, 3 chosen, 3 rejected]
    out = []
    for i, r in enumerate(rows):
        scores = S[i].tolist()
        matrix = row_matrix(lambda a, b: scores[a][b])
        out.append(
            {
                "file": path.name,
                "domain": row_domain(path, first + i + 1, r),
                "id": r.get("id"),
                "scores": scores,
                "matrix": matrix,
                **({"truncated": scorer.last_cut[i]} if scorer.last_cut[i] else {}),
            }
        )
    return out


def read_scores(path: str) -> list[dict]:
    """Per-example records written by --examples; the matrix is recomputed from `scores` when present."""
    from gpmctl.eval.examples import example_fields

    out = []
    for fields in example_fields(path):
        row = fields.row
        matrix = fields.matrix("matrix", 3, required=False) if fields.matrix("scores", 3, required=False) is None else None
        if matrix is not None and any(v not in (0, 1) for r in matrix for v in r):
            raise fields.error("matrix", f"expected 0 / 1 entries, got {matrix!r}")
        if not (isinstance(row.get("domain"), str) and domain_name(row["domain"])):
            raise DataError(
                path, f"expected one of {', '.join(DOMAINS)}, got {row.get('domain')!r}", line=fields.line, field="domain"
            )
        row["domain"] = domain_name(row["domain"])
        if row.get("scores") is not None:
            row["matrix"] = row_matrix(lambda a, b: row["scores"][a][b])
        elif row.get("matrix") is None:
            raise DataError(path, "needs scores or matrix", line=fields.line)
        out.append(row)
    return out
