"""Embedding models on llama.cpp: one normalised vector per input, a request at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from xb.core.modelfile import read_gguf_info
from xb.core.protocol import GenerateParams, ModelSpec, Usage
from xb.worker.backend import Backend, BackendError, Done, Piece
from xb.worker.llama_model import engine_kwargs


class LlamaEmbedder(Backend):
    abilities = ("embed",)

    def __init__(self, path: Path, spec: ModelSpec, threads: int) -> None:
        import llama_cpp

        extra = engine_kwargs(spec)
        if "pooling_type" not in extra and read_gguf_info(path).pooling_type is None:
            extra["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_MEAN  # the file names none
        self._tuned = not extra.get("n_threads")  # threads the launch named stay as they are
        if self._tuned:
            extra["n_threads"] = threads
        extra["n_threads_batch"] = extra.get("n_threads_batch") or extra["n_threads"]
        self._llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=spec.n_ctx,
            n_gpu_layers=spec.n_gpu_layers,
            embedding=True,
            verbose=False,
            **extra,
        )
        self._n_ctx = self._llm.n_ctx()

    def share(self, threads: int) -> None:
        if self._tuned:
            import llama_cpp

            llama_cpp.llama_set_n_threads(self._llm.ctx, threads, threads)

    def generate(self, kind: str, params: GenerateParams) -> Iterator[Piece | Done]:
        if kind != "embedding":
            raise BackendError("this model was launched for embeddings; use /v1/embeddings")
        inputs = params.inputs or []
        counts = [len(self._llm.tokenize(text.encode(), add_bos=True)) for text in inputs]
        for index, count in enumerate(counts):
            if count > self._n_ctx:
                raise BackendError(
                    f"input {index} is {count} tokens and the model's context is {self._n_ctx}"
                )
        vectors = [list(map(float, self._llm.embed(text, normalize=True))) for text in inputs]
        n = sum(counts)
        yield Done("stop", Usage(n, 0, n), embeddings=tuple(vectors))
