"""The `gpmctl` command: one Typer app, one small module per subcommand.

Conventions of every subcommand: data on stdout, logs and progress on stderr; exit 0 ok, 1 failure,
2 bad input (one line naming file, line and key), 75 stopped for preemption after a checkpoint.
Heavy libraries (torch, transformers) are imported inside commands so `gpmctl --help` stays fast.
"""

from __future__ import annotations

import os
import sys

import typer

from gpmctl import __version__
from gpmctl.cli import data, demo, eval, export, plot, recipes, score, train_gpo, train_rm

app = typer.Typer(
    name="gpmctl",
    help="General Preference Models (GPM) and Bradley-Terry reward models: data, training, scoring, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data")
app.add_typer(eval.app, name="eval")
app.add_typer(recipes.app, name="recipes")
app.command("train-rm", context_settings={"allow_extra_args": False})(train_rm.train_rm)
app.command("train-gpo")(train_gpo.train_gpo)
app.command("demo")(demo.demo)
app.command("plot")(plot.plot)
app.command("score")(score.score)
app.command("export")(export.export)


def _version(value: bool) -> None:
    if value:
        print(f"gpmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    """General Preference Models (GPM) and Bradley-Terry reward models: data, training, scoring, evaluation."""


def main() -> None:
    """Console entry point: user errors become one line on stderr; GPMCTL_DEBUG=1 shows tracebacks."""
    from gpmctl.errors import EXIT_FAILURE, GpmctlError

    debug = os.environ.get("GPMCTL_DEBUG", "") not in ("", "0")
    try:
        app()
    except GpmctlError as e:
        if debug:
            raise
        print(f"gpmctl: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("gpmctl: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug, or a library failure we did not anticipate
        if debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"gpmctl: internal error: {type(e).__name__}: {first} (set GPMCTL_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
