"""llama.cpp through llama-cpp-python: GGUF files, chat templates from the file itself."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xb.protocol import GenerateParams, Usage
from xb.worker.backend import Backend, BackendError, Done, Piece, StopText


class LlamaBackend(Backend):
    def __init__(self, path: Path, n_ctx: int, n_gpu_layers: int = 0) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, verbose=False
        )
        self._n_ctx = self._llm.n_ctx()
        self._eos = self._llm.token_eos()
        template = self._llm.metadata.get("tokenizer.chat_template")
        self._formatter: Any = None
        if template:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(self._eos),
                bos_token=self._token_text(self._llm.token_bos()),
                stop_token_ids=[self._eos],
            )
            self.abilities = ("generate", "chat")

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _prompt_tokens(self, kind: str, params: GenerateParams) -> tuple[list[int], list[str]]:
        if kind == "chat":
            if self._formatter is None:
                raise BackendError("this model file has no chat template; use /v1/completions")
            messages = [{"role": m.role, "content": m.content} for m in params.messages or []]
            formatted = self._formatter(messages=messages)
            stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop or ""]
            add_bos = not formatted.added_special
            tokens = self._llm.tokenize(formatted.prompt.encode(), add_bos=add_bos, special=True)
            return tokens, [s for s in stop if s]
        tokens = self._llm.tokenize((params.prompt or "").encode(), add_bos=True, special=False)
        return tokens, []

    def generate(self, kind: str, params: GenerateParams) -> Iterator[Piece | Done]:
        tokens, template_stop = self._prompt_tokens(kind, params)
        n_prompt = len(tokens)
        room = self._n_ctx - n_prompt
        if room <= 0:
            raise BackendError(
                f"the prompt is {n_prompt} tokens and the model's context is {self._n_ctx}; "
                "shorten the prompt or launch the model with a larger n_ctx"
            )
        limit = room if params.max_tokens is None else min(params.max_tokens, room)
        self._llm.set_seed(params.seed if params.seed is not None else random.getrandbits(31))
        text = StopText(template_stop + params.stop)
        history = list(tokens)
        produced, finish = 0, "length"
        if limit > 0:
            for token in self._llm.generate(
                tokens,
                temp=params.temperature,
                top_p=params.top_p,
                top_k=40,
                min_p=0.05,
                repeat_penalty=1.0,
                reset=True,
            ):
                if token == self._eos:
                    finish = "stop"
                    break
                produced += 1
                piece = text.feed(self._llm.detokenize([token], prev_tokens=history))
                history.append(token)
                if text.stopped:
                    finish = "stop"
                    yield Piece(piece)
                    break
                yield Piece(piece)
                if produced >= limit:
                    break
        usage = Usage(
            prompt_tokens=n_prompt, completion_tokens=produced, total_tokens=n_prompt + produced
        )
        yield Done(finish_reason=finish, usage=usage, text=text.flush())
