"""The hard shell of `gpmctl data ...`, of recipe loading and of the app itself: every bad input is exit 2
and one stderr line naming the file / line / key (no traceback), and every file that existed before is
left as it was, with no temporary files beside it. Faults of the machine (a full disk, SIGTERM) are one
line too and lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shell import FullDisk, assert_one_line_error, run, snapshot

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}
HH = "\n\nHuman: q\n\nAssistant:"


def lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


# name -> content of the data files every case can use
FILES = {
    "good.jsonl": lines(GOOD, {**GOOD, "prompt": "other"}),
    "other.jsonl": lines({**GOOD, "prompt": "third"}),
    "empty.jsonl": b"",
    "blank.jsonl": b"\n   \n\r\n",
    "empty_list.json": b"[]",
    "empty_chosen.jsonl": lines(GOOD, {**GOOD, "chosen": ""}),
    "space_rejected.jsonl": lines({**GOOD, "rejected": " \n\t"}),
    "empty_answer_message.jsonl": lines(
        {
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
        }
    ),
    "empty_hh_answer.jsonl": lines({"chosen": HH, "rejected": HH + " b"}),
    "latin1.jsonl": lines(GOOD, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'),
    "afile": b"not a folder",
}


@pytest.fixture
def d(tmp_path) -> Path:
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "out.jsonl").write_bytes(lines({**GOOD, "prompt": "an old output"}))  # must survive every case
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "train.jsonl").write_bytes(FILES["good.jsonl"])
    os.link(tmp_path / "good.jsonl", tmp_path / "hardlink.jsonl")
    (tmp_path / "symlink.jsonl").symlink_to(tmp_path / "good.jsonl")
    return tmp_path


def expand(args, d: Path) -> list[str]:
    return [a.format(d=d) for a in args]


# (bad data file, what the one line must say); each goes through every reading subcommand below
BAD_DATA = [
    ("empty.jsonl", ["{d}/empty.jsonl", "no rows"]),
    ("blank.jsonl", ["{d}/blank.jsonl", "no rows"]),
    ("empty_list.json", ["{d}/empty_list.json", "no rows"]),
    ("empty_chosen.jsonl", ["{d}/empty_chosen.jsonl:2: chosen: empty text", "--allow-empty-responses"]),
    ("space_rejected.jsonl", ["{d}/space_rejected.jsonl:1: rejected: whitespace-only text"]),
    ("empty_answer_message.jsonl", ["{d}/empty_answer_message.jsonl:1: chosen[1].content: empty text"]),
    ("empty_hh_answer.jsonl", ["{d}/empty_hh_answer.jsonl:1: chosen: turn 2 (Assistant) is empty"]),
    ("latin1.jsonl", ["{d}/latin1.jsonl:2", "not valid UTF-8: byte 0xe9"]),
]
READERS = {
    "convert": ["data", "convert", "{src}", "{d}/out.jsonl"],
    "convert-parquet": ["data", "convert", "{src}", "{d}/new.parquet"],
    "split": ["data", "split", "{src}", "{d}"],
    "mix": ["data", "mix", "{d}/out.jsonl", "{d}/good.jsonl:1", "{src}:1"],
    "train-rm": ["train-rm", "cyclic_tiny_gpm", "output_dir={runs}/run", "data.train={src}", "data.eval=null"],
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name,needles", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_is_one_line_in_every_reader(d, tmp_path_factory, reader, name, needles):
    before = snapshot(d)
    runs = tmp_path_factory.mktemp("runs")  # train-rm's run folder: what it leaves there is not this module's concern
    args = [a.replace("{src}", str(d / name)).replace("{runs}", str(runs)) for a in READERS[reader]]
    assert_one_line_error(run(*expand(args, d)), *expand(needles, d))
    assert snapshot(d) == before


@pytest.mark.parametrize("name,needles", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_validate_reports_bad_data_and_exits_2(d, name, needles):
    result = run("data", "validate", str(d / "good.jsonl"), str(d / name))
    problems = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(problems) == 2 and problems[1].startswith("validate: 2 file(s)"), result.stderr
    assert all(needle in problems[0] for needle in expand(needles, d)), problems[0]


def test_empty_answers_pass_when_allowed(d):
    for name in ("empty_chosen.jsonl", "space_rejected.jsonl", "empty_answer_message.jsonl", "empty_hh_answer.jsonl"):
        assert run("data", "validate", str(d / name), "--allow-empty-responses").returncode == 0
    assert run("data", "convert", str(d / "empty_chosen.jsonl"), str(d / "kept.jsonl"), "--allow-empty-responses").returncode == 0
    assert json.loads((d / "kept.jsonl").read_text().splitlines()[1])["chosen"] == ""


BAD_ARGUMENTS = [
    # the app and every subcommand: usage errors are one line, not a box
    (["--bogus"], ["No such option: --bogus", "gpmctl -h"]),
    (["bogus"], ["No such command 'bogus'"]),
    (["data", "bogus"], ["No such command 'bogus'", "gpmctl data -h"]),
    (["data", "validate"], ["Missing argument", "gpmctl data validate -h"]),
    (["data", "convert", "{d}/good.jsonl"], ["Missing argument", "gpmctl data convert -h"]),
    (["data", "convert", "{d}/good.jsonl", "{d}/x.jsonl", "--bogus"], ["No such option: --bogus"]),
    (["data", "split", "{d}/good.jsonl", "{d}/s", "--eval-fraction", "abc"], ["'--eval-fraction'"]),
    (["data", "split", "{d}/good.jsonl", "{d}/s", "--seed"], ["--seed", "requires an argument"]),
    (["data", "stats", "{d}/good.jsonl", "--limit", "0"], ["'--limit'"]),
    (["data", "stats", "{d}/good.jsonl", "--limit", "-3"], ["'--limit'"]),
    (["data", "mix", "{d}/m.jsonl", "{d}/good.jsonl", "--total", "0"], ["'--total'"]),
    (["data", "cyclic", "{d}/c", "--num-prompts", "many"], ["'--num-prompts'"]),
    (["data", "cyclic", "{d}/c", "--num-prompts", "0"], ["num_prompts must be >= 1"]),
    (["train-rm"], ["Missing argument", "gpmctl train-rm -h"]),
    (["train-gpo", "--bogus"], ["No such option: --bogus"]),
    (["eval", "bogus"], ["No such command 'bogus'"]),
    (["recipes", "cp"], ["Missing argument"]),
    (["export"], ["Missing argument"]),
    (["plot"], ["Missing argument"]),
    (["score", "{d}/good.jsonl"], ["Missing option '--model'"]),
    # stdin closed (`<&-`)
    (["data", "convert", "-", "{d}/out.jsonl"], ["<stdin>", "standard input is closed"]),
    (["data", "stats", "-"], ["<stdin>", "standard input is closed"]),
    # outputs that would destroy an input, or cannot be written where asked
    (["data", "convert", "{d}/good.jsonl", "{d}/good.jsonl"], ["{d}/good.jsonl: is also the input"]),
    (["data", "convert", "{d}/hardlink.jsonl", "{d}/good.jsonl"], ["{d}/good.jsonl: is also the input {d}/hardlink.jsonl"]),
    (["data", "convert", "{d}/symlink.jsonl", "{d}/good.jsonl"], ["is also the input {d}/symlink.jsonl"]),
    (["data", "mix", "{d}/good.jsonl", "{d}/other.jsonl:1", "{d}/good.jsonl:2"], ["{d}/good.jsonl: is also the input"]),
    (["data", "split", "{d}/split/train.jsonl", "{d}/split"], ["{d}/split/train.jsonl: is also the input"]),
    (["data", "convert", "{d}/good.jsonl", "{d}/afile/out.jsonl"], ["{d}/afile is a file, not a folder"]),
    (["data", "convert", "{d}/good.jsonl", "{d}/afile/deeper/out.parquet"], ["{d}/afile is a file, not a folder"]),
    (["data", "convert", "{d}/good.jsonl", "{d}/folder.jsonl"], ["{d}/folder.jsonl: is a folder"]),
    (["data", "split", "{d}/good.jsonl", "{d}/afile"], ["{d}/afile is a file, not a folder"]),
    (["data", "mix", "{d}/afile/m.jsonl", "{d}/good.jsonl"], ["{d}/afile is a file, not a folder"]),
    (["data", "cyclic", "{d}/afile/c", "--num-prompts", "3"], ["{d}/afile is a file, not a folder"]),
]


@pytest.mark.parametrize("args,needles", BAD_ARGUMENTS, ids=[" ".join(a).replace("{d}/", "") for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_and_outputs_are_one_line(d, args, needles):
    before = snapshot(d)
    assert_one_line_error(run(*expand(args, d), stdin=None), *expand(needles, d))
    assert snapshot(d) == before


def test_missing_output_folders_are_created_and_files_get_the_umask_mode(d):
    previous = os.umask(0o027)
    try:
        assert run("data", "convert", str(d / "good.jsonl"), str(d / "new" / "deeper" / "out.jsonl.gz")).returncode == 0
        assert run("data", "split", str(d / "good.jsonl"), str(d / "s" / "t")).returncode == 0
        assert run("data", "cyclic", str(d / "c" / "d"), "--num-prompts", "3").returncode == 0
    finally:
        os.umask(previous)
    written = [d / "new" / "deeper" / "out.jsonl.gz", d / "s" / "t" / "train.jsonl", d / "c" / "d" / "reworded.jsonl"]
    assert [oct(p.stat().st_mode & 0o777) for p in written] == ["0o640"] * 3  # not mkstemp's 0o600


@pytest.mark.parametrize(
    "module,args",
    [
        ("gpmctl.data.files", ["data", "convert", "{d}/good.jsonl", "{d}/out.jsonl"]),
        ("gpmctl.data.files", ["data", "split", "{d}/good.jsonl", "{d}/split"]),
        ("gpmctl.utils", ["data", "cyclic", "{d}/split", "--num-prompts", "3"]),
    ],
)
def test_a_full_disk_is_one_line_and_keeps_the_old_output(d, monkeypatch, module, args):
    import importlib

    monkeypatch.setattr(importlib.import_module(module), "open", lambda *a, **k: FullDisk(open(*a, **k)), raising=False)
    before = snapshot(d)
    line = assert_one_line_error(run(*expand(args, d)), "no space left writing", code=1)
    assert str(d) in line
    assert snapshot(d) == before


def test_ctrl_c_while_writing_leaves_no_temporary_file(d, monkeypatch):
    from gpmctl.data import files

    def interrupted(self, record):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.RecordWriter, "write", interrupted)
    before = snapshot(d)
    result = run("data", "convert", str(d / "good.jsonl"), str(d / "out.jsonl"))
    assert result.returncode == 130 and result.stderr.strip() == "gpmctl: interrupted"
    assert snapshot(d) == before


def test_sigterm_while_writing_leaves_no_temporary_file(d):
    """A real SIGTERM, in a child process: the default action would kill it with the temporary file left."""
    code = (
        "import os, signal, sys\n"
        "from gpmctl.data import files\n"
        "write = files.RecordWriter.write\n"
        "def write_then_term(self, record):\n"
        "    write(self, record)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "files.RecordWriter.write = write_then_term\n"
        f"sys.argv = ['gpmctl', 'data', 'convert', {str(d / 'good.jsonl')!r}, {str(d / 'out.jsonl')!r}]\n"
        "from gpmctl.cli import main\n"
        "main()\n"
    )
    before = snapshot(d)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 143 and result.stderr.strip() == "gpmctl: terminated (SIGTERM)", result
    assert snapshot(d) == before
