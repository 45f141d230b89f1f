"""Subcommands whose implementation is still to come: they say so and exit 2."""

from __future__ import annotations

import sys

import typer

PLANNED = {
}


def register(app: typer.Typer) -> None:
    for name, what in PLANNED.items():

        def not_yet(ctx: typer.Context, _name: str = name) -> None:
            print(f"gpmctl {_name}: not yet available in this version", file=sys.stderr)
            raise typer.Exit(2)

        not_yet.__doc__ = f"{what[0].upper()}{what[1:]}. (Not yet available.)"
        app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(not_yet)
