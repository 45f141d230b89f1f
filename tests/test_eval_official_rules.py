"""Evaluation numbers that must follow the official rules, checked against independent float64 references
written out in this file: RM-Bench domains from each row's `domain` field (total_dataset.json counted
once), RewardBench 2's Ties composite for a BT model seen only through its K x K score matrices and
with unpaired ref/tied prompts, pair accuracy with soft labels, JudgeBench's single-game and
both-orders rules with ties, and RMB's pairwise and best-of-N rules on files written in its layout."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from gpmctl.errors import DataError
from gpmctl.eval import benchmarks, rmb
from gpmctl.eval import judgebench as jb
from gpmctl.eval import rewardbench2 as rb2
from gpmctl.eval import rmbench as rm
from gpmctl.eval.metrics import pair_report
from tests.shell import assert_one_line_error, run, snapshot

RM_DOMAINS = ("chat", "code", "math", "safety-refuse", "safety-response")  # the `domain` values of total_dataset.json


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Untrained tiny BT and GPM model folders: the aggregation is under test, not the model."""
    from gpmctl.config import ModelConfig, TinyBackbone
    from gpmctl.models.build import build_model
    from gpmctl.models.io import save_model
    from gpmctl.models.sources import load_tokenizer

    tok = load_tokenizer("tiny")
    tiny = TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64, initializer_range=0.3)
    out = {}
    for kind, cfg in (
        # The paper's token rule: an untrained model then scores these pairs with both signs, which the tests need.
        ("bt", ModelConfig(kind="bt", tau=1.0, tiny=tiny, eos="overwrite")),
        ("gpm", ModelConfig(kind="gpm", dim=4, tau=0.1, tiny=tiny)),
    ):
        out[kind] = str(tmp_path_factory.mktemp(kind))
        save_model(build_model(cfg, tok, seed=0), out[kind], tok)
    return out


class TableScorer:
    """A BT 'model' whose reward of a response is looked up by its text (the prompt is ignored)."""

    kind, tau = "bt", 1.0

    def __init__(self, rewards: dict[str, float]):
        self.rewards = rewards

    def embed(self, prompts, responses, where=""):
        self.last_cut = [0] * len(prompts)  # nothing is tokenised, nothing cut
        return torch.tensor([[self.rewards[r[-1]["content"]] for r in rs] for rs in responses], dtype=torch.float64), None

    def score_matrix(self, value, gate):
        return value[:, :, None] - value[:, None, :]


# ----------------------------------------------------------------------------------------------------
# RM-Bench


def official_rmbench(rows: list[dict]) -> tuple[dict, float]:
    """RM-Bench's compute_accuracy on total_dataset.json: rows split by domain prefix, a 3x3 accuracy
    matrix per domain (strict >), hard / normal / easy = upper / diagonal / lower mean, overall = mean of 4."""
    domains = {}
    for domain in ("chat", "code", "math", "safety"):
        sel = [r for r in rows if r["domain"].startswith(domain)]
        acc = [
            [sum(1.0 for r in sel if r["score_chosen"][i] > r["score_rejected"][j]) / len(sel) for j in range(3)]
            for i in range(3)
        ]
        hard = (acc[0][1] + acc[0][2] + acc[1][2]) / 3
        normal = (acc[0][0] + acc[1][1] + acc[2][2]) / 3
        easy = (acc[1][0] + acc[2][0] + acc[2][1]) / 3
        domains[domain] = {"rows": len(sel), "hard": hard, "normal": normal, "easy": easy, "average": (hard + normal + easy) / 3}
    return domains, sum(d["average"] for d in domains.values()) / 4


def rmbench_data(root: Path, layout: str, seed: int = 0) -> tuple[list[dict], dict[str, float]]:
    """Rows of every domain (ids repeat across domains, as in the real files) and a reward per response
    text (a few values only, so chosen and rejected sometimes tie). layout: "total" (total_dataset.json,
    rows with `domain`), "per_domain" (<domain>_filtered.json, rows without it) or "both"."""
    rng = random.Random(seed)
    rows, rewards = [], {}
    for domain, n in zip(RM_DOMAINS, (5, 4, 6, 3, 2)):
        for k in range(n):
            row = {
                "id": k,
                "prompt": f"{domain} question {k}",
                "domain": domain,
                "chosen": [f"{domain} {k} right {s}" for s in rm.STYLES],
                "rejected": [f"{domain} {k} wrong {s}" for s in rm.STYLES],
            }
            rewards.update((t, rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0])) for t in row["chosen"] + row["rejected"])
            rows.append(row)
    root.mkdir(parents=True, exist_ok=True)
    if layout in ("total", "both"):
        (root / "total_dataset.json").write_text(json.dumps(rows))
    if layout in ("per_domain", "both"):
        for domain in RM_DOMAINS:
            plain = [{k: v for k, v in r.items() if k != "domain"} for r in rows if r["domain"] == domain]
            (root / f"{domain}_filtered.json").write_text(json.dumps(plain))
    for r in rows:
        r["score_chosen"], r["score_rejected"] = [rewards[t] for t in r["chosen"]], [rewards[t] for t in r["rejected"]]
    return rows, rewards


@pytest.mark.parametrize("layout", ["total", "per_domain", "both"])
def test_rmbench_counts_each_row_once_in_its_own_domain(tmp_path, layout):
    rows, rewards = rmbench_data(tmp_path / "rm", layout)
    examples = []
    for path, table in benchmarks.rmbench_tables([str(tmp_path / "rm")]):
        examples += rm.score_examples(TableScorer(rewards), path, table)
    got = rm.aggregate(examples)
    want, overall = official_rmbench(rows)
    assert list(got["domains"]) == list(want) and got["missing_domains"] == []
    for name, d in want.items():
        assert {k: got["domains"][name][k] for k in d} == pytest.approx(d, abs=1e-12)
    assert got["overall"] == pytest.approx(overall, abs=1e-12)
    for key in ("hard", "normal", "easy"):
        assert got[key] == pytest.approx(sum(d[key] for d in want.values()) / 4, abs=1e-12)


def test_rmbench_cli_reads_total_dataset_alone_and_reaggregates(models, tmp_path):
    """A folder with total_dataset.json beside the per-domain files scores like the per-domain files alone."""
    rmbench_data(tmp_path / "per_domain", "per_domain")
    rmbench_data(tmp_path / "both", "both")
    out = {}
    for layout in ("per_domain", "both"):
        ex = tmp_path / f"{layout}.jsonl"
        result = run("eval", "rmbench", "-m", models["gpm"], "--data", str(tmp_path / layout), "--examples", str(ex))
        assert result.returncode == 0, result.stderr
        out[layout] = json.loads(result.stdout)
        again = run("eval", "rmbench", "--scores", str(ex))
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["domains"] == out[layout]["domains"]
    assert "total_dataset.json holds every domain" in result.stderr
    assert out["both"]["gpmctl"]["rows"] == {"total_dataset.json": 20}
    assert {d: s["rows"] for d, s in out["both"]["domains"].items()} == {"chat": 5, "code": 4, "math": 6, "safety": 5}
    assert out["both"]["domains"] == out["per_domain"]["domains"] and out["both"]["overall"] == out["per_domain"]["overall"]


def _rm_unknown_domain(root: Path) -> tuple[list[str], list[str]]:
    rows = [{"prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"], "domain": d} for d in ("chat", "reasoning")]
    (root / "total_dataset.json").write_text(json.dumps(rows))
    return ["--data", str(root / "total_dataset.json")], ["total_dataset.json:2", "domain", "reasoning"]


def _rm_no_domain_anywhere(root: Path) -> tuple[list[str], list[str]]:
    (root / "extra.json").write_text(json.dumps([{"prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"]}]))
    return ["--data", str(root / "extra.json")], ["extra.json:1", "domain", "file name"]


def _rm_total_beside_other_files(root: Path) -> tuple[list[str], list[str]]:
    rmbench_data(root / "rm", "both")
    return ["--data", str(root / "rm" / "total_dataset.json"), "--data", str(root / "rm" / "chat_filtered.json")], [
        "total_dataset.json",
        "pass it alone",
    ]


def _rm_scores_unknown_domain(root: Path) -> tuple[list[str], list[str]]:
    lines = [{"domain": d, "matrix": [[1, 0, 0], [1, 1, 0], [1, 1, 1]]} for d in ("chat", "total")]
    (root / "ex.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return ["--scores", str(root / "ex.jsonl")], ["ex.jsonl:2", "domain", "total"]


@pytest.mark.parametrize(
    "make",
    [_rm_unknown_domain, _rm_no_domain_anywhere, _rm_total_beside_other_files, _rm_scores_unknown_domain],
    ids=["unknown-domain-field", "no-domain-field-nor-file-name", "total-beside-other-files", "scores-unknown-domain"],
)
def test_rmbench_bad_domains_are_one_line_errors(models, tmp_path, make):
    args, needles = make(tmp_path)
    model = [] if "--scores" in args else ["-m", models["gpm"]]
    before = snapshot(tmp_path)
    assert_one_line_error(run("eval", "rmbench", *model, *args), *needles)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------------
# RewardBench 2: Ties


def official_ties(rows: list[dict]) -> dict:
    """RewardBench 2's process_single_model on raw rewards (rows {"id": "ref:n" | "tied:n", "num_correct",
    "rewards"}): accuracies over every ref and every tied prompt, margin terms over prompts with both."""
    stats: dict[str, dict[int, dict]] = {"ref": {}, "tied": {}}
    for r in rows:
        kind, n = r["id"].split(":")
        good, bad = r["rewards"][: r["num_correct"]], r["rewards"][r["num_correct"] :]
        ci = min(good) - max(bad)
        stats[kind][int(n)] = {"accurate": ci > 0, "ci": ci, "spread": max(good) - min(good)}

    def mean(xs):
        return sum(xs) / len(xs)

    gap, hard, margin = [], [], []
    for n in sorted(set(stats["ref"]) & set(stats["tied"])):
        ref, tied = stats["ref"][n], stats["tied"][n]
        low = min(ref["ci"], tied["ci"])
        gap.append(1.0 if tied["ci"] > tied["spread"] else 0.0)
        hard.append(1.0 if low > tied["spread"] else 0.0)
        if tied["spread"] == 0:  # numpy: x / 0 is +-inf (tanh +-1), 0 / 0 is nan (counted 0)
            margin.append(0.0 if low == 0 else math.copysign(1.0, low))
        else:
            margin.append(math.tanh(low / tied["spread"] - 1))
    ref_acc = mean([1.0 if s["accurate"] else 0.0 for s in stats["ref"].values()])
    tied_acc = mean([1.0 if s["accurate"] else 0.0 for s in stats["tied"].values()])
    score = 0.30 * tied_acc + 0.30 * ref_acc + 0.20 * mean(gap) + 0.20 * mean(hard) + 0.01 * mean(margin)
    return {"score": score, "ref_accuracy": ref_acc, "tied_accuracy": tied_acc}


def bt_matrix_only(row: dict) -> dict:
    """A BT model's Ties example as a GPM-style record: the K x K scores r_i - r_j, no rewards."""
    r = row["rewards"]
    return {"id": row["id"], "subset": "Ties", "num_correct": row["num_correct"], "scores": [[a - b for b in r] for a in r]}


def _random_ties(rng: random.Random, prompts: range, kinds=("ref", "tied")) -> list[dict]:
    rows = []
    for n in prompts:
        for kind in kinds:
            good, bad = (1 if kind == "ref" else rng.randint(2, 4)), rng.randint(1, 4)
            rows.append({"id": f"{kind}:{n}", "num_correct": good, "rewards": [rng.uniform(-3, 3) for _ in range(good + bad)]})
    return rows


def test_rb2_ties_from_bt_score_matrices_equal_the_official_composite_on_raw_rewards():
    # ref K = 2, tied K = 5: min(ci_ref 1.0, ci_tied 3.0) is just below spread_tied 1.05; scaling rows by
    # K / (K - 1) (2 and 1.25) would lift it above
    rows = [
        {"id": "ref:0", "num_correct": 1, "rewards": [2.0, 1.0]},
        {"id": "tied:0", "num_correct": 3, "rewards": [5.05, 4.5, 4.0, 1.0, 0.5]},
    ]
    rows += _random_ties(random.Random(0), range(1, 40))
    assert rb2.ties_score([bt_matrix_only(r) for r in rows])["score"] == pytest.approx(official_ties(rows)["score"], abs=1e-12)
    assert rb2.ties_score([bt_matrix_only(r) for r in rows[:2]])["min_margin_over_spread"] == 0.0
    for row in rows:
        mean = sum(row["rewards"]) / len(row["rewards"])
        assert rb2.pointwise(bt_matrix_only(row)) == pytest.approx([r - mean for r in row["rewards"]], abs=1e-12)


def test_rb2_ties_accuracy_averages_every_ref_and_every_tied_prompt(tmp_path):
    rng = random.Random(1)
    rows = (
        _random_ties(rng, range(0, 6)) + _random_ties(rng, range(6, 13), ("ref",)) + _random_ties(rng, range(13, 17), ("tied",))
    )
    rows += [
        {"id": "ref:17", "num_correct": 1, "rewards": [3.0, 0.0, 1.0]},
        {"id": "tied:18", "num_correct": 2, "rewards": [1.0, 0.5, 2.0]},
    ]
    want = official_ties(rows)
    for examples in ([{**r, "subset": "Ties"} for r in rows], [bt_matrix_only(r) for r in rows]):
        got = rb2.ties_score(examples)
        assert (got["ref_accuracy"], got["tied_accuracy"]) == pytest.approx(
            (want["ref_accuracy"], want["tied_accuracy"]), abs=1e-12
        )
        assert got["score"] == pytest.approx(want["score"], abs=1e-12)
        assert (got["ref_prompts"], got["tied_prompts"], got["prompts"]) == (14, 11, 6)
    # the same through `gpmctl eval rewardbench2 --scores` (score matrices only)
    path = tmp_path / "ties.jsonl"
    path.write_text("".join(json.dumps(bt_matrix_only(r)) + "\n" for r in rows))
    result = run("eval", "rewardbench2", "--scores", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["subsets"]["Ties"] == pytest.approx(want["score"], abs=1e-12)


def test_rb2_ties_pairs_prompts_by_number_and_refuses_a_second_row_for_one_prompt():
    ref = {"id": "ref:07", "subset": "Ties", "num_correct": 1, "rewards": [3.0, 0.0, 1.0]}
    tied = {"id": "tied:7", "subset": "Ties", "num_correct": 2, "rewards": [2.0, 1.5, 0.0]}
    assert rb2.ties_score([ref, tied])["prompts"] == 1  # one prompt, as the official int() pairing reads it
    with pytest.raises(DataError, match="a second ref row for prompt 7"):
        rb2.ties_score([ref, tied, {**ref, "id": "ref:7"}])
    with pytest.raises(DataError, match="not ref:<n> or tied:<n>"):
        rb2.ties_score([{**ref, "id": "ref:seven"}, tied])


def test_rb2_cli_ties_of_a_bt_model_equal_the_official_composite_with_or_without_rewards(models, tmp_path):
    rows = []
    for subset in rb2.SUBSET_ROWS:
        if subset != "Ties":
            rows += [
                {
                    "id": f"{subset}-{n}",
                    "subset": subset,
                    "prompt": f"q {n}",
                    "chosen": ["good"],
                    "rejected": ["bad", "worse", "no"],
                }
                for n in range(2)
            ]
    words = ["red", "blue", "green", "dog", "cat", "sun", "tree", "moon"]
    for n in range(6):
        if n != 5:  # prompt 5 has a tied row only, prompt 4 a ref row only
            rows.append(
                {
                    "id": f"ref:{n}",
                    "subset": "Ties",
                    "prompt": f"one colour {n}",
                    "chosen": [words[n]],
                    "rejected": words[5 : 6 + n % 3],
                }
            )
        if n != 4:
            rows.append(
                {
                    "id": f"tied:{n}",
                    "subset": "Ties",
                    "prompt": f"colours {n}",
                    "chosen": words[: 2 + n % 2],
                    "rejected": [words[4 + n % 4]],
                }
            )
    data, ex = tmp_path / "rb2.jsonl", tmp_path / "ex.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run("eval", "rewardbench2", "-m", models["bt"], "--data", str(data), "--examples", str(ex))
    assert result.returncode == 0, result.stderr
    examples = [json.loads(line) for line in ex.read_text().splitlines()]
    ties = [e for e in examples if e["subset"] == "Ties"]
    assert {len(e["rewards"]) for e in ties} == {2, 3, 4} and len(ties) == 10
    want = official_ties(ties)["score"]
    assert json.loads(result.stdout)["subsets"]["Ties"] == pytest.approx(want, abs=1e-12)
    ex.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "rewards"}) + "\n" for e in examples))
    again = run("eval", "rewardbench2", "--scores", str(ex))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["subsets"]["Ties"] == pytest.approx(want, abs=1e-9)


# ----------------------------------------------------------------------------------------------------
# Pair accuracy with soft labels


def label_accuracy(scores: list[float], labels: list[float | None]) -> float:
    """Right when the score's sign is the label's side (None is 1); labels of exactly 0.5 left out."""
    right = counted = 0
    for s, y in zip(scores, labels):
        y = 1.0 if y is None else y
        if y == 0.5:
            continue
        counted += 1
        right += (y > 0.5 and s > 0) or (y < 0.5 and s < 0)
    return right / counted


SCORES = [2.0, -1.0, 1.0, -3.0, 0.5, 0.0, 0.0, -0.2]
LABELS = [1.0, 0.2, 0.3, None, 0.5, 1.0, 0.0, 0.0]


def test_pair_accuracy_follows_the_label_side_and_leaves_half_labels_out():
    examples = [
        {"score": s, "p": 1 / (1 + math.exp(-s)), "subset": "ab"[i % 2], **({} if y is None else {"label": y})}
        for i, (s, y) in enumerate(zip(SCORES, LABELS))
    ]
    report = pair_report(examples)
    assert report["accuracy"] == pytest.approx(label_accuracy(SCORES, LABELS), abs=1e-12) == 3 / 7
    assert report["pairs"] == 8 and report["accuracy_pairs"] == 7
    for i, key in enumerate("ab"):
        assert report["by_subset"][key]["accuracy"] == pytest.approx(label_accuracy(SCORES[i::2], LABELS[i::2]), abs=1e-12)
    assert pair_report([{"score": 1.0, "p": 0.7, "label": 0.5}])["accuracy"] is None


def test_pairs_and_cyclic_scores_recount_correct_from_the_labels(tmp_path):
    """--scores files written before labels counted (`correct` = score > 0) are re-scored from score and label."""
    path = tmp_path / "s.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "score": s,
                    "p": 1 / (1 + math.exp(-s)),
                    "cycle": i // 2,
                    "correct": int(s > 0),
                    **({} if y is None else {"label": y}),
                }
            )
            + "\n"
            for i, (s, y) in enumerate(zip(SCORES, LABELS))
        )
    )
    pairs = run("eval", "pairs", "--scores", str(path))
    assert pairs.returncode == 0, pairs.stderr
    assert json.loads(pairs.stdout)["accuracy"] == pytest.approx(label_accuracy(SCORES, LABELS), abs=1e-12)
    cyclic = run("eval", "cyclic", "--scores", str(path))
    assert cyclic.returncode == 0, cyclic.stderr
    per_cycle = json.loads(cyclic.stdout)["per_cycle"]
    assert per_cycle == pytest.approx(
        {str(c): label_accuracy(SCORES[2 * c : 2 * c + 2], LABELS[2 * c : 2 * c + 2]) for c in range(4)}, abs=1e-12
    )


def test_pairs_cli_on_soft_labels_counts_the_label_side(models, tmp_path):
    rng = random.Random(2)
    words = ["red", "blue", "green", "dog", "cat", "sun", "tree", "moon"]
    rows = [
        {"prompt": f"pick {i}", "chosen": rng.choice(words), "rejected": rng.choice(words) + " no", "label": y}
        for i, y in enumerate([1.0, 0.9, 0.1, 0.0, 0.5, 0.3, 0.7, 0.0, 0.2, 1.0])
    ]
    data, ex = tmp_path / "soft.jsonl", tmp_path / "ex.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run("eval", "pairs", "--data", str(data), "-m", models["bt"], "--examples", str(ex))
    assert result.returncode == 0, result.stderr
    examples = [json.loads(line) for line in ex.read_text().splitlines()]
    scores, labels = [e["score"] for e in examples], [e["label"] for e in examples]
    assert labels == [r["label"] for r in rows] and any(s > 0 for s in scores) and any(s < 0 for s in scores)
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(label_accuracy(scores, labels), abs=1e-12)
    for e in examples:
        if e["label"] == 0.5:
            assert "correct" not in e
        else:
            assert e["correct"] == label_accuracy([e["score"]], [e["label"]])


# ----------------------------------------------------------------------------------------------------
# JudgeBench


def official_judgebench(rows: list[dict], prefer, single_game: bool) -> dict[str, float]:
    """JudgeBench's run_judge.py + utils/metrics.py for a reward model: the judgment of a game (first, second)
    is "A>B" if prefer(row, first, second) > 0 else "B>A" (a tie is B>A), the swapped game's judgment flipped
    back, +1 / -1 per judgment against the label, right iff the sum > 0; 100 x right / pairs per source
    prefix and over all pairs. prefer(row, "response_A", "response_B"): the scorer's margin for the first."""
    prefixes = {"mmlu-pro": "Knowledge", "livebench-reasoning": "Reasoning", "livebench-math": "Math", "livecodebench": "Coding"}

    def flip(judgment: str) -> str:
        return {"A>B": "B>A", "B>A": "A>B"}[judgment]

    right: dict[str, list[int]] = {}
    for r in rows:
        judgments = ["A>B" if prefer(r, "response_A", "response_B") > 0 else "B>A"]
        if not single_game:
            judgments.append(flip("A>B" if prefer(r, "response_B", "response_A") > 0 else "B>A"))
        total = sum(1 if j == r["label"] else -1 if j == flip(r["label"]) else 0 for j in judgments)
        name = next(v for k, v in prefixes.items() if r["source"].startswith(k))
        right.setdefault(name, []).append(1 if total > 0 else 0)
        right.setdefault("Overall", []).append(1 if total > 0 else 0)
    return {name: 100 * sum(v) / len(v) for name, v in right.items()}


def judgebench_rows(n: int, seed: int) -> tuple[list[dict], dict[str, float]]:
    """Rows of the four categories, rewards from a few values (so A and B often tie)."""
    rng = random.Random(seed)
    sources = ["mmlu-pro-law", "mmlu-pro-math", "livebench-reasoning", "livebench-math", "livecodebench"]
    rows, rewards = [], {}
    for i in range(n):
        row = {
            "pair_id": f"p{i}",
            "source": rng.choice(sources),
            "question": f"question {i}",
            "response_model": "m",
            "response_A": f"answer A {i}",
            "response_B": f"answer B {i}",
            "label": rng.choice(jb.LABELS),
        }
        rewards.update((row[k], rng.choice([-1.0, 0.0, 0.5, 1.0])) for k in ("response_A", "response_B"))
        rows.append(row)
    return rows, rewards


@pytest.mark.parametrize("both_orders", [False, True], ids=["single-game", "both-orders"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_judgebench_equals_the_official_rule_with_ties(both_orders, seed):
    rows, rewards = judgebench_rows(200, seed)
    examples = jb.score_examples(TableScorer(rewards), "jb.jsonl", rows, both_orders)
    assert sum(e["score"] == 0 for e in examples) > 10  # ties are exercised
    got = jb.aggregate(examples, both_orders)["files"]["jb.jsonl"]
    want = official_judgebench(rows, lambda r, a, b: rewards[r[a]] - rewards[r[b]], single_game=not both_orders)
    assert set(got["categories"]) | {"Overall"} == set(want)
    for name, score in want.items():
        summary = got["overall"] if name == "Overall" else got["categories"][name]
        assert summary["score"] == pytest.approx(score, abs=1e-12)
        assert summary["accuracy"] == pytest.approx(score / 100, abs=1e-12)


def test_judgebench_by_hand_ties_count_as_b_in_one_game_and_wrong_in_both_orders():
    # (source, label, s(A > B), s(B > A)): a GPM need not be antisymmetric, so the last row's orders disagree
    rows = [
        ("mmlu-pro-law", "A>B", 1.0, -1.0),  # right in both modes
        ("mmlu-pro-law", "B>A", 0.0, 0.0),  # tie: B>A, right in one game; +1 - 1 = 0, wrong in both orders
        ("mmlu-pro-chemistry", "A>B", 0.0, -0.0),  # tie: wrong in both modes
        ("livebench-reasoning", "B>A", -2.0, 2.0),  # right in both
        ("livebench-math", "A>B", -0.5, 0.5),  # wrong in both
        ("livecodebench", "A>B", 0.3, 0.2),  # right in one game; both orders: A>B, then B>A: 0, wrong
    ]
    examples = [
        {"file": "f", "category": jb.category(src), "label": label, "score": s, "score_reversed": r} for src, label, s, r in rows
    ]
    single = jb.aggregate(examples, both_orders=False)["files"]["f"]
    assert {k: (v["correct"], v["pairs"]) for k, v in single["categories"].items()} == {
        "Knowledge": (2, 3),
        "Reasoning": (1, 1),
        "Math": (0, 1),
        "Coding": (1, 1),
    }
    assert single["overall"] == {"pairs": 6, "correct": 4, "accuracy": 4 / 6, "score": 400 / 6}
    both = jb.aggregate(examples, both_orders=True)["files"]["f"]
    assert [both["categories"][k]["correct"] for k in ("Knowledge", "Reasoning", "Math", "Coding")] == [1, 1, 0, 0]
    assert both["overall"]["score"] == pytest.approx(100 / 3, abs=1e-12) and f"{both['overall']['score']:.2f}" == "33.33"


def test_judgebench_cli_reports_each_file_of_a_folder_and_reaggregates_both_modes(models, tmp_path):
    rows, _ = judgebench_rows(12, 3)
    folder = tmp_path / "jb"
    folder.mkdir()
    for model_name, part in (("gpt", rows[:7]), ("claude", rows[7:])):
        (folder / f"dataset=judgebench,response_model={model_name}.jsonl").write_text(
            "".join(json.dumps({**r, "response_model": model_name}) + "\n" for r in part)
        )
    (folder / "notes.txt").write_text("not read\n")
    ex = tmp_path / "ex.jsonl"
    result = run("eval", "judgebench", "-m", models["gpm"], "--data", str(folder), "--examples", str(ex))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    files = out["files"]
    assert list(files) == ["dataset=judgebench,response_model=claude.jsonl", "dataset=judgebench,response_model=gpt.jsonl"]
    assert [f["response_model"] for f in files.values()] == ["claude", "gpt"]
    assert [f["overall"]["pairs"] for f in files.values()] == [5, 7] and out["gpmctl"]["kind"] == "gpm"
    examples = [json.loads(line) for line in ex.read_text().splitlines()]
    for both_orders in (False, True):
        again = run("eval", "judgebench", "--scores", str(ex), *(["--both-orders"] if both_orders else []))
        assert again.returncode == 0, again.stderr
        got = json.loads(again.stdout)["files"]
        for name, f in got.items():
            sel = [e for e in examples if e["file"] == name]
            want = official_judgebench(
                sel, lambda e, a, b: e["score"] if a == "response_A" else e["score_reversed"], single_game=not both_orders
            )
            assert f["overall"]["score"] == pytest.approx(want["Overall"], abs=1e-12)
            assert {k: v["score"] for k, v in f["categories"].items()} == pytest.approx(
                {k: v for k, v in want.items() if k != "Overall"}, abs=1e-12
            )
            if not both_orders:
                assert f == files[name]


# ----------------------------------------------------------------------------------------------------
# RMB


def write_rmb(root: Path, seed: int, parts=("Pairwise_set", "BoN_set")) -> dict[str, float]:
    """An RMB_dataset/ tree in the repository's schema (scenario files under Helpfulness/<category>/ and
    Harmlessness/, turns with and without `language`), a reward per answer from a few values (ties happen)."""
    rng = random.Random(seed)
    rewards: dict[str, float] = {}
    scenarios = {"Helpfulness": ["Code/Debugging", "Code/Code Generation", "Chat/Casual"], "Harmlessness": ["S1", "S5", "multi"]}

    def answer(tag: str) -> dict:
        rewards[tag] = rng.choice([-1.0, 0.0, 0.5, 1.0])
        return {"llm_name": "m", "answer": tag}

    for part in parts:
        for goal, names in scenarios.items():
            for name in names:
                rows = []
                for i in range(rng.randint(2, 5)):
                    turns = [{"role": "user", "content": f"{name} {i}", "language": "English"}]
                    if i % 2:
                        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, *turns]
                    tag = f"{part}/{goal}/{name}/{i}"
                    row = {"conversation_input": turns, "category_path": f"{part}/{goal}/{name}"}
                    if part == "Pairwise_set":
                        row.update(pair_uid=tag, chosen=answer(tag + " chosen"), reject=answer(tag + " reject"))
                    else:
                        losers = [answer(f"{tag} loser {k}") for k in range(rng.randint(2, 6))]
                        row.update(bon_uid=tag, bon_best=answer(tag + " best"), loser_list=losers)
                    rows.append(row)
                path = root / part / goal / f"{name}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(rows))
    return rewards


def official_rmb(root: Path, rewards: dict[str, float]) -> dict:
    """my_run_rm.py (pairwise: chosen strictly above reject) and RM-R1's best-of-N rule (best strictly above the
    highest loser), pooled over every file of a goal; overall = the mean of the four; per scenario by file stem."""
    out, scenarios = {}, {}
    for part, name in (("Pairwise_set", "Pairwise"), ("BoN_set", "BoN")):
        for goal in ("Helpfulness", "Harmlessness"):
            right = []
            for path in sorted((root / part / goal).rglob("*.json")):
                for row in json.loads(path.read_text()):
                    if part == "Pairwise_set":
                        ok = rewards[row["chosen"]["answer"]] > rewards[row["reject"]["answer"]]
                    else:
                        ok = rewards[row["bon_best"]["answer"]] > max(rewards[x["answer"]] for x in row["loser_list"])
                    right.append(1 if ok else 0)
                    scenarios.setdefault(f"{name} {goal}", {}).setdefault(path.stem, []).append(1 if ok else 0)
            if right:
                out[f"{name} {goal}"] = sum(right) / len(right)
    if len(out) == 4:
        out["overall"] = sum(out.values()) / 4
    return {**out, "scenarios": {k: {s: sum(v) / len(v) for s, v in d.items()} for k, d in scenarios.items()}}


@pytest.mark.parametrize("seed", [0, 1])
def test_rmb_pairwise_and_best_of_n_equal_the_official_rules(tmp_path, seed):
    rewards = write_rmb(tmp_path / "RMB_dataset", seed)
    rows, warnings = rmb.load_rows(str(tmp_path))  # the parent of RMB_dataset/ is read as it
    assert warnings == [] and {len(r["responses"]) for r in rows if r["set"] == "bon"} - set(range(3, 8)) == set()
    assert all(set(m) == {"role", "content"} for r in rows for m in r["prompt"])  # `language` dropped
    examples = rmb.score_examples(TableScorer(rewards), rows)
    assert any(0.0 in e["scores"] for e in examples)  # ties are exercised
    got = rmb.aggregate(examples)
    want = official_rmb(tmp_path / "RMB_dataset", rewards)
    for name in (*rmb.NUMBERS, "overall"):
        assert got[name] == pytest.approx(want[name], abs=1e-12)
    assert list(got["scenarios"]) == list(rmb.NUMBERS)
    for name, by_scenario in want["scenarios"].items():
        assert {s: v["accuracy"] for s, v in got["scenarios"][name].items()} == pytest.approx(by_scenario, abs=1e-12)
    assert got["complete"] and got["counts"]["BoN Harmlessness"]["rows"] == sum(
        1 for r in rows if r["set"] == "bon" and r["goal"] == "Harmlessness"
    )


def test_rmb_by_hand_a_tie_with_any_loser_is_wrong():
    def ex(kind, goal, scores):
        return {"set": kind, "goal": goal, "scenario": "s", "scores": scores}

    examples = [
        ex("pairwise", "Helpfulness", [0.5]),
        ex("pairwise", "Helpfulness", [0.0]),  # a tie: wrong
        ex("pairwise", "Harmlessness", [-1.0]),
        ex("bon", "Helpfulness", [1.0, 2.0, 0.1]),
        ex("bon", "Helpfulness", [1.0, 0.0, 3.0]),  # ties with one loser: wrong
        ex("bon", "Harmlessness", [1.0, -0.5]),  # above one loser only: wrong
        ex("bon", "Harmlessness", [0.2, 0.3]),
        ex("bon", "Harmlessness", [0.2, 0.3, 0.4, 0.5, 0.6]),
    ]
    got = rmb.aggregate(examples)
    assert [got[n] for n in rmb.NUMBERS] == [0.5, 0.0, 0.5, 2 / 3]
    assert got["overall"] == pytest.approx((0.5 + 0.0 + 0.5 + 2 / 3) / 4, abs=1e-15)
    partial = rmb.aggregate([e for e in examples if e["set"] == "pairwise"])
    assert partial["overall"] is None and partial["BoN Helpfulness"] is None and not partial["complete"]
    assert partial["warnings"] == [
        "no rows for BoN Helpfulness, BoN Harmlessness: overall (the mean of the four) is not computed"
    ]


def test_rmb_cli_on_a_partial_layout_scores_what_is_there_and_reaggregates(models, tmp_path):
    write_rmb(tmp_path / "full", 2)
    write_rmb(tmp_path / "pairwise_only", 2, parts=("Pairwise_set",))
    out = {}
    for layout in ("full", "pairwise_only"):
        ex = tmp_path / f"{layout}.jsonl"
        result = run("eval", "rmb", "-m", models["gpm"], "--data", str(tmp_path / layout), "--examples", str(ex), "--limit", "3")
        assert result.returncode == 0, result.stderr
        out[layout] = json.loads(result.stdout)
        examples = [json.loads(line) for line in ex.read_text().splitlines()]
        again = run("eval", "rmb", "--scores", str(ex))
        assert again.returncode == 0, again.stderr
        assert {k: v for k, v in json.loads(again.stdout).items() if k != "data"} == {
            k: v for k, v in out[layout].items() if k not in ("data", "gpmctl")
        }
        for name, (kind, goal) in rmb.NUMBERS.items():
            sel = [e for e in examples if e["set"] == kind and e["goal"] == goal]
            if sel:
                assert out[layout][name] == pytest.approx(sum(min(e["scores"]) > 0 for e in sel) / len(sel), abs=1e-12)
    assert out["pairwise_only"]["overall"] is None and out["pairwise_only"]["BoN Helpfulness"] is None
    assert out["pairwise_only"]["Pairwise Helpfulness"] == out["full"]["Pairwise Helpfulness"]
    assert "BoN_set/Helpfulness: no .json scenario files, so BoN Helpfulness is not computed" in result.stderr
    assert out["full"]["overall"] == pytest.approx(sum(out["full"][n] for n in rmb.NUMBERS) / 4, abs=1e-12)
