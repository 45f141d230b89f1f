"""`gpmctl demo` on bad input: one stderr line, exit 2, before any training (the demo itself takes minutes)."""

from __future__ import annotations

import pytest

from tests.shell import assert_one_line_error, run, snapshot

CASES = {
    "out-dir is a file": (["--out-dir", "{d}/a-file"], ["output_dir", "a-file is a file"]),
    "out-dir under a file": (["--out-dir", "{d}/a-file/demo"], ["output_dir", "a-file is a file"]),
    "unknown option": (["--epochs", "3"], ["--epochs", "gpmctl demo -h"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_demo_arguments_are_one_line_and_touch_nothing(case, tmp_path):
    args, needles = CASES[case]
    (tmp_path / "a-file").write_text("not a folder\n")
    before = snapshot(tmp_path)
    assert_one_line_error(run("demo", *(a.format(d=tmp_path) for a in args)), *needles)
    assert snapshot(tmp_path) == before
