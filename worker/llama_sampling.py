"""One sequence's sampler: llama.cpp's sampler chain built from the request, and logprobs.

The chain is llama-cpp-python's own order (logit bias, penalties, grammar, then greedy or
top-k, top-p, min-p, temperature and a seeded draw), so a request samples as it did on
the one-at-a-time path. Each sequence has its own chain: its seed, grammar state and
penalty history never mix with another's, so a seeded answer is the same alone or batched.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from xb.core.protocol import GenerateParams, TokenLogprob, TopLogprob
from xb.worker.backend import BackendError
from xb.worker.llama_model import LlamaModel

PENALTY_LAST_N = 64  # llama-cpp-python's window for repeat, presence and frequency penalties
_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp reads this seed as "pick one at random"


def seed32(seed: int | None) -> int:
    """A request's seed as llama.cpp's 32-bit seed; a random one when there is none."""
    if seed is None:
        return random.getrandbits(31)
    value = seed % (1 << 32)
    return value - 1 if value == _RANDOM_SEED else value


class Sampler:
    def __init__(self, model: LlamaModel, params: GenerateParams, grammar: str | None) -> None:
        import llama_cpp

        self._model = model
        self._chain: Any = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        self._bias_ids = np.array(list(params.logit_bias), dtype=np.intc)
        self._bias_values = np.array(list(params.logit_bias.values()), dtype=np.single)
        samplers: list[Any] = []
        if params.logit_bias:
            bias = (llama_cpp.llama_logit_bias * len(params.logit_bias))(
                *(llama_cpp.llama_logit_bias(t, v) for t, v in params.logit_bias.items())
            )
            samplers.append(llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(bias), bias))
        if (params.repeat_penalty, params.presence_penalty, params.frequency_penalty) != (
            1.0,
            0.0,
            0.0,
        ):
            samplers.append(
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab,
                    PENALTY_LAST_N,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
            )
        if grammar is not None:
            constrained = llama_cpp.llama_sampler_init_grammar(
                model.vocab, grammar.encode(), b"root"
            )
            if not constrained:
                self._add(samplers)
                self.close()
                raise BackendError("llama.cpp could not parse the grammar for this schema")
            samplers.append(constrained)
        if params.temperature <= 0:
            samplers.append(llama_cpp.llama_sampler_init_greedy())
        else:
            samplers += [
                llama_cpp.llama_sampler_init_top_k(params.top_k),
                llama_cpp.llama_sampler_init_top_p(params.top_p, 1),
                llama_cpp.llama_sampler_init_min_p(params.min_p, 1),
                llama_cpp.llama_sampler_init_temp(params.temperature),
                llama_cpp.llama_sampler_init_dist(seed32(params.seed)),
            ]
        self._add(samplers)

    def _add(self, samplers: list[Any]) -> None:
        import llama_cpp

        for sampler in samplers:
            llama_cpp.llama_sampler_chain_add(self._chain, sampler)  # the chain owns it now

    def sample(self, ctx: Any, row: int) -> int:
        """Draw the next token from the logits of batch row ``row``, and accept it."""
        import llama_cpp

        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, row))

    def log_softmax(self, ctx: Any, row: int) -> np.ndarray[Any, np.dtype[np.single]]:
        """Log-probabilities of row ``row`` (with the logit bias applied), before sampling."""
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(ctx, row)
        logits = np.ctypeslib.as_array(pointer, shape=(self._model.n_vocab,)).astype(np.single)
        if len(self._bias_ids):
            logits[self._bias_ids] += self._bias_values
        shifted = logits - logits.max()
        result: np.ndarray[Any, np.dtype[np.single]] = shifted - np.log(np.exp(shifted).sum())
        return result

    def logprob(
        self, logprobs: np.ndarray[Any, np.dtype[np.single]], token: int, top: int
    ) -> TokenLogprob:
        best: list[TopLogprob] = []
        if top:
            n = len(logprobs)
            ids = np.argpartition(-logprobs, top - 1)[:top] if top < n else np.arange(n)
            ids = ids[np.argsort(-logprobs[ids])]
            best = [TopLogprob(self._model.token_text(int(i)), float(logprobs[i])) for i in ids]
        return TokenLogprob(self._model.token_text(token), float(logprobs[token]), best)

    def close(self) -> None:
        import llama_cpp

        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
