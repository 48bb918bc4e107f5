"""llama.cpp through llama-cpp-python: GGUF files, chat templates from the file itself."""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xb.modelfile import read_gguf_info
from xb.protocol import GenerateParams, ModelSpec, TokenLogprob, TopLogprob, Usage
from xb.worker.backend import Backend, BackendError, Done, Piece, StopText, token_budget
from xb.worker.scoring import echo_prompt
from xb.worker.structured import (
    call_schema,
    openai_tool,
    parse_call,
    prepare_schema,
    schema_gbnf,
    strict_numbers,
    with_tool_instructions,
)


class LlamaBackend(Backend):
    def __init__(self, path: Path, spec: ModelSpec) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._embedding = spec.model_type == "embedding"
        try:
            extra: dict[str, Any] = json.loads(spec.engine_kwargs)
        except ValueError as exc:
            raise BackendError(f"engine keyword arguments are not JSON: {exc}") from exc
        _check_engine_kwargs(llama_cpp.Llama, extra)
        no_pooling = self._embedding and "pooling_type" not in extra
        if no_pooling and read_gguf_info(path).pooling_type is None:
            extra["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN  # the file names none
        self._llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=spec.n_ctx,
            n_gpu_layers=spec.n_gpu_layers,
            embedding=self._embedding,
            verbose=False,
            **extra,
        )
        self._n_ctx = self._llm.n_ctx()
        self._eos = self._llm.token_eos()
        # The end-of-turn tokens of the file, and those the registry adds for the family.
        self._stop_ids = {self._eos, *spec.stop_token_ids}
        self._stop = list(spec.stop)
        template = spec.chat_template or self._llm.metadata.get("tokenizer.chat_template")
        self._template = template or ""
        self._formatter: Any = None
        if self._embedding:
            self.abilities = ("embed",)
        elif template:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(self._eos),
                bos_token=self._token_text(self._llm.token_bos()),
                stop_token_ids=sorted(self._stop_ids),
            )
            self.abilities = ("generate", "chat")

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    # ---- prompts ----------------------------------------------------------------------

    def _prompt_tokens(self, kind: str, params: GenerateParams) -> tuple[list[int], list[str]]:
        if kind != "chat":
            tokens = self._llm.tokenize((params.prompt or "").encode(), add_bos=True)
            return tokens, []
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
        tokens = self._llm.tokenize(
            formatted.prompt.encode(), add_bos=not formatted.added_special, special=True
        )
        return tokens, [s for s in stop if s]

    def _grammar(self, params: GenerateParams, calls: bool) -> Any:
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

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
                return LlamaGrammar.from_string(schema_gbnf(schema), verbose=False)
            if params.response_format == "json_object":
                return LlamaGrammar.from_string(strict_numbers(JSON_GBNF), verbose=False)
        except Exception as exc:  # the converter raises assorted errors on schemas it rejects
            raise BackendError(f"cannot build a grammar from this schema: {exc}") from exc
        return None

    # ---- generation -------------------------------------------------------------------

    def generate(self, kind: str, params: GenerateParams) -> Iterator[Piece | Done]:
        from llama_cpp import LogitsProcessorList

        if kind == "embedding":
            yield self._embed(params.inputs or [])
            return
        if self._embedding:
            raise BackendError("this model was launched for embeddings; use /v1/embeddings")
        tokens, template_stop = self._prompt_tokens(kind, params)
        n_prompt = len(tokens)
        limit = token_budget(n_prompt, self._n_ctx, params.max_tokens)
        if params.echo:
            yield from echo_prompt(self._llm, tokens, params)
        choice = params.tool_choice if params.tools else "none"
        calls = choice not in ("none", "auto")  # the answer must be a call: constrain it
        maybe_call = choice == "auto"  # the model may answer with a call: watch for "{"
        too_big = [i for i in params.logit_bias if i >= self._llm.n_vocab()]
        if too_big:
            raise BackendError(
                f"logit_bias names token {too_big[0]}; this model's vocabulary has "
                f"{self._llm.n_vocab()} tokens"
            )
        grammar = self._grammar(params, calls)
        recorder = _Recorder(params.logit_bias)
        self._llm.set_seed(params.seed if params.seed is not None else random.getrandbits(31))
        text = StopText(template_stop + self._stop + params.stop)
        history = list(tokens)
        produced, finish = 0, "length"
        held: list[str] = []  # the output, kept back while it may be a tool call
        holding = calls
        for token in (
            self._llm.generate(
                tokens,
                temp=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                min_p=params.min_p,
                repeat_penalty=params.repeat_penalty,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                # A Python callback per token costs time: only when it has work to do.
                logits_processor=(
                    LogitsProcessorList([recorder])
                    if params.logprobs or params.logit_bias
                    else None
                ),
                grammar=grammar,
                reset=True,
            )
            if limit > 0
            else ()
        ):
            if token in self._stop_ids:
                finish = "stop"
                break
            produced += 1
            piece = text.feed(self._llm.detokenize([token], prev_tokens=history))
            history.append(token)
            logprob = self._logprob(recorder, token, params) if params.logprobs else None
            if maybe_call:
                # Undecided until the first visible character: "{" starts a tool call.
                seen = "".join(held) + piece
                held.clear()
                if not seen.strip():
                    held.append(seen)
                    piece = ""
                elif seen.lstrip().startswith("{"):
                    maybe_call, holding = False, True
                    held.append(seen)
                    piece = ""
                else:
                    maybe_call = False
                    piece = seen  # plain text after all: release what was held
            elif holding:
                held.append(piece)
                piece = ""
            yield Piece(piece, logprob)
            if text.stopped:
                finish = "stop"
                break
            if produced >= limit:
                break
        usage = Usage(n_prompt, produced, n_prompt + produced)
        rest = "".join(held) + text.flush()
        tool_calls = parse_call(rest, params.tools) if held else None
        if tool_calls:
            yield Done("tool_calls", usage, "", tool_calls=tool_calls)
        else:
            yield Done(finish, usage, rest)

    def _logprob(self, recorder: _Recorder, token: int, params: GenerateParams) -> TokenLogprob:
        logits = recorder.last
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        top: list[TopLogprob] = []
        if params.top_logprobs:
            best = np.argsort(-logprobs)[: params.top_logprobs]
            top = [TopLogprob(self._token_text(int(i)), float(logprobs[i])) for i in best]
        return TokenLogprob(self._token_text(token), float(logprobs[token]), top)

    def _embed(self, inputs: list[str]) -> Done:
        if not self._embedding:
            raise BackendError(
                "this model was not launched for embeddings; launch it with model_type 'embedding'"
            )
        counts = [len(self._llm.tokenize(text.encode(), add_bos=True)) for text in inputs]
        for index, count in enumerate(counts):
            if count > self._n_ctx:
                raise BackendError(
                    f"input {index} is {count} tokens and the model's context is {self._n_ctx}"
                )
        vectors = [list(map(float, self._llm.embed(text, normalize=True))) for text in inputs]
        n = sum(counts)
        return Done("stop", Usage(n, 0, n), embeddings=tuple(vectors))


class _Recorder:
    """A logits processor: applies ``logit_bias`` and keeps the logits it saw last."""

    def __init__(self, bias: dict[int, float]) -> None:
        self._ids = np.array(list(bias), dtype=np.intc)
        self._values = np.array(list(bias.values()), dtype=np.single)
        self.last: np.ndarray[Any, np.dtype[np.single]] = np.zeros(1, dtype=np.single)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if len(self._ids):
            scores[self._ids] += self._values
        self.last = np.array(scores, dtype=np.single)
        return scores


# Set by xb from the launch itself; an engine argument may not override them.
_OWN_ARGUMENTS = {"self", "kwargs", "model_path", "n_ctx", "n_gpu_layers", "embedding", "verbose"}


def _check_engine_kwargs(llama: Any, extra: dict[str, Any]) -> None:
    """Refuse engine arguments llama.cpp does not know: it would silently ignore them."""
    known = set(inspect.signature(llama.__init__).parameters) - _OWN_ARGUMENTS
    unknown = sorted(set(extra) - known)
    if unknown:
        raise BackendError(
            f"{', '.join(unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'}"
            " of llama.cpp's Llama; see llama-cpp-python's documentation for the options"
        )
