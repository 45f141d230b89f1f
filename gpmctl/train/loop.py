"""Pieces shared by the training loops (train-rm and train-gpo): one optimizer step, preemption."""

from __future__ import annotations

import signal

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


def backward_step(accelerator, model, optimizer, loss, max_grad_norm: float):
    """Inside `accelerator.accumulate(model)`: backward, clip on the last micro-batch of an optimizer step,
    step (a no-op until then), zero the gradients. Returns the gradient norm when it was clipped, else None."""
    accelerator.backward(loss)
    grad_norm = None
    if accelerator.sync_gradients and max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
