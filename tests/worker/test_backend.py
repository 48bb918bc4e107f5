"""Stop strings, token accounting, batching and the prefix cache, on the real llama.cpp
engine with a generated model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from xb.core.protocol import ChatMessage, GenerateParams, ModelSpec, Tool
from xb.worker.backend import BackendError, Done, Piece, StopText
from xb.worker.engine import Engine, Failed
from xb.worker.llama_engine import PREFILL_CHUNK, BatchEngine
from xb.worker.llama_model import LlamaModel
from xb.worker.prefix_cache import Claim, PrefixCache, Transcript


@pytest.mark.unit
def test_stop_text_holds_back_a_possible_stop_prefix() -> None:
    text = StopText(["END"])
    assert text.feed(b"hello E") == "hello "
    assert text.feed(b"N") == ""
    assert text.feed(b"D and more") == ""
    assert text.stopped
    assert text.flush() == ""


@pytest.mark.unit
def test_stop_text_releases_a_false_alarm() -> None:
    text = StopText(["END"])
    assert text.feed(b"E") == ""
    assert text.feed(b"X") == "EX"
    assert text.flush() == ""
    assert not text.stopped


@pytest.mark.unit
def test_stop_text_joins_split_utf8() -> None:
    text = StopText([])
    data = "é".encode()
    assert text.feed(data[:1]) == ""
    assert text.feed(data[1:]) == "é"


@pytest.mark.unit
def test_prefix_cache_keeps_running_sequences_in_the_lowest_slots() -> None:
    a, b, c = [1] * 40, [2] * 40, [3] * 40  # long enough to be worth moving aside
    cache = PrefixCache(n_slots=4, budget=200)
    assert cache.claim(a) == Claim(0, 0)  # nothing kept yet: the lowest slot
    assert cache.claim(b) == Claim(1, 0)
    assert cache.release(0, a) == [] and cache.release(1, b) == []
    assert cache.tokens == 80
    # The lowest idle slot holds the longest prefix: used where it is.
    assert cache.claim([*a, 9]) == Claim(0, 40)
    assert cache.release(0, [*a, 9, 9]) == []
    # The prefix is in slot 1, slot 0 is the lowest idle one: the cells are copied into
    # slot 0, and what slot 0 kept moves to an empty slot (the highest) first.
    assert cache.claim([*b, 5]) == Claim(0, 40, source=1, stash=3)
    assert cache.kept() == {1: b, 3: [*a, 9, 9]}
    assert cache.tokens == 82
    # A few tokens are not worth a copy: they are dropped instead of moved.
    assert cache.release(0, [7, 7]) == []
    assert cache.claim(c) == Claim(0, 0)
    assert cache.tokens == 82
    # Over budget: the least recently used entries go.
    assert cache.release(0, [4] * 150) == [3]
    assert cache.tokens == 190 and cache.idle == 4
    assert cache.claim([4] * 151) == Claim(0, 150)
    assert cache.release(0, list(range(201))) == [0]  # bigger than the budget: not kept


@pytest.mark.unit
def test_a_transcript_finds_the_whole_tokens_of_its_answer_that_a_text_quotes() -> None:
    chat = Transcript("P:", [1, 2], [10, 11, 12, 13], [b"ab", b"c", b"\xc3", b"\xa9"])
    assert chat.quoted("P:abc<end>") == ([1, 2, 10, 11], "<end>")
    assert chat.quoted("P:a<end>") == ([1, 2], "a<end>")  # not a whole token: not quoted
    assert chat.quoted("P:abcé!") == ([1, 2, 10, 11, 12, 13], "!")
    assert chat.quoted("P:abc") == ([1, 2, 10, 11], "")
    assert chat.quoted("Q:abc") is None
    # A quote that ends inside a character has no rest to read.
    assert (
        Transcript("P", [1], [10], [b"\xc3"]).quoted("P\xc3\xa9".encode("latin-1").decode()) is None
    )


N_CTX = 512


@pytest.fixture
def engine(tiny_model: Path) -> Iterator[BatchEngine]:
    """Four slots with nothing cached yet: reusing a prefix whose cells were computed in
    another batch may change the last digits of the logits, which these tests compare."""
    spec = ModelSpec("t", "t", str(tiny_model), n_ctx=N_CTX)
    engine = BatchEngine(LlamaModel(tiny_model, spec, threads=1), n_ctx=N_CTX, n_parallel=4)
    yield engine
    engine.close()


def run(engine: Engine, requests: dict[str, tuple[str, GenerateParams]]) -> dict[str, list[object]]:
    """Add every request, step until all end; each request's items in order."""
    items: dict[str, list[object]] = {rid: [] for rid in requests}
    for rid, (kind, params) in requests.items():
        engine.add(rid, kind, params)
    steps = 0
    while engine.busy:
        for rid, item in engine.step():
            items[rid].append(item)
        steps += 1
        assert steps < 10_000
    return items


def tokens(items: list[object]) -> list[str]:
    assert isinstance(items[-1], Done), items[-1]
    return [i.text for i in items if isinstance(i, Piece)]


def greedy(words: str, n: int = 40) -> GenerateParams:
    return GenerateParams(prompt=words, max_tokens=n, temperature=0)


@pytest.mark.integration
def test_usage_counts_the_tokens_generated(engine: BatchEngine) -> None:
    params = GenerateParams(prompt="abc", max_tokens=9, seed=1)
    items = run(engine, {"r": ("completion", params)})["r"]
    done = items[-1]
    assert isinstance(done, Done)
    assert done.usage.completion_tokens == len(tokens(items)) <= 9
    n_prompt = len(engine._model.llm.tokenize(b"abc", add_bos=True))
    assert done.usage.prompt_tokens == n_prompt


@pytest.mark.integration
def test_chat_uses_the_template_from_the_file(engine: BatchEngine) -> None:
    params = GenerateParams(messages=[ChatMessage("user", "hi")], max_tokens=3)
    done = run(engine, {"r": ("chat", params)})["r"][-1]
    assert isinstance(done, Done)
    # <s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n, with \n as byte tokens
    assert done.usage.prompt_tokens >= 8
    assert "chat" in engine.abilities


@pytest.mark.integration
def test_prompt_over_the_context_is_refused(engine: BatchEngine) -> None:
    with pytest.raises(BackendError, match="context"):
        engine.add("r", "completion", GenerateParams(prompt="word " * 800))


@pytest.mark.integration
def test_a_greedy_answer_is_the_same_alone_and_batched_with_three_others(
    engine: BatchEngine,
) -> None:
    engine._cells.cache.budget = 0  # every run computes its whole prompt
    alone = tokens(run(engine, {"a": ("completion", greedy("the sea"))})["a"])
    batched = run(
        engine,
        {
            "x": ("completion", greedy("once upon a time", 60)),
            "a": ("completion", greedy("the sea")),
            "y": ("completion", greedy("ba ce di", 25)),
            "z": ("completion", greedy("lo", 80)),
        },
    )
    assert len(alone) == 40
    assert tokens(batched["a"]) == alone
    assert len(tokens(batched["z"])) == 80


@pytest.mark.integration
def test_a_seeded_answer_is_the_same_alone_and_batched(engine: BatchEngine) -> None:
    engine._cells.cache.budget = 0
    seeded = GenerateParams(prompt="ma ne", max_tokens=30, temperature=1.0, seed=7)
    alone = tokens(run(engine, {"s": ("completion", seeded)})["s"])
    other = GenerateParams(prompt="ma ne", max_tokens=30, temperature=1.0, seed=8)
    batched = run(engine, {"o": ("completion", other), "s": ("completion", seeded)})
    assert tokens(batched["s"]) == alone
    assert tokens(batched["o"]) != alone


@pytest.mark.integration
def test_more_requests_than_slots_wait_their_turn(engine: BatchEngine) -> None:
    requests = {f"r{i}": ("completion", greedy(f"ka {i}", 12)) for i in range(9)}
    items = run(engine, requests)
    assert all(len(tokens(items[rid])) == 12 for rid in requests)


@pytest.mark.integration
def test_a_follow_up_reads_only_what_the_cache_lacks(engine: BatchEngine) -> None:
    history = [ChatMessage("user", "tell me about " + "the sea " * 30)]
    first = run(engine, {"1": ("chat", GenerateParams(messages=history, max_tokens=20))})["1"]
    answer = "".join(tokens(first))
    done = first[-1]
    assert isinstance(done, Done)
    follow = [*history, ChatMessage("assistant", answer), ChatMessage("user", "and then?")]
    second = run(engine, {"2": ("chat", GenerateParams(messages=follow, max_tokens=5))})["2"][-1]
    assert isinstance(second, Done)
    # Everything of the first conversation that the template renders the same way is reused.
    assert second.usage.cached_tokens >= done.usage.prompt_tokens
    assert second.usage.cached_tokens < second.usage.prompt_tokens


@pytest.mark.integration
def test_a_follow_up_sent_the_moment_its_answer_ends_reuses_it_all(engine: BatchEngine) -> None:
    # An answer cut at max_tokens takes one more step to put its last token in the cache;
    # a follow-up that arrives meanwhile waits that step rather than computing it again.
    # Seeded: an answer that starts with a space (1 seed in 60) does not come back as the
    # same tokens through the chat template, and then rightly reuses only the prompt's.
    history = [ChatMessage("user", "tell me about " + "the sea " * 30)]
    engine.add("1", "chat", GenerateParams(messages=history, max_tokens=20, seed=1))
    first: list[object] = []
    while not first or not isinstance(first[-1], Done):
        first += [item for _, item in engine.step()]
    done = first[-1]
    assert isinstance(done, Done) and done.finish_reason == "length"
    assert any(s.closing for s in engine._running)  # the closing step is still to come
    follow = [*history, ChatMessage("assistant", "".join(tokens(first))), ChatMessage("user", "?")]
    second = run(engine, {"2": ("chat", GenerateParams(messages=follow, max_tokens=5))})["2"][-1]
    assert isinstance(second, Done)
    assert second.usage.cached_tokens >= done.usage.prompt_tokens + 19


@pytest.mark.integration
def test_cancel_frees_the_sequence_at_once(engine: BatchEngine) -> None:
    engine.add("long", "completion", greedy("go", 200))
    engine.add("short", "completion", greedy("go on", 5))
    for _ in range(3):
        engine.step()
    assert engine.cancel("long")
    assert not engine.cancel("long")
    assert all(s.request_id != "long" for s in engine._running)
    rest = []
    while engine.busy:
        rest += engine.step()
    assert {rid for rid, _ in rest} == {"short"}
    assert not any(isinstance(item, Failed) for _, item in rest)


@pytest.mark.integration
@pytest.mark.parametrize("quoted", [8, 12], ids=["part-of-what-was-sent", "all-that-was-sent"])
def test_a_cancelled_answer_stays_cached_for_a_follow_up_that_quotes_it(
    engine: BatchEngine, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, quoted: int
) -> None:
    """A client that goes away after 12 tokens were generated has received 12 or fewer (the
    runner coalesces tokens before it sends them); the 12th was sampled and sent before its
    cells were computed. The follow-up reuses exactly the cells of the tokens it quotes, and
    answers as it would with the cache off."""
    history = [ChatMessage("user", "tell me about " + "the sea " * 30)]
    engine.add("1", "chat", GenerateParams(messages=history, max_tokens=200, temperature=0))
    first = engine._requests["1"]
    while first.produced < 12:
        engine.step()
    answer = [*first.kv[len(first.prompt) :], first.next_token]
    slot, n_prompt = first.seq_id, len(first.prompt)
    assert len(answer) == 12
    assert engine.cancel("1") and not engine.cancel("1")
    assert engine._cells.cache.kept() == {slot: first.kv}  # its prompt and 11 decoded tokens
    text = b"".join(engine._model.piece(t) for t in answer[:quoted]).decode()
    follow = [*history, ChatMessage("assistant", text), ChatMessage("user", "and then?")]
    params = GenerateParams(messages=follow, max_tokens=20, temperature=0)
    engine.add("2", "chat", params)
    prompt = list(engine._requests["2"].prompt)
    assert prompt[: n_prompt + quoted] == first.prompt + answer[:quoted]
    pieces: list[object] = []
    while engine.busy:
        pieces += [item for _, item in engine.step()]
    done = pieces[-1]
    assert isinstance(done, Done)
    assert done.usage.cached_tokens == n_prompt + min(quoted, 11)

    # The same tokens with nothing cached: the same answer. (The follow-up takes the answer's
    # tokens as generated, which its text need not tokenize back into.)
    spec = ModelSpec("t", "t", str(tiny_model), n_ctx=N_CTX)
    model = LlamaModel(tiny_model, spec, threads=1)
    plain = BatchEngine(model, n_ctx=N_CTX, n_parallel=4, cache_tokens=0)
    rendered = model.prompt_tokens
    monkeypatch.setattr(model, "prompt_tokens", lambda *a: (prompt, *rendered(*a)[1:]))
    try:
        alone = run(plain, {"2": ("chat", params)})["2"]
    finally:
        plain.close()
    reference = alone[-1]
    assert isinstance(reference, Done) and reference.usage.cached_tokens == 0
    assert tokens(pieces) == tokens(alone)


def long_prompt_beside_a_stream(engine: BatchEngine, tokens: int) -> None:
    """Request "running" generating its ``tokens`` tokens, and "long" (a prompt of several
    chunks) added beside it."""
    engine.add("running", "completion", greedy("go", tokens))
    while not any(s.next_token is not None for s in engine._running):
        engine.step()
    engine.add("long", "completion", greedy("word " * 110, 3))


@pytest.mark.integration
def test_a_prompt_cancelled_while_it_is_read_keeps_what_was_read(engine: BatchEngine) -> None:
    long_prompt_beside_a_stream(engine, 30)
    engine.step()  # admits it, and reads its first chunk
    engine.step()
    long = engine._requests["long"]
    read = list(long.kv)
    assert 0 < len(read) < len(long.prompt)
    assert engine.cancel("long")
    while engine.busy:
        engine.step()
    assert read in engine._cells.cache.kept().values()
    again = run(engine, {"again": ("completion", greedy("word " * 110, 3))})["again"][-1]
    assert isinstance(again, Done) and again.usage.cached_tokens == len(read)


@pytest.mark.integration
def test_a_long_prompt_joins_in_chunks_while_others_generate(engine: BatchEngine) -> None:
    long_prompt_beside_a_stream(engine, 60)
    assert len(engine._waiting[0].prompt) > 2 * PREFILL_CHUNK
    engine.step()  # admits it
    long = next(s for s in engine._running if s.request_id == "long")
    steps = 1
    while len(long.kv) < len(long.prompt):
        fed = len(long.kv)
        engine.step()
        steps += 1
        # The generating sequence waits for one chunk at most.
        assert len(long.kv) - fed <= PREFILL_CHUNK
    assert steps >= 3
    while engine.busy:
        engine.step()


def comparable(runs: dict[str, list[object]], near: bool = False) -> dict[str, list[object]]:
    """Items without what legitimately differs: tool call ids are random, and batched
    logits differ from lone ones in the last digits (``near``: compare within 1e-3)."""

    def number(value: float) -> object:
        return pytest.approx(value, abs=1e-3) if near else value

    def plain(item: object) -> object:
        if isinstance(item, Piece) and item.logprob is not None:
            top = [(t.token, number(t.logprob)) for t in item.logprob.top]
            return (item.text, item.logprob.token, number(item.logprob.logprob), top)
        if isinstance(item, Done):
            calls = [(c.name, c.arguments) for c in item.tool_calls]
            return (item.finish_reason, item.usage, item.text, calls)
        return item

    return {rid: [plain(i) for i in items] for rid, items in runs.items()}


@pytest.mark.integration
def test_every_sampling_feature_is_per_sequence(engine: BatchEngine) -> None:
    """Logprobs, logit bias, penalties, grammars, tools and stop strings: the same answers
    when six requests share every step as when each runs alone."""
    weather = Tool(
        "get_weather",
        parameters='{"type": "object", "properties": {"city": {"type": "string", '
        '"maxLength": 8}}, "required": ["city"]}',
    )
    hi = [ChatMessage("user", "hello")]
    requests = {
        "logprobs": (
            "chat",
            GenerateParams(messages=hi, max_tokens=20, seed=1, logprobs=True, top_logprobs=3),
        ),
        "bias": (
            "chat",
            GenerateParams(messages=hi, max_tokens=20, temperature=0, logit_bias={300: 4.0}),
        ),
        "penalty": (
            "chat",
            GenerateParams(
                messages=hi, max_tokens=30, seed=2, repeat_penalty=1.6, frequency_penalty=1.0
            ),
        ),
        "json": (
            "chat",
            GenerateParams(messages=hi, max_tokens=120, seed=3, response_format="json_object"),
        ),
        "tool": (
            "chat",
            GenerateParams(
                messages=hi, max_tokens=120, seed=4, tools=[weather], tool_choice="get_weather"
            ),
        ),
        "stop": ("completion", GenerateParams(prompt="ka", max_tokens=50, seed=5, stop=["e"])),
    }
    engine._cells.cache.budget = 0
    alone = {rid: run(engine, {rid: request})[rid] for rid, request in requests.items()}
    together = run(engine, requests)
    assert comparable(together) == comparable(alone, near=True)
    tool = alone["tool"][-1]
    assert isinstance(tool, Done) and tool.tool_calls and tool.tool_calls[0].name == "get_weather"
    json_done = alone["json"][-1]
    assert isinstance(json_done, Done)
    assert isinstance(json.loads("".join(tokens(alone["json"])) + json_done.text), dict)
    stop_done = alone["stop"][-1]
    assert isinstance(stop_done, Done) and "e" not in "".join(tokens(alone["stop"]))
    pieces = [i for i in alone["logprobs"] if isinstance(i, Piece)]
    assert all(p.logprob is not None and len(p.logprob.top) == 3 for p in pieces)


@pytest.mark.integration
def test_running_sequences_stay_in_the_lowest_slots_and_prefixes_follow(
    engine: BatchEngine,
) -> None:
    """Four answers fill slots 0-3; a follow-up of the one in slot 3 runs in slot 0, with
    that conversation's cells copied there, and what slot 0 kept stays cached too."""
    chats = {i: [ChatMessage("user", f"story {i} " + "about the sea " * 10)] for i in range(4)}
    first = run(
        engine,
        {f"c{i}": ("chat", GenerateParams(messages=m, max_tokens=8)) for i, m in chats.items()},
    )
    assert sorted(engine._cells.cache.kept()) == [0, 1, 2, 3]  # c3 ran, and is kept, in slot 3
    answer = "".join(tokens(first["c3"]))
    follow = [*chats[3], ChatMessage("assistant", answer), ChatMessage("user", "and?")]
    engine.add("f", "chat", GenerateParams(messages=follow, max_tokens=6))
    engine.step()
    (running,) = engine._running
    assert running.seq_id == 0
    done = first["c3"][-1]
    assert isinstance(done, Done) and running.cached >= done.usage.total_tokens - 1
    while engine.busy:
        engine.step()
    # Slot 0's own conversation was moved aside, not lost: it is still found.
    again = run(engine, {"a": ("chat", GenerateParams(messages=chats[0], max_tokens=2))})["a"]
    again_done = again[-1]
    assert isinstance(again_done, Done)
    assert again_done.usage.cached_tokens == again_done.usage.prompt_tokens - 1


@pytest.mark.integration
def test_a_share_of_threads_takes_effect_between_steps(engine: BatchEngine) -> None:
    applied: list[int] = []
    engine._tuner._apply = applied.append
    engine.add("r", "completion", greedy("abc", 20))
    engine.step()
    engine.share(2)  # the worker's other replicas went idle: both of its threads
    assert applied == [2] and engine._tuner.ceiling == 2
    while engine.busy:
        engine.step()
    before, was = len(applied), engine._tuner.threads  # the tuner may have tried one
    engine.share(1)
    assert engine._tuner.ceiling == engine._tuner.threads == 1
    assert applied[before:] == ([1] if was == 2 else [])
