"""Grammars allow only finite JSON numbers; tool calls are parsed as strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xb.core.protocol import GenerateParams, ModelSpec, Tool
from xb.worker.backend import Done, Piece
from xb.worker.llama_engine import BatchEngine
from xb.worker.llama_model import LlamaModel
from xb.worker.structured import parse_call, schema_gbnf, strict_numbers

NUMBER = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}


@pytest.mark.unit
def test_number_rules_have_bounded_exponents() -> None:
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    for grammar in (strict_numbers(JSON_GBNF), schema_gbnf(NUMBER)):
        (rule,) = [line for line in grammar.splitlines() if line.startswith("number ::=")]
        assert "[0-9]{1,2})?" in rule and "integral-part)?" not in rule
        LlamaGrammar.from_string(grammar, verbose=False)  # llama.cpp reads it


@pytest.mark.unit
@pytest.mark.parametrize("arguments", ['{"x": Infinity}', '{"x": NaN}', '{"x": 1e999}'])
def test_a_call_with_a_number_json_cannot_hold_is_not_a_call(arguments: str) -> None:
    tools = [Tool("f", "", json.dumps(NUMBER))]
    assert parse_call(f'{{"name": "f", "arguments": {arguments}}}', tools) == ()
    (call,) = parse_call('{"name": "f", "arguments": {"x": 1.5e99}}', tools)
    assert json.loads(call.arguments) == {"x": 1.5e99}


def items_of(engine: BatchEngine, params: GenerateParams) -> list[object]:
    engine.add("r", "completion", params)
    items: list[object] = []
    while engine.busy:
        items += [item for _, item in engine.step()]
    return items


@pytest.mark.integration
def test_echo_gives_the_prompt_back_with_a_logprob_per_token(tiny_model: Path) -> None:
    spec = ModelSpec("t", "t", str(tiny_model), n_ctx=256)
    engine = BatchEngine(LlamaModel(tiny_model, spec, threads=1), n_ctx=256, n_parallel=2)
    prompt = "Once upon a time"
    params = GenerateParams(prompt=prompt, max_tokens=0, echo=True, logprobs=True, top_logprobs=3)
    items = items_of(engine, params)
    pieces = [i for i in items if isinstance(i, Piece)]
    assert "".join(p.text for p in pieces) == prompt
    assert all(p.logprob is not None and len(p.logprob.top) == 3 for p in pieces)
    done = items[-1]
    assert isinstance(done, Done) and done.usage.completion_tokens == 0
    # Without logprobs the echo is the prompt itself, in one piece.
    plain = items_of(engine, GenerateParams(prompt=prompt, max_tokens=0, echo=True))
    assert [p.text for p in plain if isinstance(p, Piece)] == [prompt]
    # A prompt longer than one scoring chunk is scored whole, and generation follows it.
    long = " ".join(["upon a time"] * 20)
    scored = items_of(engine, GenerateParams(prompt=long, max_tokens=3, echo=True, logprobs=True))
    pieces = [i for i in scored if isinstance(i, Piece)]
    assert "".join(p.text for p in pieces[:-3]) == long
    assert len(pieces) - 3 > 64
    engine.close()
