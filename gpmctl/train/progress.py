"""How a training run shows its progress on stderr: a Rich bar while stderr is a terminal; in a batch job (stderr
a file or a pipe, as in a Slurm log) one plain line per log record, every `train.logging_steps` optimizer steps,
as HF Trainer users expect there:

    [gpmctl 14:02:11] train step=20/200 epoch=0.4 loss=0.6812 accuracy=0.5625 lr=2.000e-06 grad_norm=0.8125 pairs/s=812.3 eta=0:01:23
    [gpmctl 14:09:40] train iteration=2 step=5/12 epoch=0.8 loss=0.0113 lr=5.000e-07 grad_norm=0.3201 sequences/s=96.0 eta=0:00:07

A line is `key=value` fields after the label (split on spaces, then on the first `=`); a field without a value
in the record (no accuracy when no pair had a side to take) is left out. Only process 0 shows anything.
"""

from __future__ import annotations

import sys
import time

from gpmctl.utils import log


class TrainProgress:
    """The progress of `total` optimizer steps, `done` of them finished before (a resumed run).

    advance(): one step more (the bar). report(record): a log record of gpmctl.train.loop.fit's `report` with
    `loss`, `lr` and `{unit}_per_s`, and where known `epoch`, `accuracy`, `grad_norm`."""

    def __init__(self, total: int, done: int, enabled: bool, label: str = "train", unit: str = "pairs"):
        self.total, self.start_step, self.label, self.unit = total, done, label, unit
        self.enabled = enabled
        self.started = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            from gpmctl.utils import stderr_console

            self.bar = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                console=stderr_console(),
                transient=True,
            )
            self.task = self.bar.add_task("", total=total, completed=done)

    def __enter__(self):
        self.started = time.perf_counter()
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def advance(self) -> None:
        if self.bar:
            self.bar.advance(self.task)

    def report(self, record: dict) -> None:
        if not self.enabled:
            return
        accuracy = record.get("accuracy")
        if self.bar:
            self.bar.update(
                self.task, description=f"loss {record['loss']:.4f}" + (f" acc {accuracy:.3f}" if accuracy is not None else "")
            )
            return
        log(f"{self.label} " + " ".join(f"{key}={value}" for key, value in self.fields(record).items()))

    def fields(self, record: dict) -> dict[str, str]:
        """The plain line's fields, formatted."""
        step = record["step"]
        fields = {"iteration": str(record["iteration"])} if "iteration" in record else {}  # train-gpo's
        fields["step"] = f"{step}/{self.total}"
        if record.get("epoch") is not None:
            fields["epoch"] = f"{record['epoch']:g}"
        fields["loss"] = f"{record['loss']:.4f}"
        if record.get("accuracy") is not None:
            fields["accuracy"] = f"{record['accuracy']:.4f}"
        fields["lr"] = f"{record['lr']:.3e}"
        if record.get("grad_norm") is not None:
            fields["grad_norm"] = f"{record['grad_norm']:.4g}"
        fields[f"{self.unit}/s"] = f"{record[f'{self.unit}_per_s']:.1f}"
        fields["eta"] = _clock(self.eta(step))
        return fields

    def eta(self, step: int) -> float:
        """Seconds until the last step, at the mean pace of the steps taken since this run (or resume) began."""
        taken = step - self.start_step
        if taken <= 0:
            return 0.0
        return (self.total - step) * (time.perf_counter() - self.started) / taken


def _clock(seconds: float) -> str:
    """H:MM:SS, as HF Trainer and tqdm show a time left."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
