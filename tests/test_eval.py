"""`gpmctl eval`: the official RewardBench aggregation to the last digit, RM-Bench matrices, calibration
numbers, and end-to-end runs of every evaluator on a tiny model."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.errors import DataError
from gpmctl.eval import rewardbench as rb
from gpmctl.eval import rmbench as rm
from gpmctl.eval.metrics import expected_calibration_error, pair_report, reliability_table

RM_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "rm-bench"
JUDGEBENCH_GPT4O = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "judgebench"
    / "data"
    / "dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl"
)

# RewardBench README "Getting Leaderboard Section Scores" (PKU-Alignment/beaver-7b-v1.0-cost).
README_METRICS = {
    "alpacaeval-easy": 0.5,
    "alpacaeval-hard": 0.7052631578947368,
    "alpacaeval-length": 0.5894736842105263,
    "chat_template": "tokenizer",
    "donotanswer": 0.8235294117647058,
    "hep-cpp": 0.6280487804878049,
    "hep-go": 0.6341463414634146,
    "hep-java": 0.7073170731707317,
    "hep-js": 0.6646341463414634,
    "hep-python": 0.5487804878048781,
    "hep-rust": 0.6463414634146342,
    "llmbar-adver-GPTInst": 0.391304347826087,
    "llmbar-adver-GPTOut": 0.46808510638297873,
    "llmbar-adver-manual": 0.3695652173913043,
    "llmbar-adver-neighbor": 0.43283582089552236,
    "llmbar-natural": 0.52,
    "math-prm": 0.2953020134228188,
    "model": "PKU-Alignment/beaver-7b-v1.0-cost",
    "model_type": "Seq. Classifier",
    "mt-bench-easy": 0.5714285714285714,
    "mt-bench-hard": 0.5405405405405406,
    "mt-bench-med": 0.725,
    "refusals-dangerous": 0.97,
    "refusals-offensive": 1,
    "xstest-should-refuse": 1,
    "xstest-should-respond": 0.284,
}
# GPM-Llama-3.1-8B-Instruct per-subset results (GPM authors' RewardBench PR #201).
GPM_LLAMA_METRICS = {
    "alpacaeval-easy": 0.89,
    "alpacaeval-hard": 0.9263157894736842,
    "alpacaeval-length": 0.9473684210526315,
    "donotanswer": 0.7132352941176471,
    "hep-cpp": 0.9207317073170732,
    "hep-go": 0.9634146341463414,
    "hep-java": 0.9817073170731707,
    "hep-js": 0.9634146341463414,
    "hep-python": 0.975609756097561,
    "hep-rust": 0.9329268292682927,
    "llmbar-adver-GPTInst": 0.9456521739130435,
    "llmbar-adver-GPTOut": 0.8085106382978723,
    "llmbar-adver-manual": 0.8043478260869565,
    "llmbar-adver-neighbor": 0.8507462686567164,
    "llmbar-natural": 0.87,
    "math-prm": 0.9574944071588367,
    "mt-bench-easy": 1.0,
    "mt-bench-hard": 0.8108108108108109,
    "mt-bench-med": 0.975,
    "refusals-dangerous": 0.95,
    "refusals-offensive": 0.99,
    "xstest-should-refuse": 0.935064935064935,
    "xstest-should-respond": 0.96,
}


def invoke(*args: str, ok: bool = True):
    result = CliRunner().invoke(app, ["eval", *args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


# ----------------------------------------------------------------------------------------------------
# RewardBench aggregation


def test_sections_reproduce_the_readme_example_to_the_last_digit():
    sections = rb.section_scores(README_METRICS)
    assert sections == {
        "Chat": 0.6089385474860335,
        "Chat Hard": 0.44956140350877194,
        "Safety": 0.7216216216216216,
        "Reasoning": 0.46675669776831996,
    }
    assert rb.overall_score(sections) == 0.5617195675961868


def test_sections_reproduce_the_gpm_llama_results_and_the_legacy_xstest_weights():
    sections = rb.section_scores(GPM_LLAMA_METRICS)
    assert sections == {
        "Chat": 0.9329608938547486,
        "Chat Hard": 0.8618421052631579,
        "Safety": 0.9121621621621622,
        "Reasoning": 0.9568976100834834,
    }
    assert rb.overall_score(sections) == 0.915965692840888
    # rewardbench 0.1.2 (the GPM repo's pin) swapped the XSTest weights: Safety 90.89, Avg 91.52 (spec 3.3)
    legacy = rb.section_scores(GPM_LLAMA_METRICS, legacy_xstest=True)
    assert f"{100 * legacy['Safety']:.2f}" == "90.89" and f"{100 * rb.overall_score(legacy):.2f}" == "91.52"
    assert {k: v for k, v in legacy.items() if k != "Safety"} == {k: v for k, v in sections.items() if k != "Safety"}


def _slow_reference(correct_by_subset: dict[str, list[int]]) -> tuple[dict, dict, Fraction]:
    """Exact rationals, written independently from the spec's prose: sections are count-weighted means
    (math-prm counted as 984 prompts), the score is the plain mean of the four sections."""
    rows = {
        "Chat": ("alpacaeval-easy alpacaeval-length alpacaeval-hard mt-bench-easy mt-bench-med", {}),
        "Chat Hard": (
            "mt-bench-hard llmbar-natural llmbar-adver-neighbor llmbar-adver-GPTInst llmbar-adver-GPTOut llmbar-adver-manual",
            {},
        ),
        "Safety": ("refusals-dangerous refusals-offensive xstest-should-refuse xstest-should-respond donotanswer", {}),
        "Reasoning": ("math-prm hep-cpp hep-go hep-java hep-js hep-python hep-rust", {}),
    }
    acc = {s: Fraction(sum(v), len(v)) for s, v in correct_by_subset.items()}
    sections = {}
    for section, (names, _) in rows.items():
        num, den = Fraction(0), 0
        for name in names.split():
            w = 984 if name == "math-prm" else len(correct_by_subset[name])
            num += acc[name] * w
            den += w
        sections[section] = num / den
    return acc, sections, sum(sections.values()) / 4


@pytest.mark.parametrize("seed", range(5))
def test_random_results_match_an_exact_rational_reference(seed):
    rng = random.Random(seed)
    per_subset = {s: [int(rng.random() < rng.random()) for _ in range(n)] for s, n in rb.SUBSET_ROWS.items()}
    examples = [(s, c) for s, v in per_subset.items() for c in v]
    rng.shuffle(examples)
    agg = rb.aggregate(examples)
    acc, sections, score = _slow_reference(per_subset)
    assert agg["complete"] and not agg["warnings"] and agg["num_pairs"] == 2985
    for s in rb.SUBSET_ROWS:
        assert agg["subsets"][s] == sum(per_subset[s]) / len(per_subset[s])  # exactly c / n
        assert agg["counts"][s] == (sum(per_subset[s]), len(per_subset[s]))
    for name, exact in sections.items():
        assert agg["sections"][name] == pytest.approx(float(exact), rel=1e-15, abs=0)
    assert agg["score"] == pytest.approx(float(score), rel=1e-15, abs=0)
    # Reasoning is half PRM math, half the mean of the six code subsets
    hep = [acc[s] for s in rb.SUBSET_MAPPING["Reasoning"][1:]]
    assert sections["Reasoning"] == acc["math-prm"] / 2 + sum(hep) / 12


def test_ties_count_as_wrong_and_partial_subsets_warn(tmp_path):
    per_example = [{"id": i, "subset": "hep-go", "score": 0.0 if i < 4 else 1.0} for i in range(10)]
    path = tmp_path / "partial.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in per_example))
    result = invoke("rewardbench", "--scores", str(path))
    out = json.loads(result.stdout)
    assert out["hep-go"] == 0.6 and out["sections"]["Reasoning"] == 0.6
    assert out["sections"]["Chat"] is None and out["score"] is None and out["complete"] is False
    assert "22 of 23 subsets missing" in result.stderr and "hep-go: 10 rows, a part of the 164" in result.stderr


def test_unknown_subset_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": 1, "subset": "not-a-subset", "score": 1.0}) + "\n")
    result = invoke("rewardbench", "--scores", str(path), ok=False)
    assert isinstance(result.exception, DataError) and result.exception.exit_code == 2 and "not-a-subset" in str(result.exception)


def test_scores_takes_a_per_subset_results_file(tmp_path):
    path = tmp_path / "beaver.json"
    path.write_text(json.dumps(README_METRICS))
    out = json.loads(invoke("rewardbench", "--scores", str(path)).stdout)
    assert out["sections"]["Reasoning"] == 0.46675669776831996 and out["score"] == 0.5617195675961868
    assert out["model"] == "PKU-Alignment/beaver-7b-v1.0-cost"


@pytest.mark.parametrize("offline", [True, False], ids=["offline-env", "no-network"])
def test_offline_hub_id_fails_in_one_line_within_seconds(tmp_path, offline):
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_OFFLINE", "_PROXY", "_proxy"))}
    env["HF_HOME"] = str(tmp_path / "hf")
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: as good as no network
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gpmctl", "eval", "rewardbench", "--model", str(tmp_path / "no-model")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert time.monotonic() - start < 30
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "allenai/reward-bench" in lines[0] and "--data" in lines[0]


# ----------------------------------------------------------------------------------------------------
# RM-Bench and calibration on hand-made numbers


def test_rmbench_matrix_summary_by_hand():
    all_right = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    style_biased = [[1, 0, 0], [1, 1, 0], [1, 1, 1]]  # right only when chosen is at least as detailed
    s = rm.matrix_summary([all_right, style_biased])
    assert s["matrix"] == [[1, 0.5, 0.5], [1, 1, 0.5], [1, 1, 1]]
    assert (s["hard"], s["normal"], s["easy"]) == (0.5, 1.0, 1.0) and s["average"] == pytest.approx(2.5 / 3)
    agg = rm.aggregate(
        [
            {"domain": "chat", "matrix": all_right},
            {"domain": "chat", "matrix": style_biased},
            {"domain": "safety", "matrix": [[0] * 3] * 3},
        ]
    )
    assert agg["domains"]["safety"]["average"] == 0 and agg["overall"] == pytest.approx(2.5 / 6)
    assert agg["hard"] == 0.25 and agg["missing_domains"] == ["code", "math"]
    assert rm.row_matrix(lambda i, j: [[1, 0, -1], [2, 0.0, 3], [-1, -2, 5]][i][j]) == [[1, 0, 0], [1, 0, 1], [0, 0, 1]]
    assert rm.domain_of("x/safety-refuse_filtered.json") == rm.domain_of("safety-response_filtered.json") == "safety"


def test_calibration_numbers_on_hand_made_probabilities():
    probs = [0.95, 0.85, 0.65, 0.55, 0.35]  # the last pair is ranked the wrong way
    table = reliability_table(probs)
    by_bin = {round(r["bin"][0], 1): r for r in table if r["count"]}
    # each pair counted as (p, 1) and (1 - p, 0)
    assert by_bin[0.9]["count"] == 1 and by_bin[0.9]["observed"] == 1.0
    assert by_bin[0.6]["count"] == 2 and by_bin[0.6]["mean_p"] == pytest.approx(0.65) and by_bin[0.6]["observed"] == 0.5
    assert sum(r["count"] for r in table) == 10
    # bins (count, |mean P - observed|): [0.0: 1, .05] [0.1: 1, .15] [0.3: 2, |.35 - .5|] [0.4: 1, .45]
    #                                    [0.5: 1, .45] [0.6: 2, |.65 - .5|] [0.8: 1, .15] [0.9: 1, .05]
    ece = (0.05 + 0.15 + 2 * 0.15 + 0.45 + 0.45 + 2 * 0.15 + 0.15 + 0.05) / 10
    assert ece == pytest.approx(0.19)
    assert expected_calibration_error(table) == pytest.approx(ece, abs=1e-12)
    examples = [
        {"score": math.log(p / (1 - p)), "p": p, "subset": "a" if i < 2 else "b", "kind": "x"} for i, p in enumerate(probs)
    ]
    report = pair_report(examples)
    assert report["accuracy"] == 0.8 and report["mean_prob"] == pytest.approx(0.67) and report["ece"] == pytest.approx(ece)
    assert report["by_subset"]["a"]["accuracy"] == 1.0 and report["by_subset"]["b"]["accuracy"] == pytest.approx(2 / 3)
    assert report["by_kind"]["x"]["pairs"] == 5
    # soft labels: a 0.7 prediction of a 0.7 label is calibrated
    assert expected_calibration_error(reliability_table([0.75] * 4, [0.75] * 4)) == pytest.approx(0.0, abs=1e-12)


def test_pairs_scores_reaggregate(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"p": p, "score": p - 0.5}) + "\n" for p in (0.9, 0.8, 0.3)))
    out = json.loads(invoke("pairs", "--scores", str(path)).stdout)
    assert out["accuracy"] == pytest.approx(2 / 3) and len(out["reliability"]) == 10


# ----------------------------------------------------------------------------------------------------
# End to end with a tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from gpmctl.config import load_recipe
    from gpmctl.train.reward import train_reward_model

    root = tmp_path_factory.mktemp("eval_model")
    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [
            f"output_dir={root / 'gpm'}",
            "data.train=cyclic:train?num_prompts=20",
            "data.eval=null",
            "train.max_steps=5",
            "train.batch_size=8",
            "model.tiny.num_layers=1",
            "model.gate=true",
        ],
    )
    return str(train_reward_model(recipe).output_dir)


def _synthetic_rewardbench(path: Path) -> list[dict]:
    rng = random.Random(0)
    words = ["red", "blue", "green", "fast", "slow", "cat", "dog", "tree", "sun", "moon"]
    rows, i = [], 0
    for subset, n in rb.SUBSET_ROWS.items():
        for _ in range(n):
            a, b = rng.sample(words, 2)
            rows.append(
                {
                    "prompt": f"pick {a} or {b}",
                    "chosen": f"the {a}",
                    "chosen_model": "x",
                    "rejected": f"a {b}",
                    "rejected_model": "y",
                    "subset": subset,
                    "id": i,
                }
            )
            i += 1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_rewardbench_end_to_end_on_a_synthetic_file(tiny_model, tmp_path):
    rows = _synthetic_rewardbench(tmp_path / "rb.jsonl")
    assert len(rows) == rb.TOTAL_ROWS
    res, ex = tmp_path / "results.json", tmp_path / "examples.jsonl"
    result = invoke(
        "rewardbench",
        "-m",
        tiny_model,
        "--data",
        str(tmp_path / "rb.jsonl"),
        "-o",
        str(res),
        "--examples",
        str(ex),
        "--batch-size",
        "512",
    )
    assert "Score" in result.stderr and "warning" not in result.stderr
    out = json.loads(res.read_text())
    assert set(rb.EXAMPLE_COUNTS) <= set(out) and set(out["sections"]) == set(rb.SECTIONS)
    assert out["complete"] is True and out["num_pairs"] == 2985 and out["model_type"] == "Custom Classifier"
    assert out["sections"] == rb.section_scores(out) and out["score"] == rb.overall_score(out["sections"])
    examples = [json.loads(line) for line in ex.read_text().splitlines()]
    assert [e["id"] for e in examples] == [r["id"] for r in rows]
    assert all(e["correct"] == (1 if e["score"] > 0 else 0) and (e["p"] > 0.5) == (e["score"] > 0) for e in examples)
    again = json.loads(invoke("rewardbench", "--scores", str(ex)).stdout)
    assert {k: again[k] for k in (*rb.EXAMPLE_COUNTS, "sections", "score", "counts")} == {
        k: out[k] for k in (*rb.EXAMPLE_COUNTS, "sections", "score", "counts")
    }


def test_eval_scores_equal_the_training_path_pair_by_pair(tiny_model):
    """Each response embedded once in length-sorted batches (gate from the chosen pass) gives the score the
    training step computes for the pair on its own."""
    import torch

    from gpmctl.data.sources import read_source
    from gpmctl.data.tokenize import collate_pairs
    from gpmctl.eval.pairs import score_records
    from gpmctl.models.embed import load_scorer
    from gpmctl.train.reward import pair_loss

    scorer = load_scorer(tiny_model, 7, 128, "float32", "cpu")
    assert scorer.model.head.gate
    records = list(read_source("cyclic:test?num_prompts=4"))
    got = score_records(scorer, records)
    pad = scorer.encoder.tokenizer.pad_token_id
    with torch.no_grad():
        for record, out in zip(records, got):
            batch = collate_pairs([scorer.encoder.encode_pair(record)], pad)
            _, s = pair_loss(scorer.model, batch, scorer.tau, use_margin=False)
            assert out["score"] == pytest.approx(float(s[0]), abs=1e-5)
            assert out["p"] == pytest.approx(1 / (1 + math.exp(-float(s[0]) / scorer.tau)), abs=1e-4)


def test_scores_reads_rewardbench_own_per_example_files(tmp_path):
    subsets = [s for s, n in rb.SUBSET_ROWS.items() for _ in range(n)]
    chosen = [[float(i % 3)] for i in range(len(subsets))]  # one-element lists, as RewardBench saves logits
    rejected = [[1.0] for _ in subsets]  # i % 3 == 1 is a tie: wrong
    path = tmp_path / "eval-set-scores.json"
    path.write_text(json.dumps({"subset": subsets, "scores_chosen": chosen, "scores_rejected": rejected, "model": "m"}))
    out = json.loads(invoke("rewardbench", "--scores", str(path)).stdout)
    right = {s: 0 for s in rb.SUBSET_ROWS}
    for i, s in enumerate(subsets):
        right[s] += i % 3 == 2
    assert all(out[s] == right[s] / n for s, n in rb.SUBSET_ROWS.items()) and out["complete"] is True


def test_pairs_and_cyclic_end_to_end(tiny_model, tmp_path):
    spec = "cyclic:test?num_prompts=12"
    ex = tmp_path / "pairs.jsonl"
    pairs = json.loads(invoke("pairs", "--data", spec, "-m", tiny_model, "--examples", str(ex)).stdout)
    assert pairs["pairs"] == 12 * 3 * 2 and "cycle" in pairs["by_kind"] and len(pairs["reliability"]) == 10
    again = json.loads(invoke("pairs", "--scores", str(ex)).stdout)
    assert again["accuracy"] == pairs["accuracy"] and again["ece"] == pytest.approx(pairs["ece"], abs=1e-12)
    cyc = json.loads(invoke("cyclic", "-m", tiny_model, "--data", spec).stdout)
    assert cyc["accuracy"] == pairs["accuracy"] and cyc["cycles"] == 12 and cyc["bt_ceiling"] == pytest.approx(2 / 3)
    assert len(cyc["per_cycle"]) == 12


@pytest.mark.skipif(not RM_BENCH.is_dir(), reason=f"RM-Bench data not found at {RM_BENCH}")
def test_rmbench_end_to_end_on_the_shared_data(tiny_model, tmp_path):
    ex = tmp_path / "rm.jsonl"
    counts = {f.name: len(rm.read_rows(f)) for f in rm.data_files([str(RM_BENCH)])}
    assert counts == {
        "chat_filtered.json": 129,
        "code_filtered.json": 228,
        "safety-refuse_filtered.json": 284,
        "safety-response_filtered.json": 157,
    }
    # the first rows of each file keep the run short (the whole set takes a minute or more on 2 CPU cores)
    out = json.loads(
        invoke(
            "rmbench",
            "-m",
            tiny_model,
            "--data",
            str(RM_BENCH),
            "--limit",
            "6",
            "--max-length",
            "256",
            "--batch-size",
            "64",
            "--examples",
            str(ex),
        ).stdout
    )
    assert list(out["domains"]) == ["chat", "code", "safety"] and out["domains"]["safety"]["rows"] == 12
    assert out["domains"]["chat"]["rows"] == 6 and out["domains"]["code"]["rows"] == 6
    assert out["overall"] == pytest.approx(sum(d["average"] for d in out["domains"].values()) / 3)
    again = json.loads(invoke("rmbench", "--scores", str(ex)).stdout)
    assert again["overall"] == out["overall"] and again["domains"]["safety"]["matrix"] == out["domains"]["safety"]["matrix"]


@pytest.mark.skipif(not JUDGEBENCH_GPT4O.is_file(), reason=f"JudgeBench data not found at {JUDGEBENCH_GPT4O}")
def test_judgebench_end_to_end_on_the_shared_gpt4o_file(tiny_model, tmp_path):
    ex = tmp_path / "jb.jsonl"
    args = ["judgebench", "-m", tiny_model, "--data", str(JUDGEBENCH_GPT4O), "--max-length", "512", "--batch-size", "64"]
    out = json.loads(invoke(*args, "--examples", str(ex)).stdout)
    f = out["files"][JUDGEBENCH_GPT4O.name]
    assert f["response_model"] == "gpt-4o-2024-05-13" and out["both_orders"] is False
    assert {k: c["pairs"] for k, c in f["categories"].items()} == {"Knowledge": 154, "Reasoning": 98, "Math": 56, "Coding": 42}
    assert f["overall"]["pairs"] == 350
    assert f["overall"]["correct"] == sum(c["correct"] for c in f["categories"].values())
    examples = [json.loads(line) for line in ex.read_text().splitlines()]
    assert [e["label"] for e in examples].count("A>B") == 193  # the README's label counts, read through
    assert f["overall"]["correct"] == sum(e["decision"] == e["label"] for e in examples)
    again = json.loads(invoke("judgebench", "--scores", str(ex)).stdout)
    assert again["files"] == out["files"]
    both = json.loads(invoke("judgebench", "--scores", str(ex), "--both-orders").stdout)["files"][JUDGEBENCH_GPT4O.name]
    # both orders: right iff the game (A, B) and the game (B, A), flipped back, both pick the label
    swapped = ["B>A" if e["score_reversed"] > 0 else "A>B" for e in examples]
    assert both["overall"]["correct"] == sum(e["decision"] == e["label"] == s for e, s in zip(examples, swapped))


# ----------------------------------------------------------------------------------------------------
# RewardBench 2


def _bt(rewards):
    return {"rewards": rewards, "scores": [[a - b for b in rewards] for a in rewards]}


def test_rewardbench2_best_of_4_shares_credit_at_ties_and_ties_composite():
    from gpmctl.eval import rewardbench2 as rb2

    assert rb2.best_of_n_credit(_bt([3.0, 1.0, 2.0, 0.0])["scores"][0]) == 1.0
    assert rb2.best_of_n_credit(_bt([3.0, 3.0, 2.0, 0.0])["scores"][0]) == 0.5
    assert rb2.best_of_n_credit(_bt([3.0, 3.0, 3.0, 3.0])["scores"][0]) == 0.25
    assert rb2.best_of_n_credit(_bt([1.0, 3.0, 0.0, 0.0])["scores"][0]) == 0.0
    # Ties: prompt 0 (ref: one right answer; tied: two), by hand
    ex = [
        {"id": "ref:0", "subset": "Ties", "num_correct": 1, **_bt([5.0, 1.0, 2.0])},
        {"id": "tied:0", "subset": "Ties", "num_correct": 2, **_bt([4.0, 3.0, 1.0, 0.5])},
        {"id": "ref:1", "subset": "Ties", "num_correct": 1, **_bt([1.0, 2.0])},
        {"id": "tied:1", "subset": "Ties", "num_correct": 2, **_bt([2.0, 2.0, 3.0])},
    ]
    t = rb2.ties_score(ex)
    # prompt 0: ci_ref 3, ci_tied 2, spread_tied 1 -> accurate both, 2 > 1, min(3, 2) = 2 > 1, tanh(2/1 - 1)
    # prompt 1: ci_ref -1, ci_tied -1, spread_tied 0 -> nothing right, tanh(-1/0) = -1
    assert (t["tied_accuracy"], t["ref_accuracy"], t["correct_margin_over_spread"], t["min_margin_over_spread"]) == (
        0.5,
        0.5,
        0.5,
        0.5,
    )
    assert t["tanh_margin"] == pytest.approx((math.tanh(1.0) - 1) / 2)
    assert t["score"] == pytest.approx(0.3 * 0.5 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * (math.tanh(1.0) - 1) / 2)
    # a GPM's row-mean pointwise score ranks like the BT rewards, so the composite is the same
    gpm_like = [{k: v for k, v in e.items() if k != "rewards"} for e in ex]
    assert rb2.ties_score(gpm_like)["score"] == pytest.approx(t["score"])


def test_rewardbench2_end_to_end_on_a_synthetic_file(tiny_model, tmp_path):
    from gpmctl.eval import rewardbench2 as rb2

    rows = []
    for subset in rb2.SUBSET_ROWS:
        for n in range(3):
            if subset == "Ties":
                rows += [
                    {
                        "id": f"ref:{n}",
                        "subset": subset,
                        "prompt": f"name a colour {n}",
                        "chosen": ["red"],
                        "rejected": ["dog", "sun"],
                    },
                    {
                        "id": f"tied:{n}",
                        "subset": subset,
                        "prompt": f"name colours {n}",
                        "chosen": ["red", "blue"],
                        "rejected": ["cat"],
                    },
                ]
            else:
                rows.append(
                    {
                        "id": f"{subset}-{n}",
                        "subset": subset,
                        "prompt": f"q {n}",
                        "chosen": ["good"],
                        "rejected": ["bad", "worse", "no"],
                    }
                )
    path = tmp_path / "rb2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = tmp_path / "ex.jsonl"
    result = invoke("rewardbench2", "-m", tiny_model, "--data", str(path), "--examples", str(ex))
    out = json.loads(result.stdout)
    assert set(out["subsets"]) == set(rb2.SUBSET_ROWS) and out["complete"] is False and "expected 475" in result.stderr
    assert out["score"] == pytest.approx(sum(out["subsets"].values()) / 6)
    again = json.loads(invoke("rewardbench2", "--scores", str(ex)).stdout)
    assert again["subsets"] == out["subsets"]


# ----------------------------------------------------------------------------------------------------
# train-rm's `evaluate:` section


def test_train_rm_runs_the_recipe_benchmarks_on_the_saved_model(tmp_path):
    """One command trains and scores: the results equal a separate `gpmctl eval rewardbench` of the saved model."""
    rows = _synthetic_rewardbench(tmp_path / "full.jsonl")[::40]  # a partial file: every subset, a few rows each
    data = tmp_path / "rb.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train-rm",
            "recipes/cyclic_tiny_gpm.yaml",
            f"output_dir={out}",
            "data.eval=null",
            "data.train=cyclic:train?num_prompts=20",
            "train.max_steps=3",
            "model.tiny.num_layers=1",
            f"evaluate.rewardbench={data}",
            "evaluate.max_length=64",
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.stdout)
    saved = json.loads((out / "eval" / "rewardbench.json").read_text())
    assert saved["num_pairs"] == len(rows) and saved["complete"] is False and saved["gpmctl"]["max_length"] == 64
    assert summary["steps"] == 3 and summary["benchmarks"]["rewardbench"]["score"] == saved["score"]
    assert json.loads((out / "metrics.json").read_text())["benchmarks"] == summary["benchmarks"]
    assert len((out / "eval" / "rewardbench_examples.jsonl").read_text().splitlines()) == len(rows)
    separate = json.loads(invoke("rewardbench", "-m", str(out), "--data", str(data), "--max-length", "64").stdout)
    keys = [k for k in (*rb.EXAMPLE_COUNTS, "sections", "score") if k in saved]
    assert len(keys) > 10 and {k: separate[k] for k in keys} == {k: saved[k] for k in keys}
