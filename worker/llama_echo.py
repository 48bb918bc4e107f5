"""A completion's ``echo``: the prompt as the first part of the answer, with the logprob of
every prompt token when logprobs are asked for (``max_tokens: 0`` then scores a text).

The engine asks llama.cpp for the logits at every prompt position of such a sequence, in
chunks of ``SCORE_CHUNK`` (each row holds n_vocab floats: 49,152 for SmolLM2), and skips
the prefix cache for it, since cached positions would have no logits.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any

import numpy as np

from xb.core.protocol import TokenLogprob, TopLogprob
from xb.worker.backend import Piece
from xb.worker.llama_model import LlamaModel
from xb.worker.llama_sampling import Sampler

SCORE_CHUNK = 64


@dataclass
class Echo:
    texts: list[str]  # the text each prompt token adds
    start: int  # the first position echoed: a BOS the tokenizer added is not prompt text
    top: int  # top logprobs per token


def prompt_texts(model: LlamaModel, tokens: list[int], prompt: str) -> tuple[list[str], int]:
    """The text of each prompt token, and the first position that is the prompt's own."""
    start = 1 if tokens and tokens[0] == model.llm.token_bos() and model.adds_bos else 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [""] * start + [decoder.decode(model.piece(t)) for t in tokens[start:]]
    echoed = texts[start:]
    if echoed and "".join(echoed) == " " + prompt and echoed[0].startswith(" "):
        # SentencePiece marks a word's start with a space, and the prompt's first word too.
        texts[start] = texts[start][1:]
    return texts, start


def first_piece(echo: Echo) -> Piece | None:
    """The prompt's first token, which nothing before it predicts: its logprob is None."""
    if echo.start != 0 or not echo.texts:
        return None
    return Piece(echo.texts[0], TokenLogprob(echo.texts[0], None, []))


def scored_piece(
    model: LlamaModel, echo: Echo, logprobs: np.ndarray[Any, Any], token: int, position: int
) -> Piece | None:
    """The piece of prompt ``position``, scored by the logits of the position before it."""
    if position < echo.start:
        return None
    text = echo.texts[position]
    top: list[TopLogprob] = []
    if echo.top:
        best = np.argpartition(-logprobs, echo.top - 1)[: echo.top]
        best = best[np.argsort(-logprobs[best])]
        top = [TopLogprob(model.token_text(int(i)), float(logprobs[i])) for i in best]
    return Piece(text, TokenLogprob(text, float(logprobs[token]), top))


def scored_pieces(
    model: LlamaModel,
    sampler: Sampler,
    ctx: Any,
    echo: Echo,
    prompt: list[int],
    read: range,
    first_row: int,
) -> list[Piece]:
    """Pieces of the prompt tokens a decoded row scores: it held prompt positions ``read``,
    at batch rows from ``first_row`` on; each position's logits score the next one."""
    pieces = []
    if read.start == 0 and (piece := first_piece(echo)) is not None:
        pieces.append(piece)
    for offset, position in enumerate(range(read.start + 1, read.stop + 1)):
        if position >= len(prompt):
            break  # the last prompt token's logits give the first generated token
        logprobs = sampler.log_softmax(ctx, first_row + offset)
        piece = scored_piece(model, echo, logprobs, prompt[position], position)
        if piece is not None:
            pieces.append(piece)
    return pieces
