"""A GGUF model on llama.cpp: loading, prompts from the file's chat template, grammars,
token pieces, and contexts for batched decoding.

llama-cpp-python's ``Llama`` loads the weights and the vocabulary, and renders chat
templates; its own context is kept tiny, since ``Llama(...)`` ignores ``n_seq_max`` and
``kv_unified``. The context that decodes is made here with ``llama_init_from_model``.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import json
import logging
from pathlib import Path
from typing import Any

from xb.core.protocol import GenerateParams, ModelSpec
from xb.worker.backend import BackendError
from xb.worker.structured import (
    call_schema,
    openai_tool,
    prepare_schema,
    schema_gbnf,
    strict_numbers,
    with_tool_instructions,
)

# Set by xb from the launch itself; an engine argument may not override them.
OWN_ARGUMENTS = {"self", "kwargs", "model_path", "n_ctx", "n_gpu_layers", "embedding", "verbose"}
# Engine arguments that shape the decoding context, which xb makes itself.
_BATCH_ARGUMENTS = ("n_batch", "n_ubatch", "n_threads", "n_threads_batch")
DEFAULT_BATCH = 512

log = logging.getLogger("xb.llama")
_GGML_ERROR = 4  # ggml's log levels: none, debug, info, warn, error, cont


@functools.cache
def _route_llama_logs() -> Any:
    """Send llama.cpp's own messages to logging: errors as errors, the rest as debug (its
    warnings include a misleading one about ``n_ctx_seq`` exceeding the training context)."""
    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        message = text.decode("utf-8", errors="replace").rstrip()
        if message:
            log.log(logging.ERROR if level == _GGML_ERROR else logging.DEBUG, "%s", message)

    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
    return forward  # kept alive by the cache: llama.cpp holds only the pointer


def engine_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """The launch's extra llama.cpp arguments; refuses ones llama.cpp would ignore."""
    import llama_cpp

    try:
        extra: dict[str, Any] = json.loads(spec.engine_kwargs)
    except ValueError as exc:
        raise BackendError(f"engine keyword arguments are not JSON: {exc}") from exc
    if not isinstance(extra, dict):
        raise BackendError("engine keyword arguments must be a JSON object")
    known = set(inspect.signature(llama_cpp.Llama.__init__).parameters) - OWN_ARGUMENTS
    unknown = sorted(set(extra) - known)
    if unknown:
        raise BackendError(
            f"{', '.join(unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'}"
            " of llama.cpp's Llama; see llama-cpp-python's documentation for the options"
        )
    return extra


class LlamaModel:
    """Weights, vocabulary and chat template of one GGUF file."""

    def __init__(self, path: Path, spec: ModelSpec, threads: int) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        _route_llama_logs()
        extra = engine_kwargs(spec)
        self.n_batch = int(extra.get("n_batch", DEFAULT_BATCH))
        self.n_ubatch = int(extra.get("n_ubatch", self.n_batch))
        # Threads the launch names are used as they are; the worker's share is a ceiling
        # that the engine tunes under (threads.py).
        self.tuned = not extra.get("n_threads")
        self.threads = int(extra.get("n_threads") or threads)
        self.threads_batch = int(extra.get("n_threads_batch") or self.threads)
        for name in _BATCH_ARGUMENTS:
            extra.pop(name, None)
        # Flash attention, where llama.cpp supports it, unless the launch says otherwise:
        # on the CPU it skips masked cells, and it is faster on the test models.
        self._flash_attn_set = "flash_attn" in extra
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=32,  # this context only tokenizes; decoding has a context of its own
            n_batch=32,
            n_gpu_layers=spec.n_gpu_layers,
            n_threads=1,
            n_threads_batch=1,
            verbose=False,
            **extra,
        )
        self._base_params = self.llm.context_params  # carries the user's context options
        self.vocab = self.llm._model.vocab
        self.n_vocab = self.llm.n_vocab()
        self.eos = self.llm.token_eos()
        self.bos = self.llm.token_bos()
        self.adds_bos = bool(self.llm._model.add_bos_token())
        # The end-of-turn tokens of the file, and those the registry adds for the family.
        self.stop_ids = {self.eos, *spec.stop_token_ids}
        self.stop = list(spec.stop)
        template = spec.chat_template or self.llm.metadata.get("tokenizer.chat_template")
        self._template = template or ""
        self._formatter: Any = None
        self.abilities: tuple[str, ...] = ("generate",)
        if template:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self.token_text(self.eos),
                bos_token=self.token_text(self.llm.token_bos()),
                stop_token_ids=sorted(self.stop_ids),
            )
            self.abilities = ("generate", "chat")
        self._piece = ctypes.create_string_buffer(256)

    # ---- tokens -----------------------------------------------------------------------

    def piece(self, token: int) -> bytes:
        """The bytes of one generated token (special tokens render as nothing)."""
        import llama_cpp

        size = len(self._piece)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, size, 0, False)
        if n < 0:  # longer than the buffer: -n is what it needs
            self._piece = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, -n, 0, False)
        return self._piece.raw[: max(n, 0)]

    def ends_turn(self, token: int) -> bool:
        """End of sequence, or any end-of-turn token the file marks, or one the registry
        names: a model whose turns end with another token than EOS stops there too."""
        import llama_cpp

        return token in self.stop_ids or bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    # ---- prompts ----------------------------------------------------------------------

    def prompt_tokens(
        self, kind: str, params: GenerateParams
    ) -> tuple[list[int], list[str], str | None]:
        """The prompt's tokens, the stop strings its chat template adds, and (for a chat)
        the text the template rendered."""
        if kind != "chat":
            return self.llm.tokenize((params.prompt or "").encode(), add_bos=True), [], None
        if self._formatter is None:
            raise BackendError("this model file has no chat template; use /v1/completions")
        messages = [{"role": m.role, "content": m.content} for m in params.messages or []]
        tools = params.tools if params.tool_choice != "none" else []
        if tools and "tools" not in self._template:
            messages = with_tool_instructions(messages, tools)
        formatted = self._formatter(
            messages=messages, tools=[openai_tool(t) for t in tools] or None
        )
        stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop or ""]
        tokens = self.llm.tokenize(
            formatted.prompt.encode(), add_bos=not formatted.added_special, special=True
        )
        return tokens, [s for s in stop if s], formatted.prompt

    def continued(self, kept: list[int], rest: str) -> list[int] | None:
        """The tokens of a chat that repeats ``kept`` (an earlier chat's tokens, as they
        were) and goes on with ``rest``, when ``rest`` begins at a special token such as an
        end of turn; else None. Tokenizing the whole text again may split what the model
        generated differently, and lose the cache from there on."""
        import llama_cpp

        tokens = self.llm.tokenize(rest.encode(), add_bos=False, special=True)
        if not tokens or not llama_cpp.llama_vocab_is_control(self.vocab, tokens[0]):
            return None
        return kept + tokens

    def grammar(self, params: GenerateParams, calls: bool) -> str | None:
        """GBNF text that constrains the answer, or None."""
        from llama_cpp.llama_grammar import JSON_GBNF

        schema: Any = None
        try:
            if calls:
                schema = call_schema(params.tools, params.tool_choice)
            elif params.response_format == "json_schema":
                schema = prepare_schema(json.loads(params.json_schema or "{}"))
        except BackendError:
            raise
        except Exception as exc:  # a schema shaped in a way the checks did not expect
            raise BackendError(f"cannot read this JSON schema: {exc}") from exc
        try:
            if schema is not None:
                return schema_gbnf(schema)
        except Exception as exc:  # the converter raises assorted errors on schemas it rejects
            raise BackendError(f"cannot build a grammar from this schema: {exc}") from exc
        if params.response_format == "json_object":
            return strict_numbers(JSON_GBNF)
        return None

    # ---- contexts ---------------------------------------------------------------------

    def new_context(self, n_ctx: int, n_seq: int) -> Any:
        """A context of ``n_ctx`` cells split evenly among ``n_seq`` sequences (llama.cpp
        rounds each sequence's share up to a multiple of 256)."""
        import llama_cpp

        params = llama_cpp.llama_context_params.from_buffer_copy(self._base_params)
        params.n_ctx = n_ctx
        params.n_batch = self.n_batch
        params.n_ubatch = min(self.n_ubatch, self.n_batch)
        params.n_seq_max = n_seq
        params.kv_unified = False  # each sequence attends over its own cells only
        if not self._flash_attn_set:
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        params.n_threads = self.threads
        params.n_threads_batch = self.threads_batch
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self.llm._model.model, params)
        if not ctx:
            raise BackendError(
                f"llama.cpp could not make a context of {n_ctx} tokens for {n_seq} sequences; "
                "launch with a smaller n_ctx or n_parallel"
            )
        return ctx

    def close(self) -> None:
        self.llm.close()
