"""`gpmctl serve`: each server is started by the test on 127.0.0.1 and a free port, every request loop is bounded
in count and time, and every server is stopped by the test (SIGTERM, then kill after a bound)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from gpmctl.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Which option suits a garden best?", "Name a calm colour.", "What should I read tonight?", "Pick a fruit."]
ANSWERS = [
    ["Go with jade because it is calm.", "Pick silver.", "I would pick amber, since it feels warm and bold."],
    ["Blue.", "Jade, soft and quiet.", "Red is loud."],
    ["A short novel.", "Anything you like.", "The report on page 4, twice."],
    ["An apple.", "A pear, ripe and sweet.", "None."],
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`gpmctl serve` in a child process on 127.0.0.1; `stop()` sends SIGTERM and waits at most 30 s."""

    def __init__(self, model: str, *options: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "gpmctl", "serve", "--model", model, "--port", str(self.port), *options]
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.proc.stderr.read()}")
            try:
                if request(self.url + "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("the server did not answer /health within 90 s")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def request(url: str, body=None, headers: dict | None = None, timeout: float = 60, raw: bytes | None = None):
    """One HTTP request -> (status, JSON body, headers); HTTP errors are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), dict(e.headers)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Untrained tiny models: a gated GPM and a BT, built from a config."""
    from gpmctl.config import ModelConfig, TinyBackbone
    from gpmctl.models.build import build_model
    from gpmctl.models.io import save_model
    from gpmctl.models.sources import load_tokenizer

    tok = load_tokenizer("tiny")
    tiny = TinyBackbone(hidden_size=32, num_layers=1, intermediate_size=64, initializer_range=0.3)
    out = {}
    for kind, cfg in (("gpm", ModelConfig(kind="gpm", dim=4, gate=True, tiny=tiny)), ("bt", ModelConfig(kind="bt", tiny=tiny))):
        out[kind] = str(tmp_path_factory.mktemp(kind))
        save_model(build_model(cfg, tok, seed=0), out[kind], tok)
    return out


@pytest.fixture(scope="module")
def gpm_server(models):
    server = Server(models["gpm"], "--max-wait-ms", "50", "--max-request-bytes", "200000")
    yield server
    code, err = server.stop()
    assert code in (0, 143) and "Traceback" not in err, err


KEY = {"authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def bt_server(models):
    server = Server(models["bt"], env={"GPMCTL_API_KEY": "s3cret"})
    yield server
    server.stop()


def score_cli(model: str, tmp_path: Path, K: int) -> list[dict]:
    files = []
    for k in range(K):
        path = tmp_path / f"r{k}.jsonl"
        path.write_text("".join(json.dumps({"prompt": p, "response": a[k]}) + "\n" for p, a in zip(PROMPTS, ANSWERS)))
        files.append(str(path))
    result = CliRunner().invoke(app, ["score", *files, "--model", model])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def flat(matrix: list[list[float]]) -> list[float]:
    return [x for row in matrix for x in row]


def groups(K: int) -> list[dict]:
    return [{"prompt": p, "responses": a[:K]} for p, a in zip(PROMPTS, ANSWERS)]


def test_preference_equals_gpmctl_score(gpm_server, models, tmp_path):
    status, reports, _ = request(gpm_server.url + "/preference", groups(3))
    assert status == 200 and len(reports) == 4
    for report, line in zip(reports, score_cli(models["gpm"], tmp_path, 3)):
        assert flat(report["matrix"]) == pytest.approx(flat(line["matrix"]), abs=1e-6)
        assert report["win_rate"] == pytest.approx(line["win_rate"], abs=1e-6)
        assert report["matrix"][0][1] + report["matrix"][1][0] == pytest.approx(1.0, abs=1e-12)
    pairs = score_cli(models["gpm"], tmp_path, 2)
    status, single, _ = request(gpm_server.url + "/preference", groups(2)[0])
    assert status == 200 and single["matrix"][0][1] == pytest.approx(pairs[0]["p"], abs=1e-6)
    S = single["logits"]
    assert single["gpo_score"] == pytest.approx([sum(row) / 2 for row in S], abs=1e-12)


def test_embed_returns_values_and_one_gate_per_prompt(gpm_server):
    status, out, _ = request(gpm_server.url + "/embed", groups(3)[:2])
    assert status == 200 and len(out) == 2
    assert len(out[0]["values"]) == 3 and len(out[0]["values"][0]) == 4 and len(out[0]["gate"]) == 2
    assert sum(out[0]["gate"]) == pytest.approx(1.0, abs=1e-6)  # softmax over the k = 2 blocks (float32)


def openrlhf_texts(prompts: list[str], answers: list[str]) -> tuple[list[str], list[str]]:
    """What OpenRLHF's remote reward model client sends: whole templated rollouts and their templated prompts."""
    from gpmctl.models.sources import load_tokenizer

    tok = load_tokenizer("tiny")
    user = [[{"role": "user", "content": p}] for p in prompts]
    queries = [tok.apply_chat_template(u + [{"role": "assistant", "content": a}], tokenize=False) for u, a in zip(user, answers)]
    heads = [tok.apply_chat_template(u, tokenize=False, add_generation_prompt=True) for u in user]
    return queries, heads


def test_get_reward_takes_openrlhfs_request_and_gives_bt_rewards(bt_server, models, tmp_path):
    queries, heads = openrlhf_texts(PROMPTS, [a[0] for a in ANSWERS])
    status, out, _ = request(bt_server.url + "/get_reward", {"query": queries, "prompts": heads, "labels": [None] * 4}, KEY)
    assert status == 200 and set(out) == {"rewards", "scores", "extra_logs"}
    want = [line["reward_a"] for line in score_cli(models["bt"], tmp_path, 2)]
    assert out["rewards"] == pytest.approx(want, abs=1e-5) and out["scores"] == out["rewards"]


def test_get_reward_of_a_gpm_is_the_gpo_score_within_each_prompts_group(gpm_server):
    queries, heads = openrlhf_texts([PROMPTS[0]] * 3 + [PROMPTS[1]], ANSWERS[0] + ANSWERS[1][:1])
    status, out, _ = request(gpm_server.url + "/get_reward", {"query": queries, "prompts": heads})
    assert status == 200
    _, report, _ = request(gpm_server.url + "/preference", {"prompt": PROMPTS[0], "responses": ANSWERS[0]})
    assert out["rewards"][:3] == pytest.approx(report["gpo_score"], abs=1e-6)
    assert out["rewards"][3] == 0.0 and out["extra_logs"]["groups"] == 2  # alone with its prompt: s(y > y) = 0


def test_32_concurrent_clients_are_batched_and_get_their_own_answers(gpm_server):
    bodies = [{"prompt": f"{PROMPTS[i % 4]} ({i})", "responses": ANSWERS[i % 4]} for i in range(32)]
    alone = [request(gpm_server.url + "/preference", b)[1]["matrix"] for b in bodies[:4]]
    before = request(gpm_server.url + "/metrics")[1]
    answers: list = [None] * 32

    def client(i: int) -> None:
        answers[i] = request(gpm_server.url + "/preference", bodies[i], timeout=60)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert all(a is not None and a[0] == 200 for a in answers)
    for i in range(4):
        assert flat(answers[i][1]["matrix"]) == pytest.approx(flat(alone[i]), abs=1e-5)
    after = request(gpm_server.url + "/metrics")[1]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == 32 and batches < 32  # requests shared batches
    assert after["latency_s"]["p99"] >= after["latency_s"]["p50"] > 0


@pytest.mark.parametrize(
    "path,body,status,needle",
    [
        ("/preference", {"prompt": "x"}, 422, "responses"),
        ("/preference", {"prompt": "x", "responses": ["a", "  "]}, 422, "responses[1]: empty text"),
        ("/preference", {"prompt": "x", "responses": ["a"] * 65}, 422, "expected 1 to 64 responses"),
        (
            "/preference",
            [{"prompt": "x", "responses": ["a", "b"]}, {"prompt": "", "responses": ["a"]}],
            422,
            "body[1].prompt: empty",
        ),
        ("/preference", {"prompt": "x", "responses": ["a" * 100_001]}, 422, "over 100000 characters"),
        ("/get_reward", {"query": ["abc"], "prompts": ["x", "y"]}, 422, "prompts: 2 texts for 1 queries"),
        ("/get_reward", {"query": ["abc"], "prompts": ["xyz"]}, 422, "prompts[0]: is not the start of query[0]"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(gpm_server, path, body, status, needle):
    code, out, _ = request(gpm_server.url + path, body)
    assert code == status and needle in json.dumps(out), out


def test_bad_json_and_oversized_bodies_are_refused(gpm_server):
    code, out, _ = request(gpm_server.url + "/preference", raw=b'{"prompt": "x", "responses": [')
    assert code == 422 and "json" in json.dumps(out).lower()
    code, out, _ = request(gpm_server.url + "/preference", raw=b" " * 200_001)
    assert code == 413 and "over 200000 bytes (--max-request-bytes)" in out["detail"]


def test_an_api_key_guards_every_endpoint_but_health(bt_server):
    body = groups(2)[0]
    assert request(bt_server.url + "/preference", body)[0] == 401
    assert request(bt_server.url + "/preference", body, {"authorization": "Bearer wrong"})[0] == 401
    assert request(bt_server.url + "/metrics")[0] == 401
    assert request(bt_server.url + "/preference", body, KEY)[0] == 200
    assert request(bt_server.url + "/health")[0] == 200


def test_a_full_queue_answers_503_with_retry_after(models):
    server = Server(models["gpm"], "--max-queue", "4", "--max-wait-ms", "500")
    try:
        answers: list = [None] * 12

        def client(i: int) -> None:
            answers[i] = request(server.url + "/preference", groups(2)[i % 4], timeout=60)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        codes = [a[0] for a in answers]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        refused = next(a for a in answers if a[0] == 503)
        assert refused[2].get("retry-after", refused[2].get("Retry-After")) == "1" and "overloaded" in refused[1]["detail"]
    finally:
        server.stop()


def test_sigterm_answers_the_requests_in_flight_then_exits(models):
    server = Server(models["gpm"], "--max-wait-ms", "300")
    answers: list = [None] * 8

    def client(i: int) -> None:
        try:
            answers[i] = request(server.url + "/preference", groups(3)[i % 4], timeout=60)[0]
        except OSError as e:  # a request that reached a closing server may be refused: cleanly, never hung
            answers[i] = type(e).__name__

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.15)
    code, err = server.stop()
    for t in threads:
        t.join(timeout=60)
    assert code in (0, 143) and "Traceback" not in err, err
    assert all(a is not None for a in answers) and answers.count(200) >= 1, answers
    assert all(
        a == 200 or a in ("URLError", "ConnectionRefusedError", "ConnectionResetError", "RemoteDisconnected") for a in answers
    )


def test_train_gpo_with_judge_url_gives_the_tables_of_a_local_judge(models, tmp_path, monkeypatch):
    """judge.url: policy and judge in different processes (here, on one machine) give the same K x K tables."""
    from gpmctl.config import load_gpo_recipe
    from gpmctl.train.gpo import train_gpo

    small = [
        "data.max_prompts=4",
        "data.max_eval_prompts=2",
        "policy.tiny.hidden_size=32",
        "policy.tiny.num_layers=1",
        "policy.tiny.intermediate_size=64",
        "policy.warmup.steps=10",
        "objective.iterations=1",
        "eval.samples=2",
        "train.batch_size=8",
        "judge.train_recipe=null",
    ]
    train_gpo(
        load_gpo_recipe("recipes/gpo_tiny.yaml", [f"output_dir={tmp_path / 'local'}", f"judge.model={models['gpm']}", *small])
    )
    server = Server(models["gpm"], "--api-key", "k3y")
    try:
        recipe = load_gpo_recipe(
            "recipes/gpo_tiny.yaml", [f"output_dir={tmp_path / 'remote'}", "judge.model=null", f"judge.url={server.url}", *small]
        )
        monkeypatch.setenv("GPMCTL_API_KEY", "k3y")  # judge.api_key_env's default
        train_gpo(recipe)
    finally:
        server.stop()
    tables = {}
    for name in ("local", "remote"):
        rows = [json.loads(line) for line in (tmp_path / name / "iter-1" / "scores.jsonl").read_text().splitlines()]
        tables[name] = [x for row in rows for table_row in row["logit"] for x in table_row]
    assert len(tables["local"]) == 4 * 25 and max(abs(x) for x in tables["local"]) > 1e-3
    assert tables["remote"] == pytest.approx(tables["local"], abs=1e-5)
    local = json.loads((tmp_path / "local" / "iter-1" / "metrics.json").read_text())
    remote = json.loads((tmp_path / "remote" / "iter-1" / "metrics.json").read_text())
    assert remote["win_rate_vs_initial"] == pytest.approx(local["win_rate_vs_initial"], abs=1e-5)
