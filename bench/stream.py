"""Single-stream tokens per second and time to first token: xb against in-process llama.cpp.

Both sides run the same generated model (512 dims, 8 layers, f16, no end-of-sequence so
every answer is exactly --tokens long) with the same sampling settings, in the same run.
xb is measured through the whole path: openai-style HTTP streaming -> facade -> broker ->
worker -> model process. Run: .venv/bin/python -m bench.stream
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.stack import Stack
from xb.core.demo_model import DemoModelConfig, write_demo_model

MESSAGES = [{"role": "user", "content": "Tell me a long story about the sea."}]
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "seed": 1}


def in_process(path: Path, tokens: int) -> tuple[float, float]:
    """(seconds to first token, tokens per second) with llama-cpp-python in this process."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, verbose=False)
    start = time.perf_counter()
    first = 0.0
    count = 0
    for chunk in llm.create_chat_completion(
        messages=MESSAGES, max_tokens=tokens, stream=True, **SAMPLING
    ):
        if chunk["choices"][0]["delta"].get("content"):
            count += 1
            if not first:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    del llm
    assert count >= tokens * 0.9, f"in-process run produced {count} chunks"
    return first, tokens / total


def same_loop(path: Path, tokens: int) -> tuple[float, float]:
    """The same, with xb's own llama.cpp engine in this process: what transport costs."""
    from xb.core.protocol import ChatMessage, GenerateParams, ModelSpec
    from xb.worker.backend import Piece
    from xb.worker.cores import default_budget, usable_cores
    from xb.worker.llama_engine import BatchEngine
    from xb.worker.llama_model import LlamaModel

    spec = ModelSpec("bench", "bench", str(path), n_ctx=2048)
    engine = BatchEngine(LlamaModel(path, spec, default_budget(usable_cores())), 2048, 4)
    params = GenerateParams(
        messages=[ChatMessage(**m) for m in MESSAGES], max_tokens=tokens, **SAMPLING
    )
    start = time.perf_counter()
    first = 0.0
    engine.add("bench", "chat", params)
    while engine.busy:
        for _, item in engine.step():
            if not first and isinstance(item, Piece) and item.text:
                first = time.perf_counter() - start
    total = time.perf_counter() - start
    engine.close()
    return first, tokens / total


def through_xb(client: httpx.Client, tokens: int) -> tuple[float, float]:
    """(seconds to first token, tokens per second) streamed over HTTP from xb."""
    body = {
        "model": "bench",
        "messages": MESSAGES,
        "max_tokens": tokens,
        "stream": True,
        **SAMPLING,
    }
    start = time.perf_counter()
    first = 0.0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not first and '"content"' in line:
                first = time.perf_counter() - start
            if line == "data: [DONE]":
                break
    total = time.perf_counter() - start
    return first, tokens / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = write_demo_model(
            Path(tmp) / "bench.gguf",
            DemoModelConfig(
                n_embd=512, n_layer=8, n_head=8, n_ff=1408, eos_logit=-1000.0, f16=True
            ),
        )
        stack = Stack(home=Path(tmp) / "home", model_dirs=[Path(tmp)])
        try:
            stack.start()
            stack.add_worker()
            stack.launch(model_name="bench", model_path=str(model), n_ctx=2048)
            with httpx.Client(base_url=stack.url, timeout=300) as client:
                through_xb(client, 16)  # warm up
                in_process(model, 16)
                base, loop, xb = [], [], []
                for _ in range(args.runs):  # interleaved, so drift hits every side alike
                    base.append(in_process(model, args.tokens))
                    loop.append(same_loop(model, args.tokens))
                    xb.append(through_xb(client, args.tokens))
        finally:
            stack.stop()

    def median(values: list[tuple[float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    ttft = [median(runs, 0) * 1000 for runs in (base, loop, xb)]
    tps = [median(runs, 1) for runs in (base, loop, xb)]
    print(
        f"model: 512 dims, 8 layers, f16; {args.tokens} tokens per stream, "
        f"median of {args.runs} runs"
    )
    print(f"{'':24}{'llama-cpp-python':>18}{'xb backend':>12}{'xb via HTTP':>13}")
    print(f"{'tokens per second':24}{tps[0]:18.0f}{tps[1]:12.0f}{tps[2]:13.0f}")
    print(f"{'time to first token ms':24}{ttft[0]:18.1f}{ttft[1]:12.1f}{ttft[2]:13.1f}")
    for name, i in (("create_chat_completion", 0), ("the same loop in-process", 1)):
        print(
            f"against {name}: rate {tps[2] / tps[i]:.1%} (target >= 90%), "
            f"first token {ttft[2] - ttft[i]:+.1f} ms (target < 10 ms)"
        )


if __name__ == "__main__":
    main()
