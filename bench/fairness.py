"""Fair turns between tenants: one user's flood against another's chat, priorities, and
weights, with the fair scheduler beside first-come-first-served in the same run.

The 512-dim x 8-layer test model, one replica with 4 slots, API keys whose names are the
tenants. Measured through the whole path (HTTP -> facade -> broker -> worker); tokens are
counted from the usage the server reports.

- idle: B's first token, one short chat every half second, nobody else busy;
- flood: A keeps 32 requests of 256 tokens in flight while B chats as above; B's first
  token, and everybody's tokens per second;
- batch (fair only): the same, A's requests ``batch`` and B's interactive;
- weights (fair only): C (weight 3) and D (weight 1) both keep 16 requests in flight;
  the completion tokens each was served in the window;
- preempted (fair only): a greedy batch answer on a one-slot replica of the same model,
  preempted by B's chats, against the same request run alone on it. That replica has
  fixed threads, no prefix cache and no drafts: the thread count the engine tunes, cells
  reused from the cache and the batch shapes that drafts (planned by measured step times)
  give change the logits' last digits (and so, after a while, a random model's greedy
  text), with or without preemption.

Run: .venv/bin/python -m bench.fairness [--seconds 20] [--weight-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.batching import medium_model, stream
from tests.stack import Stack

KEYS = {
    "admin": ("admin-key-for-the-fairness-bench", "admin admin"),
    "a": ("a-key-for-the-fairness-bench-0001", "inference a"),
    "b": ("b-key-for-the-fairness-bench-0002", "inference b"),
    "c": ("c-key-for-the-fairness-bench-0003", "inference c weight=3"),
    "d": ("d-key-for-the-fairness-bench-0004", "inference d weight=1"),
}
CHAT = [{"role": "user", "content": "Say hello."}]
FLOOD = [{"role": "user", "content": "Tell me a long story about the sea."}]


def client(stack: Stack, who: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {KEYS[who][0]}"}
    limits = httpx.Limits(max_connections=64)
    return httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=900, limits=limits)


async def chats(stack: Stack, count: int) -> list[float]:
    """B's first-token times (s) for ``count`` short chats sent every half second."""
    async with client(stack, "b") as b:

        async def one(delay: float) -> float:
            await asyncio.sleep(delay)
            result, _ = await stream(b, "m", CHAT, 16)
            return result.ttft

        return list(await asyncio.gather(*(one(i * 0.5) for i in range(count))))


async def keep_busy(
    stack: Stack, who: str, depth: int, until: float, served: list[int], extra: dict[str, Any]
) -> None:
    """``depth`` requests of 256 tokens in flight for tenant ``who`` until ``until``;
    ``served`` gets the completion tokens of each that ended before then."""
    async with client(stack, who) as c:

        async def lane() -> None:
            while time.perf_counter() < until:
                body = {"model": "m", "messages": FLOOD, "max_tokens": 256, **extra}
                reply = await c.post("/v1/chat/completions", json=body)
                reply.raise_for_status()
                if time.perf_counter() < until:
                    served.append(reply.json()["usage"]["completion_tokens"])

        await asyncio.gather(*(lane() for _ in range(depth)))


async def flooded(stack: Stack, seconds: float, count: int, batch: bool) -> tuple[float, float]:
    """(B's p95 first token, A's tokens per second) while A floods for ``seconds``."""
    served: list[int] = []
    start = time.perf_counter()
    extra = {"priority": "batch"} if batch else {}
    flood = asyncio.create_task(keep_busy(stack, "a", 32, start + seconds, served, extra))
    await asyncio.sleep(2)  # A's queue fills
    ttfts = await chats(stack, count)
    await flood
    return p95(ttfts), sum(served) / seconds  # A's tokens served within the window


async def weighted(stack: Stack, seconds: float) -> float:
    """Completion tokens served to C (weight 3) over those served to D (weight 1)."""
    c_served: list[int] = []
    d_served: list[int] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(
        keep_busy(stack, "c", 16, until, c_served, {}),
        keep_busy(stack, "d", 16, until, d_served, {}),
    )
    return sum(c_served) / max(sum(d_served), 1)


async def preempted(stack: Stack, model: Path) -> tuple[bool, int]:
    """Whether a greedy batch answer preempted by chats is the one it gives alone, and how
    many times it was preempted."""
    stack.launch(
        model_name="x",
        model_path=str(model),
        n_ctx=1024,
        n_parallel=1,
        prefix_cache_tokens=0,
        n_threads=1,
        speculative="off",
    )
    body = {"model": "x", "messages": FLOOD, "max_tokens": 512, "temperature": 0}
    async with client(stack, "a") as a, client(stack, "b") as b:
        alone = (await a.post("/v1/chat/completions", json=body)).json()
        before = await preemptions(stack)
        body["priority"] = "batch"
        running = asyncio.create_task(a.post("/v1/chat/completions", json=body))
        await asyncio.sleep(0.5)
        for _ in range(5):
            await stream(b, "x", CHAT, 16)
            await asyncio.sleep(0.3)
        answer = (await running).json()
        text = answer["choices"][0]["message"]["content"]
        same = text == alone["choices"][0]["message"]["content"]
        return same, await preemptions(stack) - before


async def preemptions(stack: Stack) -> int:
    """The broker's preemption count, as the facade's /metrics shows it."""
    await asyncio.sleep(1.2)  # the facade reads the broker's counters once a second
    async with client(stack, "admin") as admin:
        text = (await admin.get("/metrics")).text
    line = next(li for li in text.splitlines() if li.startswith("xb_broker_preemptions_total"))
    return int(float(line.split()[1]))


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def measure(
    stack: Stack, model: Path, fair: bool, args: argparse.Namespace
) -> dict[str, float]:
    figures: dict[str, float] = {}
    await chats(stack, 4)  # warm up
    figures["idle"] = p95(await chats(stack, args.chats))
    figures["flood"], figures["rate"] = await flooded(stack, args.seconds, args.chats, False)
    if fair:
        figures["batch"], _ = await flooded(stack, args.seconds, args.chats, True)
        figures["weights"] = await weighted(stack, args.weight_seconds)
        same, count = await preempted(stack, model)
        figures["identical"], figures["preemptions"] = float(same), float(count)
    return figures


def run(model: Path, scheduler: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        keys.write_text("".join(f"{key} {rest}\n" for key, rest in KEYS.values()))
        keys.chmod(0o600)
        stack = Stack(
            home=Path(tmp) / "home",
            model_dirs=[model.parent],
            broker_args=["--api-keys-file", str(keys), "--scheduler", scheduler],
            api_key=KEYS["admin"][0],
        )
        with stack.running():
            stack.launch(model_name="m", model_path=str(model), n_ctx=1024, n_parallel=4)
            return asyncio.run(measure(stack, model, scheduler == "fair", args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="each flood's window")
    parser.add_argument("--weight-seconds", type=float, default=60)
    parser.add_argument("--chats", type=int, default=12, help="B's chats a measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = medium_model(Path(tmp))
        fair = run(model, "fair", args)
        fifo = run(model, "fifo", args)
    ms = {k: v * 1000 for k, v in fair.items() if k not in ("rate", "weights")}
    print(
        f"B's first token, p95: idle {ms['idle']:.0f} ms (fair run), "
        f"{fifo['idle'] * 1000:.0f} ms (fifo run)"
    )
    print(
        f"  A floods, same priority: fair {ms['flood']:.0f} ms, fifo "
        f"{fifo['flood'] * 1000:.0f} ms: {fifo['flood'] / fair['flood']:.1f}x lower "
        "(target >= 10x)"
    )
    print(
        f"  A's flood as batch: {ms['batch']:.0f} ms, {fair['batch'] / fair['idle']:.2f}x "
        "idle (target <= 3x)"
    )
    print(
        f"A's tokens/s while flooding: fair {fair['rate']:.0f}, fifo {fifo['rate']:.0f}: "
        f"{fair['rate'] / fifo['rate']:.2f} (target >= 0.95)"
    )
    print(
        f"served tokens, weight 3 over weight 1, {args.weight_seconds:.0f} s: "
        f"{fair['weights']:.2f} (target 3.0 +- 0.3)"
    )
    same = "identical to" if fair["identical"] else "DIFFERENT from"
    print(
        f"a greedy batch answer preempted {fair['preemptions']:.0f} times by chats: "
        f"{same} the answer alone"
    )


if __name__ == "__main__":
    main()
