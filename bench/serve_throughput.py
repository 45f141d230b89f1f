"""`gpmctl serve` under load: requests/s, sequences/s and latency at several concurrencies, batching on and off.

    PYTHONPATH=. python bench/serve_throughput.py [--models tiny,50m] [--concurrency 1,8,32] [--seconds 20]

For each model (an untrained GPM, dim 8 with gate, on the Llama shapes of bench/train_throughput.py) and each
mode (--batching: requests gathered for up to --max-wait-ms; --no-batching: one request at a time), a server is
started on 127.0.0.1 and a free port; C client threads then each send requests one after another for
--seconds (after a warm-up), every request one prompt with K responses (HH-RLHF prompts and answers when the
shared data is there, else short synthetic texts), as a GRPO-style trainer asks for group rewards. Every loop is
bounded by count and time and the server is stopped (SIGTERM) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.score_throughput import HH_FILE, SHAPES, hh_groups  # noqa: E402


def model_folder(workdir: Path, name: str) -> Path:
    import torch

    from gpmctl.models.build import tiny_backbone
    from gpmctl.models.heads import HeadConfig
    from gpmctl.models.io import save_model
    from gpmctl.models.model import PreferenceModel
    from gpmctl.models.sources import load_tokenizer

    folder = workdir / f"gpm_{name}"
    if not (folder / "preference_head.json").exists():
        tok = load_tokenizer("tiny")
        torch.manual_seed(0)
        save_model(PreferenceModel(tiny_backbone(tok, SHAPES[name], 0), HeadConfig(kind="gpm", dim=8, gate=True)), folder, tok)
    return folder


def request_bodies(count: int, k: int, seed: int) -> list[dict]:
    if HH_FILE.is_file():
        groups = hh_groups(count, k, seed)
        return [{"prompt": p, "responses": [r[-1]["content"] for r in rs]} for p, rs in groups]
    rng = random.Random(seed)
    words = "the a garden calm colour answer short long because warm bold jade amber silver river stone".split()
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    return [{"prompt": text(40), "responses": [text(rng.randint(20, 80)) for _ in range(k)]} for _ in range(count)]


def post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


class Server:
    def __init__(self, model: Path, batching: bool, max_wait_ms: float, threads: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options = ["--batching" if batching else "--no-batching", "--max-wait-ms", str(max_wait_ms), "--batch-size", "32"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "gpmctl", "serve", "--model", str(model), "--port", str(self.port), *options]
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("the server did not start within 120 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(url: str, bodies: list[dict], concurrency: int, seconds: float, max_requests: int) -> dict:
    """C clients, each sending requests back to back until `seconds` pass or `max_requests` are sent in all."""
    latencies: list[float] = []
    lock = threading.Lock()
    sent = [0]
    stop_at = time.perf_counter() + seconds

    def client(c: int) -> None:
        i = c
        while time.perf_counter() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            start = time.perf_counter()
            post(url + "/preference", bodies[i % len(bodies)])
            with lock:
                latencies.append(time.perf_counter() - start)
            i += concurrency

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    wall = time.perf_counter() - started
    latencies.sort()
    k = len(bodies[0]["responses"])
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "sequences_per_s": len(latencies) * k / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(int(0.99 * len(latencies)), len(latencies) - 1)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,50m")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("-k", type=int, default=4, help="responses per request")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time per (model, mode, concurrency)")
    ap.add_argument("--max-requests", type=int, default=5000, help="bound on requests per measurement")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the server")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpmctl-serve-bench-"))
    bodies = request_bodies(64, args.k, 0)
    source = "HH-RLHF" if HH_FILE.is_file() else "synthetic"
    print(
        f"{source} requests of 1 prompt x K={args.k} responses; server torch threads {args.threads}; {args.seconds:.0f} s each\n"
    )
    print("| model | batching | concurrency | requests/s | sequences/s | p50 s | p99 s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        folder = model_folder(workdir, name)
        for batching in (True, False):
            server = Server(folder, batching, args.max_wait_ms, args.threads)
            try:
                for _ in range(3):  # warm-up: first-call allocations and lazy imports
                    post(server.url + "/preference", bodies[0])
                for c in (int(x) for x in args.concurrency.split(",")):
                    r = load(server.url, bodies, c, args.seconds, args.max_requests)
                    print(
                        f"| {name} | {'on' if batching else 'off'} | {c} | {r['requests_per_s']:.2f} | {r['sequences_per_s']:.1f} | "
                        f"{r['p50_s']:.3f} | {r['p99_s']:.3f} |",
                        flush=True,
                    )
            finally:
                server.stop()


if __name__ == "__main__":
    main()
