"""The one way gpmctl's Typer apps are made, so every command and subcommand shares the same help and parsing.

    app = new_app(help="...")          a group (`gpmctl`, `gpmctl data`, `gpmctl eval`, ...)
    @app.command("cyclic")             its commands

What the shared classes add to Typer's: a flag (`--overwrite`, `--help`) is listed in help without a
type column (Typer 0.29 prints `<bool>` there, as if the flag took a value); a closed stdout (`| head -1`)
reaches gpmctl.cli.main as `StdoutClosed` (click would turn it into exit 1 itself), which ends the command
quietly with 141, as a shell reports `yes | head -1`.
"""

from __future__ import annotations

import typer
from typer.core import TyperCommand, TyperGroup


def _untyped_flags(params: list) -> list:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # the help's type column shows the metavar when one is set: nothing, for a flag
    return params


class StdoutClosed(Exception):
    """The reader of stdout went away (a BrokenPipeError while a command ran)."""


class Command(TyperCommand):
    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise StdoutClosed() from e


class App(typer.Typer):
    """typer.Typer whose groups and commands are `Group` and `Command`."""

    def command(self, name: str | None = None, *, cls: type | None = None, **settings):
        return super().command(name, cls=cls or Command, **settings)


def new_app(**settings) -> App:
    """A Typer app with gpmctl's settings: -h as --help, no pretty tracebacks (gpmctl.cli.main prints one
    line), help when called without a command; `settings` add to them or replace them."""
    defaults = {
        "cls": Group,
        "no_args_is_help": True,
        "add_completion": False,
        "pretty_exceptions_enable": False,
        "context_settings": {"help_option_names": ["-h", "--help"]},
    }
    return App(**(defaults | settings))
