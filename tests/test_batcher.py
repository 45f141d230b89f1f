"""gpmctl.serve.batcher with a stand-in scorer: what a batch holds, a failing request alone, a full queue."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from gpmctl.data.tokenize import EncodedSequence
from gpmctl.serve.batcher import Batcher, Overloaded


class FakeScorer:
    """embed_ragged returns each sequence's first token id as its value; records the groups of every call; a group
    whose first token is 13 fails; `gate` holds the thread inside a call until set."""

    def __init__(self):
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def embed_ragged(self, groups):
        self.gate.wait(timeout=30)
        self.calls.append(len(groups))
        if any(int(g[0].ids[0]) == 13 for g in groups):
            raise RuntimeError("bad request")
        return [(torch.tensor([float(s.ids[0]) for s in g], dtype=torch.float64), None) for g in groups]


def taken(batcher: Batcher) -> None:
    """Until the thread has taken every submitted job (at most 10 s)."""
    deadline = time.monotonic() + 10
    while not batcher.jobs.empty():
        assert time.monotonic() < deadline, "the batcher thread took nothing for 10 s"
        time.sleep(0.001)


def group(first: int, size: int = 2) -> list[EncodedSequence]:
    return [EncodedSequence(np.array([first + k, 5, 6], dtype=np.int32), 0) for k in range(size)]


def test_jobs_queued_while_a_batch_runs_go_into_the_next_batch_up_to_max_batch_size():
    scorer = FakeScorer()
    batcher = Batcher(scorer, max_batch_size=6, max_wait_ms=0)
    scorer.gate.clear()  # the first job holds the thread: the next five queue up
    first = batcher.submit([group(100)])
    taken(batcher)
    futures = [batcher.submit([group(200 + 10 * i)]) for i in range(5)]
    scorer.gate.set()
    assert [v.tolist() for v, _ in first.result(timeout=30)] == [[100.0, 101.0]]
    assert [f.result(timeout=30)[0][0].tolist() for f in futures] == [[200.0 + 10 * i, 201.0 + 10 * i] for i in range(5)]
    batcher.close()
    assert scorer.calls == [1, 3, 2]  # 2 sequences per job, at most 6 per batch
    assert batcher.stats.snapshot(0)["requests"] == 6


def test_a_failing_request_fails_alone_and_the_others_of_its_batch_get_answers():
    scorer = FakeScorer()
    batcher = Batcher(scorer, max_batch_size=64, max_wait_ms=0)
    scorer.gate.clear()
    blocker = batcher.submit([group(1)])
    taken(batcher)
    good, bad, other = batcher.submit([group(40)]), batcher.submit([group(13)]), batcher.submit([group(70)])
    scorer.gate.set()
    blocker.result(timeout=30)
    assert good.result(timeout=30)[0][0].tolist() == [40.0, 41.0] and other.result(timeout=30)[0][0].tolist() == [70.0, 71.0]
    with pytest.raises(RuntimeError, match="bad request"):
        bad.result(timeout=30)
    batcher.close()
    assert batcher.stats.snapshot(0)["failed_requests"] == 1


def test_a_full_queue_refuses_new_requests_until_it_drains():
    scorer = FakeScorer()
    batcher = Batcher(scorer, max_batch_size=64, max_wait_ms=0, max_queue=4)
    scorer.gate.clear()
    held = batcher.submit([group(1)])
    taken(batcher)
    waiting = [batcher.submit([group(10)]), batcher.submit([group(20)])]  # 2 + 2 + 2 sequences: over 4 with the next
    with pytest.raises(Overloaded, match="--max-queue 4"):
        batcher.submit([group(30)])
    scorer.gate.set()
    for f in [held, *waiting]:
        f.result(timeout=30)
    assert batcher.submit([group(30)]).result(timeout=30)[0][0].tolist() == [30.0, 31.0]
    batcher.close()
    assert batcher.stats.snapshot(0)["refused_requests"] == 1
