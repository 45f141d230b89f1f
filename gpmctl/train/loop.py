"""The one training loop of gpmctl: `fit` runs every optimisation (train-rm on tokens or on cached features,
each GPO iteration, the tiny policy's warm-up). What differs between jobs comes in as two things:

    batches(epoch) -> list      this process's micro-batches of an epoch (whole optimizer steps only),
                                a permutation fixed by (seed, epoch), so a resumed run sees the same ones
    step(micro_batch) -> Step   the forward pass and loss of one micro-batch, plus numbers to log

and `fit` does the rest, the same way for all of them: gradient accumulation, clipping and the optimizer
step through the engine (gpmctl.engine), the schedule, a log record every `logging_steps` optimizer steps
(the only place a number leaves the device: no host sync per micro-batch), evaluation every `eval_every`
steps and at the end, keeping the best evaluated model, checkpoints every `save_steps`, and preemption
(SIGTERM / SIGUSR1 / --stop-after-steps: checkpoint, then `Preempted`, exit code 75).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gpmctl.errors import EXIT_PREEMPTED, GpmctlError


class Preempted(GpmctlError):
    """Stopped on request after saving a checkpoint; `--resume auto` continues."""

    exit_code = EXIT_PREEMPTED


class StopFlag:
    """SIGTERM / SIGUSR1 (cluster preemption) ask the loop to checkpoint and exit after the current step."""

    def __init__(self):
        self.signal: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Step:
    """One micro-batch: the loss to backpropagate and numbers summed over the log window (tensors stay on
    the device until the log record is written)."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass
class Evaluation:
    """Evaluation every `every` optimizer steps and at the last one. `run()` -> metrics ({} when there is
    nothing to evaluate). With `keep_best`, the model whose metrics have the highest (accuracy, -loss) is the
    best: `save_best()` is called on every rank when it improves (rank 0 decides), and state["best"] says which."""

    run: Callable[[], dict]
    every: int
    keep_best: bool = False
    save_best: Callable[[], None] | None = None
    last: dict | None = None  # the latest metrics, and the step they were taken at
    last_step: int | None = None


def best_key(metrics: dict) -> tuple[float, float]:
    """What "best" means: the higher accuracy, then the lower loss (no pair with a side to take: the loss decides)."""
    return (metrics.get("accuracy") or 0.0, -metrics["loss"])


def fit(
    engine,
    model,
    optimizer,
    scheduler,
    *,
    batches: Callable[[int], list],
    step: Callable[[object], Step],
    state: dict,
    total_steps: int,
    max_grad_norm: float,
    logging_steps: int,
    report: Callable[[dict], None],
    evaluation: Evaluation | None = None,
    save_steps: int | None = None,
    checkpoint: Callable[[str], str] | None = None,
    stop: StopFlag | None = None,
    stop_after_steps: int | None = None,
    progress=None,
) -> None:
    """Train `model` until state["step"] == total_steps (module docstring).

    state: {"step", "epoch", "micro_batch", "best"}, updated in place (a checkpoint saves it; resuming passes
    it back). report(record): called at the log interval with the step, epoch, lr, grad_norm, the window's
    seconds and micro_batches, and every `Step.stats` entry summed over the window as a float.
    checkpoint(reason) -> where it went: called every `save_steps` steps and before stopping (on every rank).
    Without `checkpoint` a stop request is not waited for (the run is cheap to repeat)."""
    model.train()
    window = _Window()
    while state["step"] < total_steps:
        micro_batches = batches(state["epoch"])
        while state["micro_batch"] < len(micro_batches) and state["step"] < total_steps:
            with engine.accumulate(model):
                out = step(micro_batches[state["micro_batch"]])
                grad_norm = engine.backward_step(model, optimizer, out.loss, max_grad_norm, state["step"] + 1)
            state["micro_batch"] += 1
            window.add(out)
            if not engine.sync_gradients:
                continue
            scheduler.step()
            state["step"] += 1
            done = state["step"]
            if progress is not None:
                progress.advance()
            if done % logging_steps == 0 or done == total_steps:
                epoch = round(state["epoch"] + state["micro_batch"] / len(micro_batches), 4)
                report(
                    {
                        "step": done,
                        "epoch": epoch,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": None if grad_norm is None else float(grad_norm),
                        **window.take(),
                    }
                )
            if evaluation is not None and (done % evaluation.every == 0 or done == total_steps):
                _evaluate(engine, evaluation, state)
            if checkpoint is not None and save_steps and done % save_steps == 0:
                checkpoint("save_steps")
            by_count = stop_after_steps is not None and done >= stop_after_steps
            asked = stop is not None and stop.signal is not None
            if checkpoint is not None and engine.any_rank(asked or by_count):  # a signal may reach the ranks at different steps
                reason = stop.signal if asked else "--stop-after-steps" if by_count else "a signal to another rank"
                raise Preempted(f"stopped at step {done} ({reason}); {checkpoint(reason)}")
        if state["micro_batch"] >= len(micro_batches):
            state["epoch"] += 1
            state["micro_batch"] = 0


def _evaluate(engine, evaluation: Evaluation, state: dict) -> None:
    metrics = evaluation.run()
    evaluation.last, evaluation.last_step = metrics, state["step"]
    if not (metrics and evaluation.keep_best):
        return
    best = state.get("best")
    better = best is None or best_key(metrics) > tuple(best["key"])
    if engine.agreed(better):  # rank 0 decides for all: a save that only some ranks enter hangs
        state["best"] = {"key": list(best_key(metrics)), "step": state["step"], "metrics": metrics}
        if evaluation.save_best is not None:
            evaluation.save_best()


class _Window:
    """Sums of the step statistics since the last log record; read (one host sync) by `take`."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.micro_batches = 0
        self.started = time.perf_counter()

    def add(self, out: Step) -> None:
        self.micro_batches += 1
        for key, value in out.stats.items():
            value = value.detach() if isinstance(value, torch.Tensor) else value
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def take(self) -> dict:
        """The window's sums as Python numbers (tensors read in one stack), its seconds and micro-batches; then reset."""
        record = dict(self.sums)
        tensors = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        if tensors:
            record.update(zip(tensors, torch.stack([self.sums[k].float().reshape(()) for k in tensors]).tolist()))
        record.update(seconds=time.perf_counter() - self.started, micro_batches=self.micro_batches)
        self.reset()
        return record
