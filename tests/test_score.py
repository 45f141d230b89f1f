"""`gpmctl score`: antisymmetric probabilities, K-file matrices equal to pairwise runs, batching, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gpmctl.cli import app
from gpmctl.config import load_recipe
from gpmctl.data.cyclic import CyclicConfig, generate_cyclic
from gpmctl.data.responses import aligned_rows
from gpmctl.errors import DataError
from gpmctl.train.reward import train_reward_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small GPM (gated) and BT model, plus three aligned response files."""
    root = tmp_path_factory.mktemp("score")
    models = {}
    for kind, extra in (("gpm", ["model.gate=true"]), ("bt", ["model.kind=bt", "model.tau=1.0"])):
        recipe = load_recipe(
            "recipes/cyclic_tiny_gpm.yaml",
            [
                f"output_dir={root / kind}",
                "data.train=cyclic:train?num_prompts=30",
                "data.eval=null",
                "train.max_steps=15",
                "train.batch_size=8",
                "model.tiny.num_layers=1",
                *extra,
            ],
        )
        models[kind] = str(train_reward_model(recipe).output_dir)
    _, test = generate_cyclic(CyclicConfig(num_prompts=12))
    files = {}
    for name, key in (("a", "chosen"), ("b", "rejected"), ("c", "chosen_item")):
        path = root / f"{name}.jsonl"
        rows = [
            {"id": r["id"], "prompt": r["prompt"], "response": (r[key] if key != "chosen_item" else f"maybe {r[key]}")}
            for r in test
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files[name] = str(path)
    return models, files


def run(*args: str) -> list[dict]:
    result = CliRunner().invoke(app, ["score", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("kind", ["gpm", "bt"])
def test_probabilities_are_antisymmetric_and_half_on_identical_responses(trained, kind):
    models, f = trained
    ab, ba, aa = (
        run(f["a"], f["b"], "-m", models[kind]),
        run(f["b"], f["a"], "-m", models[kind]),
        run(f["a"], f["a"], "-m", models[kind]),
    )
    assert len(ab) == len(ba) == len(aa) > 0
    for x, y, z in zip(ab, ba, aa):
        assert x["p"] + y["p"] == pytest.approx(1.0, abs=1e-9)
        assert x["logit"] == pytest.approx(-y["logit"], abs=1e-9)
        assert z["p"] == 0.5
    assert ab[0]["id"] == json.loads(open(f["a"]).readline())["id"]
    if kind == "bt":
        assert ab[0]["reward_a"] - ab[0]["reward_b"] == pytest.approx(ab[0]["logit"], abs=1e-5)


def test_k_file_matrix_equals_the_pairwise_runs(trained):
    models, f = trained
    matrix = run(f["a"], f["b"], f["c"], "-m", models["gpm"])
    names = ["a", "b", "c"]
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            pairwise = run(f[names[i]], f[names[j]], "-m", models["gpm"])
            for row, pair in zip(matrix, pairwise):
                assert row["matrix"][i][j] == pytest.approx(pair["p"], abs=1e-6)
    for row in matrix:
        want = [sum(row["matrix"][i][j] for j in range(3) if j != i) / 2 for i in range(3)]
        assert row["win_rate"] == pytest.approx(want, abs=1e-12)


def test_results_do_not_depend_on_batch_size_or_chunking(trained):
    models, f = trained
    base = run(f["a"], f["b"], "-m", models["gpm"], "--batch-size", "1")
    other = run(f["a"], f["b"], "-m", models["gpm"], "--batch-size", "7", "--chunk-lines", "5")
    for x, y in zip(base, other):
        assert x["p"] == pytest.approx(y["p"], abs=1e-5)  # float32 forward passes, different padding


def test_trl_prompt_completion_rows_score_like_prompt_response_rows(trained, tmp_path):
    """TRL's prompt-completion rows, standard (strings) or conversational (message lists), are the same input."""
    models, f = trained
    rows = [json.loads(line) for line in open(f["b"])]
    standard, conversational = tmp_path / "standard.jsonl", tmp_path / "conversational.jsonl"
    standard.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["response"]}) + "\n" for r in rows))
    conversational.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": r["prompt"]}],
                    "completion": [{"role": "assistant", "content": r["response"]}],
                }
            )
            + "\n"
            for r in rows
        )
    )
    expected = [row["p"] for row in run(f["a"], f["b"], "-m", models["gpm"])]
    for path in (standard, conversational):
        assert [row["p"] for row in run(f["a"], str(path), "-m", models["gpm"])] == expected


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"prompt": "q", "response": "a", "completion": "a"}, "response: give response or completion, not both"),
        ({"prompt": "q"}, "response: missing (or completion"),
        ({"prompt": "q", "completion": 3}, "completion: expected a string or a list"),
        ({"prompt": "q", "completion": [{"role": "assistant"}]}, "completion: expected a list of >= 1"),
    ],
)
def test_bad_response_rows_name_file_line_and_field(row, needle, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as raised:
        list(aligned_rows([str(path), str(path)]))
    assert str(raised.value).startswith(f"{path}:2: ") and needle in str(raised.value)


def test_interrupted_output_resumes_to_the_same_file(trained, tmp_path):
    models, f = trained
    full = tmp_path / "full.jsonl"
    run(f["a"], f["b"], "-m", models["gpm"], "-o", str(full), "--chunk-lines", "4")
    lines = full.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    (tmp_path / "cut.jsonl.partial").write_text("".join(lines[:7]) + lines[7][:10])  # killed mid-line
    run(f["a"], f["b"], "-m", models["gpm"], "-o", str(cut), "--resume", "--chunk-lines", "4")
    assert cut.read_text() == full.read_text()
    assert not (tmp_path / "cut.jsonl.partial").exists()


def test_embeddings_are_written_on_request(trained):
    models, f = trained
    rows = run(f["a"], f["b"], "-m", models["gpm"], "--embed")
    assert len(rows[0]["embeddings"]) == 2 and len(rows[0]["embeddings"][0]) == 8 and len(rows[0]["gate"]) == 4


def test_misaligned_inputs_are_one_line_errors(trained, tmp_path):
    models, f = trained
    short = tmp_path / "short.jsonl"
    short.write_text("".join(open(f["b"]).readlines()[:3]))
    other_prompt = tmp_path / "other.jsonl"
    other_prompt.write_text(json.dumps({"prompt": "Something else?", "response": "red"}) + "\n")
    for args, needle in (([f["a"], str(short)], f"{short}:4"), ([f["a"], str(other_prompt)], f"{other_prompt}:1: prompt")):
        result = subprocess.run(
            [sys.executable, "-m", "gpmctl", "score", *args, "-m", models["gpm"]], capture_output=True, text=True
        )
        assert result.returncode == 2, result.stderr
        assert needle in result.stderr and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["gpm", "bt"])
def test_shared_prompt_rows_give_the_padded_scores(trained, kind):
    """By default a line's K responses are one packed row with the prompt once; --share-prompt false pads
    each sequence separately, as before. float32 forward passes: equal to rounding."""
    models, f = trained
    shared = run(f["a"], f["b"], f["c"], "-m", models[kind])
    padded = run(f["a"], f["b"], f["c"], "-m", models[kind], "--share-prompt", "false", "--batch-size", "5")
    assert len(shared) == len(padded) > 0
    for x, y in zip(shared, padded):
        assert sum(x["matrix"], []) == pytest.approx(sum(y["matrix"], []), abs=1e-5)
    result = CliRunner().invoke(app, ["score", f["a"], f["b"], "-m", models[kind], "--share-prompt", "maybe"])
    assert result.exit_code != 0 and "share_prompt: expected auto, true or false" in str(result.exception)


def test_a_reader_that_goes_away_ends_scoring_quietly_with_141(trained, tmp_path):
    """`gpmctl score a b -m MODEL | head -1`: the first row arrives; the rows after it meet a closed pipe."""
    models, f = trained
    many = {}
    for name in ("a", "b"):
        many[name] = tmp_path / f"{name}.jsonl"
        many[name].write_text(open(f[name]).read() * 40)  # more output than a pipe holds
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpmctl", "score", str(many["a"]), str(many["b"]), "-m", models["bt"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert 0 < first["p"] < 1
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err and "error" not in err, err
