"""ChatGLM, ChatGLM2 and ChatGLM3 through chatglm.cpp (ggml files from its converter).

The token loop is xb's own, over chatglm.cpp's next-token call, so that usage is exact,
cancellation is checked between tokens and stop strings work as on llama.cpp. What
chatglm.cpp cannot do (seeds, logprobs, logit bias, grammars, tools) is refused by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xb.core.protocol import GenerateParams, ModelSpec, Usage
from xb.worker.backend import Backend, BackendError, Done, Piece, StopText, token_budget
from xb.worker.engine import Engine, SequentialEngine

# GenerateParams defaults that chatglm.cpp has no way to honour otherwise.
_UNSUPPORTED: dict[str, Any] = {
    "seed": None,
    "logprobs": False,
    "logit_bias": {},
    "response_format": "text",
    "tools": [],
    "min_p": 0.05,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


class ChatGLMBackend(Backend):
    abilities = ("generate", "chat")

    def __init__(self, path: Path, spec: ModelSpec) -> None:
        import chatglm_cpp

        self._chatglm = chatglm_cpp
        self._pipeline = chatglm_cpp.Pipeline(str(path), max_length=spec.n_ctx)
        self._n_ctx = spec.n_ctx
        config = self._pipeline.model.config
        self._eos = {config.eos_token_id, *config.extra_eos_token_ids, *spec.stop_token_ids}
        self._stop = list(spec.stop)

    def _prompt(self, kind: str, params: GenerateParams) -> list[int]:
        tokenizer = self._pipeline.tokenizer
        if kind == "completion":
            return list(tokenizer.encode(params.prompt or "", self._n_ctx))
        messages = [
            self._chatglm.ChatMessage(role=_role(m.role), content=m.content)
            for m in params.messages or []
        ]
        return list(tokenizer.apply_chat_template(messages, self._n_ctx))

    def generate(self, kind: str, params: GenerateParams) -> Iterator[Piece | Done]:
        if kind == "embedding":
            raise BackendError("chatglm.cpp models cannot embed")
        for name, default in _UNSUPPORTED.items():
            if getattr(params, name) != default:
                raise BackendError(f"'{name}' is not supported by chatglm.cpp models")
        tokens = self._prompt(kind, params)
        n_prompt = len(tokens)
        limit = token_budget(n_prompt, self._n_ctx, params.max_tokens)
        if params.echo:
            yield Piece(params.prompt or "")  # echo; its logprobs were refused above
        config = self._chatglm._C.GenerationConfig(
            max_length=self._n_ctx,
            max_new_tokens=limit,
            max_context_length=self._n_ctx,
            do_sample=params.temperature > 0,
            top_k=params.top_k,
            top_p=params.top_p,
            temperature=max(params.temperature, 1e-5),
            repetition_penalty=params.repeat_penalty,
        )
        model, tokenizer = self._pipeline.model, self._pipeline.tokenizer
        text = StopText(self._stop + params.stop)
        ids = list(tokens)
        produced, finish, n_past, shown = 0, "length", 0, ""
        while produced < limit:
            token = model.generate_next_token(ids, None, config, n_past, n_prompt)
            n_past = model.count_tokens(ids, None)
            if token in self._eos:
                finish = "stop"
                break
            ids.append(token)
            produced += 1
            # Decode everything so far: one token alone may not be whole text.
            decoded = tokenizer.decode(ids[n_prompt:])
            if decoded.endswith("\ufffd"):
                yield Piece("")
                continue
            piece = text.feed(decoded[len(shown) :].encode())
            shown = decoded
            yield Piece(piece)
            if text.stopped:
                finish = "stop"
                break
        usage = Usage(n_prompt, produced, n_prompt + produced)
        yield Done(finish, usage, text.flush())


def _role(role: str) -> str:
    # chatglm.cpp knows system, user, assistant and observation (tool results).
    return {"developer": "system", "tool": "observation"}.get(role, role)


def start(path: Path, spec: ModelSpec, threads: int) -> Engine:
    """chatglm.cpp's entry in ``xb.core.engines``: one sequence at a time, on the threads
    chatglm.cpp picks itself."""
    return SequentialEngine(ChatGLMBackend(path, spec))
