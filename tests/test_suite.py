"""`gpmctl eval suite`: the same numbers as each benchmark alone, each distinct response embedded once, missing data
skipped (or an error with --strict)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.errors import ConfigError, DataError

ANSWERS = ["jade, calm and soft", "amber", "silver and gold", "a plain grey stone", "ice blue", "red, loud"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gpmctl.config import ModelConfig, TinyBackbone
    from gpmctl.models.build import build_model
    from gpmctl.models.io import save_model
    from gpmctl.models.sources import load_tokenizer

    root = tmp_path_factory.mktemp("suite")
    tok = load_tokenizer("tiny")
    cfg = ModelConfig(
        kind="gpm", dim=4, tiny=TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64, initializer_range=0.3)
    )
    save_model(build_model(cfg, tok, seed=0), root / "model", tok)
    prompts = [f"Which colour for room {i}?" for i in range(6)]
    # RM-Bench rows and pairs on the same prompts and answers: the suite embeds the shared sequences once
    rm_rows = [
        {"id": i, "domain": "chat", "prompt": p, "chosen": ANSWERS[:3], "rejected": ANSWERS[3:]} for i, p in enumerate(prompts)
    ]
    (root / "rm").mkdir()
    (root / "rm" / "total_dataset.json").write_text(json.dumps(rm_rows))
    pairs = [{"prompt": p, "chosen": ANSWERS[i % 3], "rejected": ANSWERS[3 + i % 3]} for i, p in enumerate(prompts)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    sources = ["mmlu-pro-history", "livebench-reasoning", "livebench-math", "livecodebench"]
    judge = [
        {
            "pair_id": str(i),
            "original_id": None,
            "source": sources[i % 4],
            "question": p,
            "response_model": "m",
            "response_A": ANSWERS[i % 3],
            "response_B": ANSWERS[3 + i % 3],
            "label": "A>B" if i % 2 else "B>A",
        }
        for i, p in enumerate(prompts)
    ]
    (root / "jb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judge))
    (root / "suite.yaml").write_text(
        f"rmbench: {root / 'rm'}\npairs: {root / 'pairs.jsonl'}\njudgebench: {root / 'jb.jsonl'}\ncyclic: cyclic:reworded?num_prompts=4\n"
    )
    return root


def invoke(*args):
    return CliRunner().invoke(app, ["eval", *args])


def test_a_suite_gives_each_benchmarks_own_numbers_and_embeds_shared_responses_once(setup, tmp_path):
    result = invoke("suite", "-m", str(setup / "model"), "--suite", str(setup / "suite.yaml"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, (result.output, result.exception)
    summary = json.loads(result.stdout)["benchmarks"]
    assert list(summary) == ["rmbench", "pairs", "judgebench", "cyclic"]
    assert summary["rmbench"]["new_sequences"] == 6 * 6  # 6 prompts x 6 answers
    assert summary["pairs"]["new_sequences"] == summary["judgebench"]["new_sequences"] == 0  # all embedded for RM-Bench
    for name, data in (("rmbench", str(setup / "rm")), ("pairs", str(setup / "pairs.jsonl"))):
        alone = tmp_path / f"{name}_alone.jsonl"
        done = invoke(name, "-m", str(setup / "model"), "--data", data, "--examples", str(alone))
        assert done.exit_code == 0, done.output
        field = "scores" if name == "rmbench" else "score"
        flat = lambda rows: [x for r in rows for x in (sum(r[field], []) if name == "rmbench" else [r[field]])]  # noqa: E731
        mine = [json.loads(line) for line in (tmp_path / "out" / f"{name}_examples.jsonl").read_text().splitlines()]
        theirs = [json.loads(line) for line in alone.read_text().splitlines()]
        assert flat(mine) == pytest.approx(flat(theirs), abs=1e-5)
        saved = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert summary[name]["value"] == (saved["overall"] if name == "rmbench" else saved["accuracy"])
        assert saved["gpmctl"]["provenance"]["data_files"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["benchmarks"] == summary


def test_missing_data_is_skipped_with_one_line_or_an_error_with_strict(setup, tmp_path):
    (tmp_path / "s.yaml").write_text(f"rmbench: {tmp_path / 'absent'}\npairs: {setup / 'pairs.jsonl'}\n")
    result = invoke("suite", "-m", str(setup / "model"), "--suite", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0 and "suite: rmbench skipped: " in result.stderr and "no such file or folder" in result.stderr
    assert list(json.loads(result.stdout)["benchmarks"]) == ["pairs"]
    strict = invoke(
        "suite", "-m", str(setup / "model"), "--suite", str(tmp_path / "s.yaml"), "--strict", "--out", str(tmp_path / "o2")
    )
    assert isinstance(strict.exception, DataError) and not (tmp_path / "o2").exists()


def test_suite_files_are_checked_before_any_model_is_loaded(tmp_path):
    (tmp_path / "bad.yaml").write_text("rmbnech: x\n")
    result = invoke("suite", "-m", str(tmp_path / "no-model"), "--suite", str(tmp_path / "bad.yaml"))
    assert isinstance(result.exception, ConfigError) and "rmbnech: unknown benchmark; known: rewardbench" in str(result.exception)
    result = invoke("suite", "-m", str(tmp_path / "no-model"), "--suite", "nope")
    assert "neither a shipped suite (rm, local) nor a YAML file" in str(result.exception)


def test_the_suites_results_plot_with_the_files_numbers(setup, tmp_path):
    pytest.importorskip("matplotlib")
    from gpmctl.eval.results import read_result

    done = invoke("suite", "-m", str(setup / "model"), "--suite", str(setup / "suite.yaml"), "--out", str(tmp_path / "out"))
    assert done.exit_code == 0, done.output
    judge = json.loads((tmp_path / "out" / "judgebench.json").read_text())
    chart = read_result(str(tmp_path / "out" / "judgebench.json")).chart
    (f,) = judge["files"].values()
    assert (
        chart.sections[0].values == {c: m["accuracy"] for c, m in f["categories"].items()} and len(chart.sections[0].values) == 4
    )
    assert chart.headline == ("overall", f["overall"]["accuracy"])
    result = CliRunner().invoke(app, ["plot", "eval", str(tmp_path / "out" / "judgebench.json"), "-o", str(tmp_path / "jb.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "jb.png").stat().st_size > 1000
