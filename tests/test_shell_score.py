"""The hard shell of `gpmctl score`: bad options, inputs and outputs are exit 2 and one stderr line naming
the file / line / option (no traceback), with every existing file left as it was; `--resume` refuses a
partial output started with other settings; long lines are capped and long texts cut before tokenising."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpmctl.config import load_recipe
from gpmctl.train.reward import train_reward_model
from tests.shell import FullDisk, assert_one_line_error, run, snapshot

ROOT = Path(__file__).resolve().parent.parent


def rows(texts, prompt="q{i}") -> bytes:
    return b"".join(json.dumps({"prompt": prompt.format(i=i), "response": t}).encode() + b"\n" for i, t in enumerate(texts))


@pytest.fixture(scope="module")
def m(tmp_path_factory) -> dict:
    """A tiny GPM (one optimizer step: scores need not be good, only computed), its copy, and an
    interrupted `-o` run: 8 of 10 lines scored in chunks of 4, then a bad line stopped it."""
    root = tmp_path_factory.mktemp("shell_score")
    recipe = load_recipe(
        ROOT / "recipes" / "cyclic_tiny_gpm.yaml",
        [
            f"output_dir={root / 'model'}",
            "data.train=cyclic:train?num_prompts=8",
            "data.eval=null",
            "train.max_steps=1",
            "train.batch_size=4",
            "model.tiny.num_layers=1",
        ],
    )
    model = str(train_reward_model(recipe).output_dir)
    shutil.copytree(model, root / "model_copy")
    d = root / "interrupted"
    d.mkdir()
    (d / "a.jsonl").write_bytes(rows([f"red {i}" for i in range(10)]))
    (d / "b.jsonl").write_bytes(rows([f"blue {i}" for i in range(8)]) + b'{"prompt": "q8", "response": \n' + rows(["blue"], "q9"))
    result = run("score", str(d / "a.jsonl"), str(d / "b.jsonl"), "-m", model, "-o", str(d / "r.jsonl"), "--chunk-lines", "4")
    assert result.returncode == 2 and "b.jsonl:9" in result.stderr, result.stderr
    return {"model": model, "copy": str(root / "model_copy"), "interrupted": d}


@pytest.fixture
def d(tmp_path) -> Path:
    (tmp_path / "a.jsonl").write_bytes(rows(["red", "green", "blue"]))
    (tmp_path / "b.jsonl").write_bytes(rows(["one", "two", "three"]))
    (tmp_path / "latin1.jsonl").write_bytes(rows(["x"]) + b'{"prompt": "q1", "response": "caf\xe9"}\n' + rows(["z"], "q2"))
    (tmp_path / "bad.jsonl").write_bytes(rows(["x"]) + b'{"prompt": "q1", "response": \n' + rows(["z"], "q2"))
    (tmp_path / "noresponse.jsonl").write_bytes(rows(["x"]) + b'{"prompt": "q1"}\n' + rows(["z"], "q2"))
    (tmp_path / "long.jsonl").write_bytes(rows(["x", "y", "z" * 300]))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "afile").write_bytes(b"not a folder")
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "a.jsonl")
    (tmp_path / "out.jsonl").write_bytes(b'{"line": 1, "p": 0.5}\n')  # an old output that must survive
    return tmp_path


A, B = "{d}/a.jsonl", "{d}/b.jsonl"
R = "{r}/r.jsonl"  # the interrupted run's output
RESUME = ["{r}/a.jsonl", "{r}/b.jsonl", "-m", "{model}", "-o", R, "--chunk-lines", "4", "--resume"]

CASES = [
    # options
    ([A, B, "-m", "{model}", "--batch-size", "0"], ["'--batch-size'"]),
    ([A, B, "-m", "{model}", "--batch-size", "-4"], ["'--batch-size'"]),
    ([A, B, "-m", "{model}", "--chunk-lines", "0"], ["'--chunk-lines'"]),
    ([A, B, "-m", "{model}", "--max-length", "0"], ["'--max-length'"]),
    ([A, B, "-m", "{model}", "--max-length", "long"], ["'--max-length'"]),
    ([A, B, "-m", "{model}", "--dtype", "float8"], ["--dtype", "'float8'"]),
    ([A, B, "-m", "{model}", "--device", "tpu"], ["--device", "'tpu'"]),
    ([A, B, "-m", "{model}", "--device", "cuda:99"], ["--device", "cuda:99", "no such device"]),
    ([A, B, "-m", "{model}", "--format", "xml"], ["--format", "'xml'"]),
    ([A, B, "-m", "{model}", "--format", "tsv", "--embed"], ["--format"]),
    ([A, B, "-m", "{model}", "--resume"], ["--resume needs --output"]),
    ([A, B, "-m", "{model}", "--bogus"], ["No such option: --bogus", "gpmctl score -h"]),
    ([A, B], ["Missing option '--model'"]),
    ([A, "-m", "{model}"], ["at least two input files"]),
    (["-", "-", "-m", "{model}"], ["stdin (-) can be only one"]),
    # inputs
    ([A, "{d}/nope.jsonl", "-m", "{model}"], ["{d}/nope.jsonl: no such file"]),
    ([A, "{d}/folder.jsonl", "-m", "{model}"], ["{d}/folder.jsonl: is a directory"]),
    ([A, "{d}/latin1.jsonl", "-m", "{model}"], ["{d}/latin1.jsonl:2: not valid UTF-8: byte 0xe9"]),
    ([A, "{d}/bad.jsonl", "-m", "{model}"], ["{d}/bad.jsonl:2: invalid JSON"]),
    ([A, "{d}/noresponse.jsonl", "-m", "{model}"], ["{d}/noresponse.jsonl:2: response: missing"]),
    (["{d}/empty.jsonl", "{d}/empty.jsonl", "-m", "{model}"], ["{d}/empty.jsonl: no lines"]),
    (["-", B, "-m", "{model}"], ["<stdin>", "standard input is closed"]),
    # outputs
    ([A, B, "-m", "{model}", "-o", A], ["{d}/a.jsonl: is also the input"]),
    ([A, B, "-m", "{model}", "-o", "{d}/link.jsonl"], ["{d}/link.jsonl: is also the input {d}/a.jsonl"]),
    ([A, B, "-m", "{model}", "-o", "{d}/afile/p.jsonl"], ["{d}/afile is a file, not a folder"]),
    ([A, B, "-m", "{model}", "-o", "{d}/folder.jsonl"], ["{d}/folder.jsonl: is a folder"]),
    # --resume with other settings than the partial output was started with
    (RESUME[:-3] + ["--chunk-lines", "2", "--resume"], [f"{R}.partial: was started with --chunk-lines 4, not 2"]),
    (RESUME + ["--embed"], [f"{R}.partial: was started without --embed"]),
    (RESUME + ["--format", "tsv"], [f"{R}.partial: was started with --format jsonl, not tsv"]),
    (RESUME + ["--max-length", "64"], [f"{R}.partial: was started with --max-length 2048, not 64"]),
    (RESUME + ["--dtype", "bfloat16"], [f"{R}.partial: was started with --dtype float32, not bfloat16"]),
    (
        ["{r}/b.jsonl", "{r}/a.jsonl", *RESUME[2:]],
        [f"{R}.partial: was started with the inputs {{r}}/a.jsonl, {{r}}/b.jsonl, not"],
    ),
    ([*RESUME[:3], "{copy}", *RESUME[4:]], [f"{R}.partial: was started with --model {{model}}, not {{copy}}"]),
]


@pytest.mark.parametrize("args,needles", CASES, ids=[" ".join(a).replace("{d}/", "").replace("{r}/", "") for a, _ in CASES])
def test_bad_options_inputs_and_outputs_are_one_line(m, d, args, needles):
    fill = {"d": d, "r": m["interrupted"], "model": m["model"], "copy": m["copy"]}
    before = snapshot(d, m["interrupted"])
    result = run("score", *[a.format(**fill) for a in args], stdin=None)
    assert_one_line_error(result, *[n.format(**fill) for n in needles])
    assert snapshot(d, m["interrupted"]) == before


def test_lines_are_capped_like_the_data_readers(m, d, monkeypatch):
    monkeypatch.setattr("gpmctl.data.responses.MAX_LINE_BYTES", 200)  # the real cap is 16 MiB
    before = snapshot(d)
    assert_one_line_error(
        run("score", str(d / "a.jsonl"), str(d / "long.jsonl"), "-m", m["model"]), f"{d}/long.jsonl:3", "longer than 200 bytes"
    )
    assert snapshot(d) == before


def test_a_full_disk_keeps_the_old_output_and_a_resumable_partial(m, d, monkeypatch):
    monkeypatch.setattr("gpmctl.cli.score.open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    old = (d / "out.jsonl").read_bytes()
    result = run("score", str(d / "a.jsonl"), str(d / "b.jsonl"), "-m", m["model"], "-o", str(d / "out.jsonl"))
    assert_one_line_error(result, f"no space left writing {d}/out.jsonl.partial", "--resume", code=1)
    assert (d / "out.jsonl").read_bytes() == old and (d / "out.jsonl.partial").exists()
    assert not list(d.glob(".*.tmp"))


def test_long_texts_are_cut_before_tokenising_with_the_same_tokens(m):
    from gpmctl.data.responses import CHARS_PER_TOKEN, text_cutter
    from gpmctl.data.tokenize import SequenceEncoder
    from gpmctl.models.sources import load_tokenizer

    tokenizer = load_tokenizer(m["model"])
    encoder = SequenceEncoder(tokenizer, 64, "overwrite", "first_turn", "right")
    prompt = [{"role": "user", "content": "why? " * 20_000}]
    for response_text in ("short answer", "a long answer, " * 20_000):
        response = [{"role": "assistant", "content": response_text}]
        cut = text_cutter(tokenizer, 64)
        short_prompt, short_response = cut(prompt), cut(response)
        assert len(short_prompt[0]["content"]) == 64 * CHARS_PER_TOKEN
        assert short_response[0]["content"] == response_text[: 64 * CHARS_PER_TOKEN]
        full, kept = encoder.encode(prompt, response), encoder.encode(short_prompt, short_response)
        assert full.ids.tolist() == kept.ids.tolist() and full.prompt_end == kept.prompt_end


def test_score_never_tokenises_the_whole_of_a_long_line(m, d, monkeypatch):
    from gpmctl.models import sources

    seen = []
    real_load = sources.load_tokenizer

    class Recording:
        def __init__(self, tok):
            self.tok = tok

        def __call__(self, text, *args, **kwargs):
            seen.append(len(text))
            return self.tok(text, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.tok, name)

    monkeypatch.setattr(sources, "load_tokenizer", lambda *a, **k: Recording(real_load(*a, **k)))
    (d / "huge.jsonl").write_bytes(rows(["red", "green " * 100_000, "blue"]))
    (d / "cut.jsonl").write_bytes(rows(["red", ("green " * 100_000)[: 64 * 16], "blue"]))
    huge = run("score", str(d / "a.jsonl"), str(d / "huge.jsonl"), "-m", m["model"], "--max-length", "64")
    assert huge.returncode == 0, huge.stderr
    assert max(seen) < 2 * 64 * 16  # the 600,000-character response never reaches the tokenizer whole
    cut = run("score", str(d / "a.jsonl"), str(d / "cut.jsonl"), "-m", m["model"], "--max-length", "64")
    assert huge.stdout == cut.stdout  # the same scores as the text cut by hand: those characters were never kept
