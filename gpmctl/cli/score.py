"""`gpmctl score A B [C ...] --model M`: P(a > b) per line, or a K x K matrix for K files."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from gpmctl.cli import processes


def score(
    ctx: typer.Context,
    inputs: list[str] = typer.Argument(
        ..., help="K >= 2 jsonl files (or - for stdin, once); line i of each answers the same prompt."
    ),
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="A model: a gpmctl folder (train-rm, export), a transformers sequence-classifier or OpenRLHF reward model, a released GPM checkpoint, a hub id or package:NAME.",
    ),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write here instead of stdout (atomically; see --resume)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted -o run after its last complete chunk (same --chunk-lines)."
    ),
    embed: bool = typer.Option(False, "--embed", help="Write the embeddings (and gate) instead of probabilities."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or tsv."),
    batch_size: int = typer.Option(32, min=1, help="Sequences per forward pass."),
    max_length: int = typer.Option(2048, min=2, help="Tokens per (prompt, response); longer ones are cut at the end."),
    chunk_lines: int = typer.Option(256, min=1, help="Input lines read, scored and written at a time (memory stays flat)."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    allow_prompt_mismatch: bool = typer.Option(False, help="Accept different prompts on the same line."),
    normalize: Optional[bool] = typer.Option(
        None,
        "--normalize/--no-normalize",
        help="BT: rewards as (r - mean) / std with the statistics saved with the model (its training run's eval set, "
        "or OpenRLHF's config); p and logit then use them too. Default: as the model says (OpenRLHF's normalize_reward).",
    ),
    share_prompt: str = typer.Option(
        "auto", help="auto, true, false: embed a line's K responses as one packed row with the prompt once (causal decoders)."
    ),
    num_processes: int = processes.num_processes_option(),
) -> None:
    """Score aligned responses with a GPM or BT model: each response is embedded once (K passes per prompt).

    Input rows: {"prompt", "response"}, {"prompt", "completion"} (TRL's prompt-completion rows; strings or
    message lists) or {"messages"} whose last message is the response; an "id" is copied to the output.

    Two files: one JSON object per line, {"line", "id"?, "p": P(a > b), "logit": s / tau} (BT adds the
    rewards). K >= 3 files: {"line", "id"?, "matrix": K x K probabilities, "win_rate": mean P(i > j)}.
    With -o the lines go to OUT.partial (settings in OUT.partial.json), renamed to OUT when complete;
    --resume refuses a partial file started with other inputs, model or settings.

    With --num-processes N (or under accelerate launch, torchrun or srun) the chunks of --chunk-lines lines are
    dealt to the processes, each embeds its chunks as one process would, and process 0 reads the input and
    writes the output in input order: the same bytes as one process writes.

    Example: gpmctl score a.jsonl b.jsonl --model runs/cyclic_tiny_gpm > p.jsonl

    Example: gpmctl score a.jsonl b.jsonl c.jsonl -m runs/gpm -o m.jsonl --num-processes 8   (8 GPUs)
    """
    from gpmctl.data.responses import aligned_rows, text_cutter
    from gpmctl.errors import ConfigError
    from gpmctl.models.build import resolve_dtype
    from gpmctl.utils import DTYPES, log, prepare_output, refuse_inputs_as_output, resolve_device

    if len(inputs) < 2:
        raise ConfigError("score needs at least two input files")
    if inputs.count("-") > 1:
        raise ConfigError("stdin (-) can be only one of the inputs")
    if fmt not in ("jsonl", "tsv") or (embed and fmt != "jsonl"):
        raise ConfigError(f"--format: expected jsonl or tsv (embeddings: jsonl only), got {fmt!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if resume and not output:
        raise ConfigError("--resume needs --output")
    device = resolve_device(device)
    settings = None
    if output:
        refuse_inputs_as_output(output, inputs)
        prepare_output(output)
        settings = {
            "inputs": [i if i == "-" else str(Path(i).resolve()) for i in inputs],
            "model": _resolved(model),
            "format": fmt,
            "embed": embed,
            "chunk_lines": chunk_lines,
            "max_length": max_length,
            "share_prompt": share_prompt,
            "normalize": normalize,
            "dtype": str(resolve_dtype(dtype, device)).removeprefix("torch."),
        }
        if resume and Path(f"{output}.partial").exists():
            _check_resume_settings(Path(f"{output}.partial"), Path(f"{output}.partial.json"), settings)
    with processes.scoring(ctx, num_processes, model, batch_size, max_length, dtype, device, share_prompt) as (engine, scorer):
        if normalize is not None:
            _set_normalize(scorer.model.head, normalize, model)
        out = _Output(output, settings, fmt, resume, chunk_lines) if engine.is_main else None
        shorten = text_cutter(scorer.encoder.tokenizer, max_length)
        rows = aligned_rows(inputs, skip=out.skip, allow_prompt_mismatch=allow_prompt_mismatch, shorten=shorten) if out else None
        chunks = _chunks(rows, chunk_lines) if out else None
        scored: list[list[dict]] = []

        def next_round() -> list:  # on process 0: write the chunks scored so far, read one chunk per process
            out.write(scored)
            return list(itertools.islice(chunks, engine.world))

        try:
            while chunk_round := engine.from_main(next_round):
                scored = engine.shard_map(chunk_round, lambda chunk, _: [score_lines(scorer, chunk[0], embed)])
        finally:
            if out:
                out.close()
        if out:
            out.finish()
            log(f"scored {out.written} lines of {len(inputs)} files")


def _chunks(rows, chunk_lines: int):
    """Lists of `chunk_lines` aligned lines (the last one shorter): the unit a process embeds and writes."""
    while chunk := list(itertools.islice(rows, chunk_lines)):
        yield chunk


class _Output:
    """Where process 0 writes the scored chunks: stdout, or OUT.partial (its settings in OUT.partial.json)
    renamed to OUT by `finish`. With `resume`, an interrupted partial file keeps its complete chunks and
    `skip` is their line count."""

    def __init__(self, output: str | None, settings: dict | None, fmt: str, resume: bool, chunk_lines: int):
        from gpmctl.utils import atomic_write_text, log

        self.output, self.fmt = output, fmt
        self.partial = Path(f"{output}.partial") if output else None
        self.settings_path = Path(f"{output}.partial.json") if output else None
        self.skip = _complete_chunks(self.partial, chunk_lines) if resume and self.partial.exists() else 0
        if self.skip:
            log(f"resuming {output}: {self.skip} lines already scored")
        if self.partial:  # beside the partial file for as long as it exists: what a --resume must match
            atomic_write_text(self.settings_path, json.dumps(settings, indent=1) + "\n")
        self.sink = open(self.partial, "a" if self.skip else "w", encoding="utf-8") if self.partial else sys.stdout
        self.written = self.skip
        self.progress = _Progress()

    def write(self, chunks: list[list[dict]]) -> None:
        from gpmctl.errors import DiskFullError
        from gpmctl.utils import is_disk_full

        try:
            for records in chunks:
                self.written += _write(self.sink, records, self.fmt)
                self.progress.update(self.written)
        except OSError as e:
            if self.sink is sys.stdout or not is_disk_full(e):
                raise
            raise DiskFullError(
                f"no space left writing {self.partial} ({self.written} lines kept: --resume continues there)"
            ) from None

    def close(self) -> None:
        self.progress.stop()
        if self.sink is not sys.stdout:
            self.sink.close()

    def finish(self) -> None:
        if self.partial:
            self.partial.replace(self.output)
            self.settings_path.unlink(missing_ok=True)


def score_lines(scorer, chunk: list[tuple[int, list]], embed_only: bool = False) -> list[dict]:
    """Output records of a chunk of aligned lines (line number, one gpmctl.data.responses.Response per file):
    pair probabilities (K = 2), K x K matrices (K >= 3), or the embeddings (and gate) with `embed_only`."""
    import torch

    from gpmctl.models import preference as P

    K, tau = len(chunk[0][1]), scorer.tau
    groups = [[scorer.encoder.encode(r.prompt, r.response, f"line {n}") for r in rows] for n, rows in chunk]
    value, gate = scorer.embed_encoded(groups)  # each response once; one gate per line (its K passes' mean)
    out = []
    for i, (number, rows) in enumerate(chunk):
        record: dict = {"line": number}
        ids = [r.id for r in rows if r.id is not None]
        if ids:
            record["id"] = ids[0]
        if embed_only:
            record["embeddings"] = value[i].tolist()
            if gate is not None:
                record["gate"] = gate[i].tolist()
            out.append(record)
            continue
        S = scorer.score_matrix(value[i], None if gate is None else gate[i])
        prob = P.preference_probability(S, tau)
        if K == 2:
            record.update(p=float(prob[0, 1]), logit=float(S[0, 1] / tau))
            if scorer.kind == "bt":
                record.update(reward_a=float(value[i, 0]), reward_b=float(value[i, 1]))
        else:
            off_diagonal = ~torch.eye(K, dtype=torch.bool)
            record["matrix"] = prob.tolist()
            record["win_rate"] = (prob * off_diagonal).sum(1).div(K - 1).tolist()
        out.append(record)
    return out


RESUME_FLAGS = {
    "inputs": "the inputs",
    "model": "--model",
    "format": "--format",
    "embed": "--embed",
    "chunk_lines": "--chunk-lines",
    "max_length": "--max-length",
    "dtype": "--dtype",
}


def _set_normalize(head, normalize: bool, model: str) -> None:
    from gpmctl.errors import ConfigError

    if normalize and (problem := head.normalization_problem()):
        raise ConfigError(f"--normalize: {model} {problem}")
    head.normalize = normalize


def _resolved(model: str) -> str:
    return str(Path(model).resolve()) if Path(model).exists() else model


def _check_resume_settings(partial: Path, settings_path: Path, settings: dict) -> None:
    """Refuse to append to a partial output started with other settings: it would mix two kinds of lines."""
    from gpmctl.errors import ConfigError
    from gpmctl.utils import log

    if not settings_path.exists():  # written by hand, or by a gpmctl that did not record them
        log(f"{partial}: no {settings_path.name} beside it; resuming without checking its settings")
        return
    try:
        before = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{settings_path}: unreadable ({e}); delete it and {partial} to start over") from None
    for key, flag in RESUME_FLAGS.items():
        old, new = before.get(key), settings[key]
        if old != new:
            was = f"with {flag} {_shown(old)}, not {_shown(new)}"
            if isinstance(new, bool):
                was = f"{'with' if old else 'without'} {flag}"
            raise ConfigError(f"{partial}: was started {was}; resume with the same settings, or leave out --resume to start over")


def _shown(value) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


class _Progress:
    """A line counter on stderr while it is a terminal (never mixed into the data on stdout)."""

    def __init__(self):
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            from gpmctl.utils import stderr_console

            self.bar = Progress(
                SpinnerColumn(),
                TextColumn("scored {task.completed} lines"),
                TimeElapsedColumn(),
                console=stderr_console(),
                transient=True,
            )
            self.task = self.bar.add_task("score", total=None)
            self.bar.start()

    def update(self, lines: int) -> None:
        if self.bar:
            self.bar.update(self.task, completed=lines)

    def stop(self) -> None:
        if self.bar:
            self.bar.stop()


def _write(sink, records: list[dict], fmt: str) -> int:
    """Whole lines only, flushed per chunk: an interruption never leaves half a record behind a newline."""
    lines = []
    for r in records:
        if fmt == "jsonl":
            lines.append(json.dumps(r))
        else:
            values = [r["p"], r["logit"]] if "p" in r else r["win_rate"]
            lines.append("\t".join([str(r["line"]), r.get("id", "")] + [f"{v:.6g}" for v in values]))
    sink.write("".join(line + "\n" for line in lines))
    sink.flush()
    return len(records)


def _complete_chunks(path: Path, chunk_lines: int) -> int:
    """Keep the whole chunks of an interrupted output (cutting anything after them) and return their line
    count. Restarting on a chunk boundary batches the rest exactly as an uninterrupted run would, so the
    resumed file is byte-identical to an uninterrupted one (same --chunk-lines)."""
    data = path.read_bytes()
    lines = data.count(b"\n")
    keep_lines = lines - lines % chunk_lines
    keep = 0
    for _ in range(keep_lines):
        keep = data.index(b"\n", keep) + 1
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return keep_lines
