"""Run `gpmctl ...` in this process and check the hard-shell contract of every command.

A bad input must give exit code 2, exactly one line on stderr that names the file / line / key at
fault, no traceback, and leave every file that existed before untouched. Running the CLI in-process
(the same `gpmctl.cli.main` the console script calls) keeps a table of many cases fast: torch and
transformers are imported once, not once per case.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _stream(data: bytes = b"") -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", write_through=True)


def run(*args: str, stdin: bytes | None = b"", cwd: Path | None = None, env: dict | None = None) -> Result:
    """`gpmctl *args` in-process. `stdin=None` closes standard input."""
    from gpmctl.cli import main

    out, err = _stream(), _stream()
    if stdin is None:
        inp = _stream()
        inp.close()
    else:
        inp = _stream(stdin)
    saved_argv, saved_stdin, saved_cwd = sys.argv, sys.stdin, os.getcwd()
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    code = 0
    try:
        sys.argv, sys.stdin = ["gpmctl", *map(str, args)], inp
        os.environ.update(env or {})
        os.environ.pop("GPMCTL_DEBUG", None) if "GPMCTL_DEBUG" not in (env or {}) else None
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, sys.stdin = saved_argv, saved_stdin
        os.chdir(saved_cwd)
        for k, v in saved_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return Result(code, _read(out), _read(err))


def _read(stream: io.TextIOWrapper) -> str:
    stream.flush()
    return stream.buffer.getvalue().decode("utf-8", errors="replace")


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (files or folders), to show that nothing was touched."""
    digests = {}
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for f in files:
            digests[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def assert_one_line_error(result: Result, *needles: str, code: int = 2) -> str:
    """Exit `code`, one stderr line containing every needle, no traceback; returns the line."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == code, f"rc {result.returncode}: {result.stderr}"
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


class FullDisk:
    """Wraps an open file so that every write fails as on a full disk (ENOSPC)."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
