"""Dynamic batching: the requests of many clients embedded together by one thread that owns the model.

    batcher = Batcher(scorer, max_batch_size=64, max_batch_tokens=16384, max_wait_ms=5, max_queue=4096)
    future = batcher.submit(groups)        # groups: [[EncodedSequence, ...], ...], one per prompt
    results = future.result(timeout)       # per group: (value [K, 2k] or BT [K], gate [k] or None), float64

The thread takes the oldest job, then more jobs while they fit (`max_batch_size` sequences, `max_batch_tokens`
tokens): those already queued at once, and, while requests are still being tokenised (`arriving`), those that
come within `max_wait_ms` of the first; a lone request does not wait. It embeds them in one `Scorer.embed_ragged`
call (length-sorted padded batches, or packed rows with each prompt once). A batch that fails is retried job by
job, so a bad request fails alone. `submit` refuses (`Overloaded`) once `max_queue` sequences wait, so a burst
gets a quick 503 instead of an unbounded queue; `close` finishes every job already taken before it returns.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field


class Overloaded(Exception):
    """More sequences wait than the server queues: come back later."""


@dataclass
class Job:
    groups: list  # [[EncodedSequence, ...], ...]
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def sequences(self) -> int:
        return sum(len(g) for g in self.groups)

    @property
    def tokens(self) -> int:
        return sum(len(s.ids) for g in self.groups for s in g)


class Stats:
    """What GET /metrics reports: counters, batch sizes and the latency of the last `keep` requests."""

    def __init__(self, keep: int = 10_000):
        self.lock = threading.Lock()
        self.requests = self.sequences = self.tokens = self.batches = self.failed = self.refused = 0
        self.batch_sequences = collections.deque(maxlen=keep)
        self.latencies = collections.deque(maxlen=keep)

    def batch(self, jobs: list[Job], ok: bool) -> None:
        now = time.perf_counter()
        with self.lock:
            self.batches += 1
            self.batch_sequences.append(sum(j.sequences for j in jobs))
            for job in jobs:
                self.requests += 1
                self.sequences += job.sequences
                self.tokens += job.tokens
                self.failed += not ok
                self.latencies.append(now - job.submitted)

    def snapshot(self, queued: int) -> dict:
        with self.lock:
            latencies, sizes = sorted(self.latencies), list(self.batch_sequences)
            counts = {
                "requests": self.requests,
                "failed_requests": self.failed,
                "refused_requests": self.refused,
                "sequences": self.sequences,
                "tokens": self.tokens,
                "batches": self.batches,
            }

        def quantile(q: float) -> float | None:
            return round(latencies[min(int(q * len(latencies)), len(latencies) - 1)], 6) if latencies else None

        return {
            **counts,
            "queued_sequences": queued,
            "batch_sequences_mean": round(sum(sizes) / len(sizes), 3) if sizes else None,
            "batch_sequences_max": max(sizes) if sizes else None,
            "latency_s": {"p50": quantile(0.5), "p90": quantile(0.9), "p99": quantile(0.99)},
        }


class Batcher:
    def __init__(
        self,
        scorer,
        max_batch_size: int = 64,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        batching: bool = True,
    ):
        self.scorer = scorer
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue, self.batching = max_queue, batching
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.queued = 0  # sequences submitted and not yet running
        self.incoming = 0  # requests being tokenised, about to be submitted
        self.lock = threading.Lock()
        self.stats = Stats()
        self.thread = threading.Thread(target=self._run, name="gpmctl-batcher", daemon=True)
        self.thread.start()

    @contextlib.contextmanager
    def arriving(self):
        """Around a request's tokenisation: the thread waits (at most max_wait_ms) for it to join a batch."""
        with self.lock:
            self.incoming += 1
        try:
            yield
        finally:
            with self.lock:
                self.incoming -= 1

    def submit(self, groups: list) -> Future:
        job = Job(groups)
        with self.lock:
            if self.queued and self.queued + job.sequences > self.max_queue:
                self.stats.refused += 1
                raise Overloaded(f"{self.queued} sequences are queued (--max-queue {self.max_queue})")
            self.queued += job.sequences
        self.jobs.put(job)
        return job.future

    def close(self) -> None:
        """Finish the jobs already submitted, then stop the thread."""
        self.jobs.put(None)
        self.thread.join()

    def _get(self, timeout: float | None = None) -> Job | None:
        """The next job (None: closing); raises queue.Empty after `timeout` (0: only one already queued)."""
        return self.jobs.get(timeout=timeout) if timeout != 0 else self.jobs.get_nowait()

    def _run(self) -> None:
        """Take a job, then more while they fit and come in time; run them as one batch; until closed."""
        pending = None  # a job that did not fit into the last batch: it starts the next
        while (first := pending or self._get()) is not None:
            pending, batch = None, [first]
            sequences, tokens = first.sequences, first.tokens
            deadline = time.perf_counter() + self.max_wait
            while self.batching:
                try:
                    job = self._get(max(deadline - time.perf_counter(), 0) if self.incoming else 0)
                except queue.Empty:
                    break
                if job is None:  # closing: run what was taken, then stop
                    self.jobs.put(None)
                    break
                if sequences + job.sequences > self.max_batch_size or tokens + job.tokens > self.max_batch_tokens:
                    pending = job
                    break
                batch.append(job)
                sequences, tokens = sequences + job.sequences, tokens + job.tokens
            with self.lock:  # gathered jobs waited until now: they count against max_queue until they run
                self.queued -= sequences
            self._run_batch(batch)

    def _run_batch(self, batch: list[Job]) -> None:
        try:
            results = self.scorer.embed_ragged([g for job in batch for g in job.groups])
        except Exception as e:  # noqa: BLE001 (a request's problem must not stop the server)
            if len(batch) > 1:  # find the job that fails; the others get their answers
                for job in batch:
                    self._run_batch([job])
                return
            self.stats.batch(batch, ok=False)
            batch[0].future.set_exception(e)
            return
        self.stats.batch(batch, ok=True)
        start = 0
        for job in batch:
            job.future.set_result(results[start : start + len(job.groups)])
            start += len(job.groups)
