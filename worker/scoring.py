"""A completion's ``echo``: the prompt as the first part of the answer, with the logprob
of every prompt token when logprobs are asked for (``max_tokens: 0`` then scores a text).

Scoring reads the logits at every prompt position, which the generation loop never
asks llama.cpp for. It decodes the prompt itself, in small batches that request every
position's logits, on the same sequence and bookkeeping as ``Llama.eval`` so that the
generation after it finds the prompt already in the KV cache.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import Any

import numpy as np

from xb.protocol import GenerateParams, TokenLogprob, TopLogprob
from xb.worker.backend import Piece

# Positions scored per decode: the logits of each take n_vocab floats (49152 for SmolLM2).
SCORE_BATCH = 64


def echo_prompt(llm: Any, tokens: list[int], params: GenerateParams) -> Iterator[Piece]:
    """The prompt as pieces: one piece of its text, or one per token with its logprob."""
    if not params.logprobs:
        yield Piece(params.prompt or "")
        return
    logprobs = prompt_logprobs(llm, tokens, params.top_logprobs)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # A BOS token the tokenizer added is not part of the prompt's text: it is not echoed.
    start = 1 if tokens and tokens[0] == llm.token_bos() and llm._model.add_bos_token() else 0
    texts = [
        decoder.decode(llm.detokenize([tokens[i]], prev_tokens=tokens[:i]))
        for i in range(start, len(tokens))
    ]
    if texts and "".join(texts) == " " + (params.prompt or "") and texts[0].startswith(" "):
        # SentencePiece marks a word's start with a space, and the prompt's first word too.
        texts[0] = texts[0][1:]
    for text, (logprob, top) in zip(texts, logprobs[start:], strict=True):
        # The token is named by the text it adds, so the tokens join up to the echo.
        yield Piece(text, TokenLogprob(text, logprob, top))


def prompt_logprobs(
    llm: Any, tokens: list[int], top: int
) -> list[tuple[float | None, list[TopLogprob]]]:
    """For each prompt token, its logprob given the tokens before it (None for the first)
    and the ``top`` likeliest tokens at its place."""
    from llama_cpp._internals import LlamaBatch

    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    batch: Any = LlamaBatch(n_tokens=SCORE_BATCH, embd=0, n_seq_max=1, verbose=False)
    out: list[tuple[float | None, list[TopLogprob]]] = [(None, [])]
    try:
        _score(llm, batch, tokens, top, out)
    finally:
        batch.close()
    # The generation that follows re-reads the last prompt token for fresh logits.
    llm._requires_eval = True
    return out


def _score(
    llm: Any,
    batch: Any,
    tokens: list[int],
    top: int,
    out: list[tuple[float | None, list[TopLogprob]]],
) -> None:
    n_vocab = llm.n_vocab()
    for start in range(0, len(tokens), SCORE_BATCH):
        chunk = tokens[start : start + SCORE_BATCH]
        batch.set_batch(batch=chunk, n_past=start, logits_all=True)
        llm._ctx.decode(batch)
        llm.input_ids[start : start + len(chunk)] = chunk
        llm.n_tokens = start + len(chunk)
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk), n_vocab))
        for row, position in enumerate(range(start + 1, start + len(chunk) + 1)):
            if position >= len(tokens):
                break  # the last row predicts what comes after the prompt
            shifted = logits[row] - logits[row].max()
            logprobs = shifted - np.log(np.exp(shifted).sum())
            best: Any = np.argsort(-logprobs)[:top] if top else []
            out.append(
                (
                    float(logprobs[tokens[position]]),
                    [TopLogprob(_text(llm, int(i)), float(logprobs[i])) for i in best],
                )
            )


def _text(llm: Any, token: int) -> str:
    return str(llm.detokenize([token], special=True).decode("utf-8", errors="replace"))
