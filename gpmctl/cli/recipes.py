"""`gpmctl recipes ls` / `gpmctl recipes cp NAME DEST`: the shipped recipes and launch profiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from gpmctl.cli.factory import new_app
from gpmctl.errors import GpmctlError
from gpmctl.utils import check_output_file

app = new_app(
    help="List and copy the shipped recipes (YAML for train-rm) and launch profiles (accelerate configs).",
    epilog="Examples:\n\n  gpmctl recipes ls\n\n  gpmctl recipes cp gpm_8b my_gpm.yaml\n\n  gpmctl recipes cp zero3 accelerate_zero3.yaml",
)


def _shipped() -> list[dict]:
    from gpmctl.config import shipped_recipes
    from gpmctl.engine.launch import shipped_profiles

    rows = [{"name": n, "kind": "recipe", "path": str(p)} for n, p in shipped_recipes().items()]
    rows += [{"name": n, "kind": "profile", "path": str(p)} for n, p in shipped_profiles().items()]
    for row in rows:
        row["about"] = _first_comment(Path(row["path"]))
    return rows


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("# ").strip()
            return text.split(": ", 1)[1] if text.startswith("gpmctl launch profile") and ": " in text else text
        if line.strip():
            break
    return ""


@app.command("ls")
def ls(fmt: str = typer.Option("table", "--format", help="table, tsv or json.")) -> None:
    """List the shipped recipes and launch profiles (name, kind, first comment line)."""
    rows = _shipped()
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "tsv":
        for r in rows:
            print(f"{r['name']}\t{r['kind']}\t{r['about']}")
    elif fmt == "table":
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['kind']:<7}  {r['about']}")
    else:
        raise GpmctlError(f"--format: expected table, tsv or json, got {fmt!r}")


@app.command("cp")
def cp(
    name: str = typer.Argument(..., help="A recipe or profile name from `gpmctl recipes ls`."),
    dest: Path = typer.Argument(..., help="File to write, or an existing folder (the file keeps its name)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Copy a shipped recipe or launch profile, to edit and run as your own."""
    found = {r["name"]: r for r in _shipped()}
    stem = name[:-5] if name.endswith(".yaml") else name
    if stem not in found:
        import difflib

        close = difflib.get_close_matches(stem, list(found), n=1)
        raise GpmctlError(
            f"{name}: no shipped recipe or profile of that name" + (f" (did you mean {close[0]}?)" if close else "")
        )
    source = Path(found[stem]["path"])
    target = dest / source.name if dest.is_dir() else dest
    check_output_file(target)
    if target.exists() and target.resolve() == source.resolve():
        raise GpmctlError(f"{target}: is the shipped {name} itself; copy it elsewhere")
    if target.exists() and not force:
        raise GpmctlError(f"{target}: already exists (pass --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(str(target))
