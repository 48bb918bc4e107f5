"""The ``xb`` and ``xb-broker`` commands, run as a user runs them, against real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import zmq

from tests.stack import Stack, free_port, kill_tree, wait_until
from xb.core import protocol as p
from xb.core.settings import MAX_TOKENS_HELP
from xb.core.units import GIB

pytestmark = pytest.mark.e2e


def xb(
    stack: Stack, *args: str, stdin: str | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xb.client", *args, "--endpoint", stack.url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**stack.env(), "COLUMNS": str(columns)},  # 200: each table row on one line
    )


def test_launch_list_chat_workers_terminate(module_stack: Stack, tiny_model: Path) -> None:
    launched = xb(
        module_stack, "launch", "tiny", "--model-path", str(tiny_model), "--uid", "cli", "--json"
    )
    assert launched.returncode == 0, launched.stderr
    assert json.loads(launched.stdout) == {"model_uid": "cli"}

    listed = xb(module_stack, "list", "--json")
    assert [m["id"] for m in json.loads(listed.stdout)] == ["cli"]
    table = xb(module_stack, "list")
    assert "cli" in table.stdout and "1/1" in table.stdout

    workers = json.loads(xb(module_stack, "workers", "--json").stdout)
    assert len(workers) == 1 and workers[0]["replicas"][0]["model_uid"] == "cli"
    shown = xb(module_stack, "workers").stdout
    assert "cli (ready)" in shown
    assert workers[0]["memory"]["gpu_total"] or "GPU" not in shown.split()  # none: no column

    one_shot = xb(module_stack, "chat", "cli", "-m", "hello", "--max-tokens", "8")
    assert one_shot.returncode == 0, one_shot.stderr
    assert one_shot.stdout.strip()
    batch = xb(module_stack, "chat", "cli", "-m", "hello", "-n", "8", "--priority", "batch")
    assert batch.returncode == 0, batch.stderr
    urgent = xb(module_stack, "chat", "cli", "-m", "hello", "--priority", "urgent")
    assert urgent.returncode == 2 and "'interactive', 'batch'" in urgent.stderr, urgent.stderr

    session = xb(module_stack, "chat", "cli", "--max-tokens", "4", stdin="first\nsecond\n\n")
    assert session.returncode == 0, session.stderr
    assert session.stdout.count("you>") == 3  # two questions, then the empty line ends it

    assert xb(module_stack, "terminate", "--model-uid", "cli").returncode == 0
    assert json.loads(xb(module_stack, "list", "--json").stdout) == []


def test_list_all_keeps_every_name_whole_in_80_columns(module_stack: Stack) -> None:
    names = [
        f["model_name"] for f in httpx.get(module_stack.url + "/v1/model_registrations/LLM").json()
    ]
    listed = xb(module_stack, "list", "--all", columns=80)
    assert listed.returncode == 0, listed.stderr
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    words = set(listed.stdout.split())
    assert all(name in words for name in [*names, "nomic-embed-text-v1.5"]), listed.stdout
    assert "…" not in listed.stdout


@pytest.mark.unit
def test_each_short_flag_means_one_thing_in_every_command() -> None:
    import typer.main

    from xb.serve.broker import app as broker
    from xb.serve.cli import build
    from xb.tui.cli import app as dashboard
    from xb.worker.cli import app as worker

    meanings: dict[str, set[str]] = {}
    max_tokens_help: set[str] = set()

    def walk(command: Any) -> None:
        for sub in getattr(command, "commands", {}).values():  # a group's commands
            walk(sub)
        for param in command.params:
            long = next((o for o in param.opts if o.startswith("--")), param.name or "")
            for short in [o for o in param.opts if len(o) == 2]:
                meanings.setdefault(short, set()).add(long)
            if long == "--max-tokens":
                max_tokens_help.add(f"{param.help} default={param.default}")

    for app in (build(), broker, worker, dashboard):
        walk(typer.main.get_command(app))
    assert {s: m for s, m in meanings.items() if len(m) > 1} == {}
    assert meanings["-p"] == {"--prompt"} and meanings["-n"] == {"--max-tokens"}
    # xb chat and xb generate share one default, the API's, and say so.
    (help_text,) = max_tokens_help
    assert help_text == f"{MAX_TOKENS_HELP} default=None"


def test_errors_are_clear_and_exit_nonzero(module_stack: Stack) -> None:
    missing = xb(module_stack, "terminate", "ghost")
    assert missing.returncode == 1
    assert "ghost" in missing.stderr and "404" in missing.stderr
    refused = xb(module_stack, "chat", "ghost", "-m", "hi")
    assert refused.returncode == 1 and "not running" in refused.stderr


def test_unreachable_endpoint() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "xb.client",
            "list",
            "--endpoint",
            f"http://127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot reach xb" in result.stderr


def test_one_command_serves_the_demo_model(tmp_path: Path) -> None:
    """The README's main job: xb-broker --local --launch xb-demo, on a fresh home, offline."""
    api = free_port()
    env = {**os.environ, "XB_HOME": str(tmp_path)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xb.broker",
            "--local",
            "--launch",
            "xb-demo",
            "--port",
            str(free_port()),
            "--api-port",
            str(api),
        ],
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{api}"

        def demo_ready() -> bool:
            response = httpx.get(url + "/v1/models", timeout=2)
            if response.status_code == 503:  # its broker thread has not answered yet
                return False
            models = response.json()["data"]
            return any(
                m["id"] == "xb-demo" and m["replicas"][0]["state"] == "ready" for m in models
            )

        wait_until(demo_ready, timeout=60)
        assert (tmp_path / "models" / "xb-demo.gguf").exists()
        with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            reply = client.chat.completions.create(
                model="xb-demo", messages=[{"role": "user", "content": "hello"}], max_tokens=16
            )
        assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        kill_tree(process)


def test_generate_scale_and_a_failed_launch(module_stack: Stack, tiny_model: Path) -> None:
    assert (
        xb(module_stack, "launch", "tiny", "--model-path", str(tiny_model), "-u", "g").returncode
        == 0
    )
    generated = xb(module_stack, "generate", "g", "-p", "Once upon", "-n", "6")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip()
    scaled = xb(module_stack, "scale", "g", "2")
    assert scaled.returncode == 0 and "2 replicas" in scaled.stdout
    failed = xb(module_stack, "launch", "broken", "--model-path", "/nowhere/x.gguf")
    assert failed.returncode == 1
    assert "failed to load" in failed.stderr and "does not exist" in failed.stderr
    assert "broken" not in json.loads(xb(module_stack, "list", "--json").stdout)
    # The draft options reach the launch: a file's quantization is not for choosing.
    drafted = ["--model-path", str(tiny_model), "--speculative", "draft", "--draft-tokens", "4"]
    picked = ["--draft-model", str(tiny_model), "--draft-quantization", "Q4_1"]
    refused = xb(module_stack, "launch", "d", *drafted, *picked)
    assert refused.returncode == 1, refused.stderr
    assert "draft_quantization picks from a registry family" in refused.stderr, refused.stderr
    by_size = ["--draft-model", "x.gguf", "--draft-size", "1"]
    sized = xb(module_stack, "launch", "d", *drafted, *by_size)
    assert sized.returncode == 1 and "draft_model_size_in_billions" in sized.stderr, sized.stderr
    assert xb(module_stack, "terminate", "g").returncode == 0


def test_a_key_that_begins_with_a_dash_is_allowed(tmp_path: Path) -> None:
    """Z85 keys may begin with "-": one pasted as it is must not read as an option."""
    public = "-" + zmq.curve_keypair()[0].decode()[1:]
    for args in (["allow", public, "--name", "a"], ["allow", "--name", "b", public]):
        done = subprocess.run(
            [sys.executable, "-m", "xb.client", "keys", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "XB_HOME": str(tmp_path)},
        )
        assert done.returncode == 0, done.stderr
    allowed = sorted(p.read_text().strip() for p in (tmp_path / "keys" / "allowed").iterdir())
    assert all(public in text for text in allowed) and len(allowed) == 2


def test_workers_shows_gpu_memory_once_a_worker_has_a_gpu(
    make_stack: Callable[..., Stack],
) -> None:
    """A launch that offloads is placed by free GPU memory, so the table shows it. The
    workers here are peers speaking the protocol: this machine need not have a GPU."""
    stack = make_stack(0)
    ctx = zmq.Context()
    gpu_box, cpu_box = stack.peer(ctx), stack.peer(ctx)
    try:
        gpu_memory = p.Memory(64 * GIB, 60 * GIB, gpu_total=80 * GIB, gpu_free=40 * GIB)
        gpu_box.send_multipart(p.encode(p.Ready("gpu-box", "h1", 1, gpu_memory, 1)))
        cpu_box.send_multipart(p.encode(p.Ready("cpu-box", "h2", 2, p.Memory(8 * GIB, GIB), 1)))

        def both() -> str:
            for sock in (gpu_box, cpu_box):  # alive: a worker silent for 3 s is dropped
                sock.send_multipart(p.encode(p.Heartbeat()))
            shown = xb(stack, "workers")
            return shown.stdout if "gpu-box" in shown.stdout and "cpu-box" in shown.stdout else ""

        rows = {line.split()[0]: line.split() for line in wait_until(both).splitlines() if line}
        assert "GPU" in rows["Worker"]
        # worker, host, RAM free of total, GPU free of total, models
        gpu_row = "gpu-box h1 60.00 GiB of 64.00 GiB 40.00 GiB of 80.00 GiB -"
        assert " ".join(rows["gpu-box"]).startswith(gpu_row)
        assert " ".join(rows["cpu-box"]).startswith("cpu-box h2 1.00 GiB of 8.00 GiB - -")
    finally:
        for sock in (gpu_box, cpu_box):
            sock.close(0)
        ctx.term()
