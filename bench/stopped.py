"""A follow-up after a stopped stream: time to its first token when the client read the
answer to the end, when it closed the stream after a few tokens (a chat UI's Stop button),
and with the prefix cache off, on a conversation of about 2,700 tokens.

Measured through the whole path on the 512-dim, 8-layer generated model (bench/batching.py's
``medium``), each case on a conversation of its own, over a few rounds.
Run: .venv/bin/python -m bench.stopped [--runs 3] [--tokens 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import httpx

from bench.batching import history_words, medium_model, messages, stream
from tests.stack import Stack

SENT_BEFORE_STOP = 24  # content chunks the client reads before it closes the stream


async def chat(
    client: httpx.AsyncClient, model: str, history: list[dict[str, str]], stop_after: int = 0
) -> tuple[float, str, tuple[int, int]]:
    """(TTFT in seconds, the text received, (prompt, cached) tokens) of one streamed chat;
    with ``stop_after``, the client closes the stream after that many content chunks."""
    result, text = await stream(client, model, history, 1000 if stop_after else 48, stop_after)
    return result.ttft, text, (result.prompt, result.cached)


async def follow_up(
    stack: Stack, client: httpx.AsyncClient, model: str, i: int, words: int, stop: bool
) -> tuple[float, tuple[int, int]]:
    """(TTFT, (prompt, cached) tokens) of the follow-up to conversation ``i``'s first answer."""
    # A conversation of its own: it shares no cached prefix with the others.
    first = messages(i, words)[0]
    history = [{"role": "user", "content": f"Conversation {i}. {first['content']}"}]
    _, answer, _ = await chat(client, model, history, SENT_BEFORE_STOP if stop else 0)
    while stack.in_flight():  # a stopped answer's cancel reaches the replica first
        await asyncio.sleep(0.01)
    history += [{"role": "assistant", "content": answer}, *messages(i + 1)]
    ttft, _, prompt = await chat(client, model, history)
    return ttft, prompt


async def measure(
    stack: Stack, runs: int, words: int
) -> dict[str, list[tuple[float, tuple[int, int]]]]:
    cases = {"completed": ("cache", False), "stopped": ("cache", True), "cache off": ("off", False)}
    results: dict[str, list[tuple[float, tuple[int, int]]]] = {name: [] for name in cases}
    async with httpx.AsyncClient(base_url=stack.url, timeout=600) as client:
        await chat(client, "cache", messages(3))  # warm up
        for run in range(runs):
            for n, (name, (model, stop)) in enumerate(cases.items()):
                i = run * len(cases) + n
                results[name].append(await follow_up(stack, client, model, i, words, stop))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    # The padding's size is estimated from one phrase: 3,000 makes a prompt of about 2,700.
    parser.add_argument("--tokens", type=int, default=3000, help="the first message, roughly")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = medium_model(Path(tmp))
        words = history_words(path, args.tokens)
        stack = Stack(home=Path(tmp) / "home", model_dirs=[path.parent])
        try:
            stack.start()
            stack.add_worker()
            for uid, options in (("cache", {}), ("off", {"prefix_cache_tokens": 0})):
                stack.launch(
                    model_name=uid, model_uid=uid, model_path=str(path), n_ctx=4096, **options
                )
            results = asyncio.run(measure(stack, args.runs, words))
        finally:
            stack.stop()
    print(f"\nfollow-up TTFT, medians of {args.runs} runs")
    print("| first answer | follow-up TTFT | follow-up prompt tokens | of them cached |")
    print("|---|---|---|---|")
    for name, values in results.items():
        ttft = statistics.median(t for t, _ in values) * 1000
        prompt = statistics.median(p for _, (p, _) in values)
        cached = statistics.median(c for _, (_, c) in values)
        print(f"| {name} | {ttft:.0f} ms | {prompt:.0f} | {cached:.0f} |")


if __name__ == "__main__":
    main()
