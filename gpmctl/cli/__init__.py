"""The `gpmctl` command: one Typer app, one small module per subcommand.

Conventions of every subcommand: data on stdout, logs and progress on stderr; exit 0 ok, 1 failure,
2 bad input (one line naming file, line and key), 75 stopped for preemption after a checkpoint, 141 (quietly)
when the reader of stdout went away, as `yes | head -1` does.
Heavy libraries (torch, transformers) are imported inside commands so `gpmctl --help` stays fast.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer
import typer.main

from gpmctl import __version__
from gpmctl.cli import data, demo, eval, export, plot, processes, recipes, score, serve, train_gpo, train_rm
from gpmctl.cli.factory import StdoutClosed, new_app

# --install-completion / --show-completion: Typer's shell completion (bash, zsh, fish, PowerShell)
app = new_app(
    name="gpmctl",
    help="General Preference Models (GPM) and Bradley-Terry reward models: data, training, scoring, evaluation.",
    add_completion=True,
)
app.add_typer(data.app, name="data")
app.add_typer(eval.app, name="eval")
app.add_typer(recipes.app, name="recipes")
app.add_typer(plot.app, name="plot")
app.command("train-rm", context_settings={"allow_extra_args": False})(train_rm.train_rm)
app.command("train-gpo")(train_gpo.train_gpo)
app.command("demo")(demo.demo)
app.command("score")(score.score)
app.command("export")(export.export)
app.command("serve")(serve.serve)


def _version(value: bool) -> None:
    if value:
        print(f"gpmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """General Preference Models (GPM) and Bradley-Terry reward models: data, training, scoring, evaluation."""


class _Terminated(BaseException):
    """SIGTERM, raised where the process is so that `finally` blocks remove temporary files (not an Exception:
    nothing catches it by accident)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _is_click(e: BaseException, name: str) -> bool:
    # by class name: typer vendors its own copy of click (typer._click) since 0.2x, plain click before
    return any(c.__name__ == name for c in type(e).__mro__)


def _usage_line(e: Exception) -> str:
    """A click usage error as one line: the message, then where to read the usage."""
    message = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    return f"{message} (see '{ctx.command_path} -h')" if ctx is not None else message


def main() -> None:
    """Console entry point (`run`). A process of a multi-process scoring command leaves by `processes.leave` once
    the command is done: its exit code, without the interpreter's teardown of the process group."""
    try:
        run()
    except SystemExit as e:
        if processes.leaving():
            processes.leave(e.code)
        raise


def run() -> None:
    """The command line: usage and user errors become one line on stderr (exit 2); GPMCTL_DEBUG=1 shows
    tracebacks; SIGTERM and Ctrl-C unwind the command (temporary files are removed) and exit 143 / 130."""
    from gpmctl.errors import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_USAGE, GpmctlError

    debug = os.environ.get("GPMCTL_DEBUG", "") not in ("", "0")
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        code = typer.main.get_command(app).main(args=sys.argv[1:], prog_name="gpmctl", standalone_mode=False)
        sys.stdout.flush()  # here, not at exit: a reader gone before the last buffered line is the same closed pipe
    except GpmctlError as e:
        if debug:
            raise
        print(f"gpmctl: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except _Terminated:
        print("gpmctl: terminated (SIGTERM)", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        code = 130
    except (StdoutClosed, BrokenPipeError):  # the reader of stdout went away (e.g. `| head -1`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the final flush at exit cannot fail again
        sys.exit(EXIT_BROKEN_PIPE)
    except Exception as e:
        if _is_click(e, "NoArgsIsHelpError"):  # its help text is already printed
            sys.exit(EXIT_USAGE)
        if _is_click(e, "UsageError"):  # unknown option, missing argument, a value of the wrong type
            print(f"gpmctl: error: {_usage_line(e)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        if _is_click(e, "ClickException"):
            print(f"gpmctl: error: {' '.join(e.format_message().split())}", file=sys.stderr)
            sys.exit(e.exit_code)
        if _is_click(e, "Abort"):
            code = 130 if isinstance(e.__cause__, KeyboardInterrupt) else EXIT_FAILURE
        else:  # a bug, or a library failure we did not anticipate
            if debug:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"gpmctl: internal error: {type(e).__name__}: {first} (set GPMCTL_DEBUG=1 for the traceback)", file=sys.stderr)
            sys.exit(EXIT_FAILURE)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        print("gpmctl: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
