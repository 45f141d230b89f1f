"""`gpmctl plot`: PNG files for training curves, GPM embedding planes and reliability diagrams (`plot run`), and
bars of eval results (`plot eval`), whose numbers are the results file's own."""

from __future__ import annotations

import json
import sys

import pytest
from shell import assert_one_line_error, run, snapshot
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from gpmctl.cli import app  # noqa: E402
from gpmctl.config import load_recipe  # noqa: E402
from gpmctl.eval.results import bar_layout, read_result, read_results  # noqa: E402
from gpmctl.train.reward import train_reward_model  # noqa: E402


def test_plot_writes_the_three_pictures(tmp_path):
    recipe = load_recipe(
        "recipes/cyclic_tiny_gpm.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "data.train=cyclic:train?num_prompts=20",
            "data.eval=cyclic:test?num_prompts=20",
            "train.max_steps=6",
            "train.logging_steps=2",
            "train.eval_steps=3",
        ],
    )
    run = train_reward_model(recipe).output_dir
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps({"p": p / 10}) + "\n" for p in range(11)))
    result = CliRunner().invoke(app, ["plot", str(run), "--data", "cyclic:test?num_prompts=20", "--examples", str(examples)])
    assert result.exit_code == 0, result.output
    plots = json.loads(result.stdout.strip().splitlines()[-1])["plots"]
    assert [p.rsplit("/", 1)[-1] for p in plots] == ["training.png", "embeddings.png", "reliability.png"]
    for p in plots:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------
# gpmctl plot eval: the results files of `gpmctl eval ... -o FILE`, made here from per-example scores (--scores)

CYCLE = [("rock", "scissors"), ("scissors", "paper"), ("paper", "rock")]


def _per_example_rows(benchmark: str) -> list[dict]:
    """A small per-example file of each benchmark, right and wrong answers mixed, as --examples writes it."""
    from gpmctl.eval.rewardbench import SUBSET_ROWS
    from gpmctl.eval.rewardbench2 import SUBSET_ROWS as RB2_SUBSETS

    if benchmark == "rewardbench":
        return [{"subset": s, "correct": j <= i % 3} for i, s in enumerate(SUBSET_ROWS) for j in range(3)]
    if benchmark == "rewardbench2":
        rows = []
        for i, subset in enumerate(RB2_SUBSETS):
            for j, kind in enumerate(("ref", "tied") if subset == "Ties" else ("a", "b")):
                rewards = [1.0 + (i + j) % 2 - 1.5 * ((i + j) % 3 == 0), 0.5, 0.2, -1.0]
                scores = [[a - b for b in rewards] for a in rewards]
                rows.append(
                    {
                        "id": f"{kind}:0" if subset == "Ties" else f"{subset}{j}",
                        "subset": subset,
                        "num_correct": 1 + j,
                        "scores": scores,
                    }
                )
        return rows
    if benchmark == "rmbench":
        return [
            {"domain": d, "matrix": [[(i + j + k + n) % 2 for j in range(3)] for i in range(3)]}
            for n, d in enumerate(("chat", "code", "math", "safety-refuse"))
            for k in range(3)
        ]
    rows = []
    for n in range(12):
        chosen, rejected = CYCLE[n % 3]
        score = 1.0 if n % 4 else -0.5
        rows.append(
            {"score": score, "p": 0.73 if score > 0 else 0.38, "subset": "ab"[n % 2], "kind": "xyz"[n % 3], "cycle": str(n // 3)}
            | {"chosen_item": chosen, "rejected_item": rejected}
        )
    return rows


def _result_file(folder, benchmark: str, *options: str, name: str | None = None):
    """`gpmctl eval BENCHMARK --scores FILE -o RESULT.json`: the file as the evaluator writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    scores, out = folder / f"{name or benchmark}.jsonl", folder / f"{name or benchmark}.json"
    scores.write_text("".join(json.dumps(r) + "\n" for r in _per_example_rows(benchmark)))
    command = "pairs" if benchmark == "pairs" else benchmark
    result = run("eval", command, "--scores", scores, "-o", out, *options)
    assert result.returncode == 0, result.stderr
    return out


BENCHMARKS = ["rewardbench", "rewardbench2", "rmbench", "pairs", "cyclic"]


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_plot_eval_draws_each_benchmark_result_beside_it(tmp_path, benchmark):
    path = _result_file(tmp_path, benchmark)
    assert read_result(str(path)).benchmark == benchmark
    result = run("plot", "eval", path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["plots"] == [str(path.with_suffix(".png"))]
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.with_suffix(".png").stat().st_size > 5000


def test_rewardbench_bars_are_the_subsets_and_the_section_lines_the_file_section_scores(tmp_path):
    from gpmctl.eval.rewardbench import SUBSET_MAPPING

    # --legacy-xstest weighs Safety otherwise than the default: the line is the file's number, not a recomputation
    path = _result_file(tmp_path, "rewardbench", "--legacy-xstest")
    doc, chart = json.loads(path.read_text()), read_result(str(path)).chart
    assert [s.name for s in chart.sections] == list(SUBSET_MAPPING)
    for section in chart.sections:
        assert section.values == {s: doc[s] for s in SUBSET_MAPPING[section.name]}
        assert section.line == ("section score", doc["sections"][section.name])
    assert chart.headline == ("Score", doc["score"])
    from gpmctl.eval.rewardbench import section_scores

    assert section_scores(doc)["Safety"] != doc["sections"]["Safety"]


def test_rewardbench_own_per_subset_file_gets_the_official_section_weights(tmp_path):
    from gpmctl.eval.rewardbench import EXAMPLE_COUNTS, overall_score, section_scores

    doc = {"model": "org/rm", "model_type": "Seq. Classifier"} | {s: (i % 7) / 7 for i, s in enumerate(EXAMPLE_COUNTS)}
    (tmp_path / "org-rm.json").write_text(json.dumps(doc))  # RewardBench's results/eval-set/<model>.json: no sections
    result = read_result(str(tmp_path / "org-rm.json"))
    assert result.benchmark == "rewardbench" and result.model == "org/rm"
    assert {s.name: s.line[1] for s in result.chart.sections} == section_scores(doc)
    assert result.chart.headline == ("Score", overall_score(section_scores(doc)))


def test_a_result_is_labelled_by_its_model_path_else_its_file_name(tmp_path):
    path = _result_file(tmp_path, "rmbench")
    assert read_result(str(path)).model == "rmbench.json"  # --scores: no model in the file
    path.write_text(json.dumps(json.loads(path.read_text()) | {"gpmctl": {"model_path": "runs/gpm_2b"}}))
    assert read_result(str(path)).model == "runs/gpm_2b"


def test_rmbench_bars_are_easy_normal_hard_per_domain_then_overall(tmp_path):
    path = _result_file(tmp_path, "rmbench")
    doc, chart = json.loads(path.read_text()), read_result(str(path)).chart
    assert [s.name for s in chart.sections] == ["chat", "code", "math", "safety", "overall"]
    for section in chart.sections[:-1]:
        domain = doc["domains"][section.name]
        assert section.values == {k: domain[k] for k in ("easy", "normal", "hard")}
        assert section.line[1] == domain["average"]
    assert chart.sections[-1].values == {k: doc[k] for k in ("easy", "normal", "hard")}
    assert chart.sections[-1].line[1] == doc["overall"] and chart.headline == ("overall", doc["overall"])


def test_rewardbench2_pairs_and_cyclic_bars_are_the_file_numbers(tmp_path):
    doc = json.loads(_result_file(tmp_path, "rewardbench2").read_text())
    [section] = read_result(str(tmp_path / "rewardbench2.json")).chart.sections
    assert list(section.values) == ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"]
    assert section.values == doc["subsets"] and section.line[1] == doc["score"] is not None

    doc = json.loads(_result_file(tmp_path, "pairs").read_text())
    chart = read_result(str(tmp_path / "pairs.json")).chart
    assert [(s.name, s.line) for s in chart.sections] == [("all", None), ("subset", None), ("kind", None)]
    assert chart.sections[0].values == {"accuracy": doc["accuracy"]} and chart.headline == ("accuracy", doc["accuracy"])
    assert chart.sections[1].values == {k: m["accuracy"] for k, m in doc["by_subset"].items()} and len(doc["by_subset"]) == 2
    assert chart.sections[2].values == {k: m["accuracy"] for k, m in doc["by_kind"].items()} and len(doc["by_kind"]) == 3

    doc = json.loads(_result_file(tmp_path, "cyclic").read_text())
    chart = read_result(str(tmp_path / "cyclic.json")).chart
    assert [s.name for s in chart.sections] == ["all", "cycles", "kind"]
    assert chart.sections[0].line == ("BT ceiling", doc["bt_ceiling"]) and doc["bt_ceiling"] == pytest.approx(2 / 3)
    assert chart.sections[1].values == {
        "mean cycle accuracy": doc["mean_cycle_accuracy"],
        "all pairs right": doc["cycles_all_right"],
    }


def test_two_results_are_compared_side_by_side_labelled_by_model(tmp_path):
    a = _result_file(tmp_path / "a", "rewardbench")
    b = _result_file(tmp_path / "b", "rewardbench")
    doc = json.loads(b.read_text())
    del doc["hep-go"]  # a partial run: its bar is missing, the others still line up
    b.write_text(json.dumps(doc | {"model": "org/bt-8b"}))
    results = read_results([str(a), str(b)])
    assert [r.model for r in results] == [str(tmp_path / "a" / "rewardbench.jsonl"), "org/bt-8b"]
    assert dict(bar_layout(results))["Reasoning"] == [
        "math-prm",
        "hep-cpp",
        "hep-go",
        "hep-java",
        "hep-js",
        "hep-python",
        "hep-rust",
    ]
    out = tmp_path / "both.pdf"
    result = run("plot", "eval", a, b, "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:5] == b"%PDF-"
    c = tmp_path / "c.json"
    c.write_text(b.read_text())  # two files of one model: labelled by their file names
    assert [r.model for r in read_results([str(b), str(c)])] == ["rewardbench.json", "c.json"]


def test_plot_run_and_the_old_form_are_one_command(tmp_path):
    result = run("plot", "run", tmp_path / "none")
    assert_one_line_error(result, "no such run folder")
    assert_one_line_error(run("plot", tmp_path / "none"), "no such run folder")


REFUSALS = {
    # name: (files {name: text} in the folder, arguments with {d} for it, needles of the one error line)
    "two-benchmarks": (
        {},
        ["{d}/rewardbench.json", "{d}/rmbench.json"],
        ["rewardbench.json holds RewardBench results", "rmbench.json RM-Bench results", "one benchmark"],
    ),
    "not-a-result": ({"config.json": '{"lr": 0.001}'}, ["{d}/config.json"], ["config.json: not a gpmctl eval result"]),
    "per-example-file": ({}, ["{d}/rewardbench.jsonl"], ["rewardbench.jsonl: not a gpmctl eval result", "invalid JSON"]),
    "a-list": ({"list.json": "[1, 2]"}, ["{d}/list.json"], ["list.json: not a gpmctl eval result"]),
    "missing-file": ({}, ["{d}/none.json"], ["none.json: no such file"]),
    "not-a-number": (
        {"rb.json": '{"hep-go": "high", "sections": {}, "score": null}'},
        ["{d}/rb.json"],
        ["rb.json", "hep-go", "expected a number"],
    ),
    "no-numbers": (
        {"rm.json": '{"domains": {}, "missing_domains": []}'},
        ["{d}/rm.json"],
        ["rm.json: holds no RM-Bench numbers"],
    ),
    "missing-key": ({"p.json": '{"pairs": 3, "reliability": []}'}, ["{d}/p.json"], ["p.json", "preference pairs", "'accuracy'"]),
    "bad-suffix": ({}, ["{d}/rewardbench.json", "-o", "{d}/rb.jpg"], ["--output", "rb.jpg", ".png"]),
    "output-under-a-file": ({}, ["{d}/rewardbench.json", "-o", "{d}/rewardbench.json/rb.png"], ["--output", "not a directory"]),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_plot_eval_refusals_are_one_line_and_draw_nothing(tmp_path, case):
    files, arguments, needles = REFUSALS[case]
    for benchmark in ("rewardbench", "rmbench"):
        _result_file(tmp_path, benchmark)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    before = snapshot(tmp_path)
    result = run("plot", "eval", *(a.format(d=tmp_path) for a in arguments))
    assert_one_line_error(result, *(n.format(d=tmp_path) for n in needles))
    assert snapshot(tmp_path) == before


def test_plot_eval_without_matplotlib_is_one_config_error_line(tmp_path, monkeypatch):
    path = _result_file(tmp_path, "rmbench")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    assert_one_line_error(run("plot", "eval", path), "matplotlib", "pip install 'gpmctl[plot]'")
    assert not path.with_suffix(".png").exists()
