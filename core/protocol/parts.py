"""The protocol's bounds, error codes and the pieces its messages carry.

``xb.core.protocol`` re-exports every name here; import them from there.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

from xb.core.errors import XbError

__all__ = [
    "ABILITY",
    "MAX_BODY_BYTES",
    "MAX_FAMILIES",
    "MAX_FAMILY_BYTES",
    "MAX_MODELS",
    "MAX_REPLICAS",
    "MAX_REPLICAS_PER_WORKER",
    "MAX_THREADS",
    "MAX_USAGE_ROWS",
    "PAGE_SIZE",
    "QUEUE_WAIT_BUCKETS",
    "VERSION",
    "Bytes",
    "ChatMessage",
    "Count",
    "Download",
    "ErrorCode",
    "GenerateParams",
    "Kind",
    "Memory",
    "ModelSpec",
    "ModelState",
    "Name",
    "Priority",
    "Progress",
    "ProtocolError",
    "Quota",
    "ReplicaStatus",
    "Struct",
    "Tenant",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "TopLogprob",
    "Usage",
    "Weight",
]

VERSION = b"XB1"

# Frames larger than this are refused before decoding (principle 7: bounded everything).
MAX_BODY_BYTES = 8 * 1024 * 1024
# What one broker serves at most, so that every reply stays well inside a frame: list
# replies come in pages of at most PAGE_SIZE entries.
MAX_REPLICAS = 256  # per model
MAX_MODELS = 1024
PAGE_SIZE = 100
MAX_FAMILY_BYTES = 64 * 1024  # one registered family, as JSON: a page stays under 8 MiB
MAX_FAMILIES = 1024
MAX_THREADS = 4096  # CPU threads one worker shares among its models
MAX_USAGE_ROWS = 1000  # (tenant, model) rows in one usage report, the busiest kept
# Upper bounds (seconds) of the queue-wait histogram's buckets, the last one open.
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))


# What a worker reports is checked as it is decoded: a frame outside these bounds is
# malformed, dropped and counted, before the broker acts on any of it.
MAX_REPLICAS_PER_WORKER = 1024
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**60)]  # an exabyte: more is a lie
Count = Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
Name = Annotated[str, msgspec.Meta(max_length=256)]


class ProtocolError(XbError):
    """A frame list that does not follow this protocol; log it and drop it."""


class ErrorCode(enum.StrEnum):
    """Why a request or management call failed; the facade maps each to an HTTP status."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_MODEL = "model_not_found"
    DUPLICATE_MODEL = "model_exists"
    NO_REPLICA = "no_ready_replica"
    QUEUE_FULL = "queue_full"
    QUOTA_EXCEEDED = "rate_limit_exceeded"  # a tenant's requests per minute or tokens per day
    WORKER_LOST = "worker_lost"
    MODEL_FAILED = "model_failed"  # a model process failed a request it was serving
    LOAD_FAILED = "load_failed"  # a launched or added replica could not load its model
    LAUNCH_REFUSED = "launch_refused"
    UNKNOWN_WORKER = "worker_not_found"
    CANCELLED = "cancelled"
    BROKER_UNAVAILABLE = "broker_unavailable"
    INTERNAL = "internal_error"


Kind = Literal["chat", "completion", "embedding"]
# Interactive requests are served before any batch request waiting for the same model.
Priority = Literal["interactive", "batch"]
Tenant = Annotated[str, msgspec.Meta(max_length=128)]  # "": the one shared tenant
Weight = Annotated[float, msgspec.Meta(gt=0, le=1000)]
Quota = Annotated[int, msgspec.Meta(ge=0, le=1 << 50)]  # 0: no quota
# What each request kind needs a model to be able to do.
ABILITY = {"chat": "chat", "completion": "generate", "embedding": "embed"}


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """Base of every wire body: immutable, extra fields from newer peers are ignored."""


# ---- shared pieces -------------------------------------------------------------------


class Memory(Struct, frozen=True):
    total: Bytes
    free: Bytes
    gpu_total: Bytes = 0
    gpu_free: Bytes = 0


class ChatMessage(Struct, frozen=True):
    role: str
    content: str


class Tool(Struct, frozen=True):
    """A function the model may call; ``parameters`` is its JSON schema, as JSON text."""

    name: str
    description: str = ""
    parameters: str = "{}"


class ToolCall(Struct, frozen=True):
    id: str
    name: str
    arguments: str  # JSON text


class TopLogprob(Struct, frozen=True):
    token: str
    logprob: float


class TokenLogprob(Struct, frozen=True):
    token: str
    logprob: float | None  # None: a prompt's first token, which nothing before it predicts
    top: list[TopLogprob] = []


class GenerateParams(Struct, frozen=True):
    """One generation: ``messages`` (chat), ``prompt`` (text completion) or ``inputs``
    (embedding). ``tool_choice`` is "none", "auto", "required" or a tool's name;
    ``response_format`` is "text", "json_object" or "json_schema" (with ``json_schema``
    holding the schema as JSON text)."""

    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    inputs: list[str] | None = None
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = {}
    stop: list[str] = []
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: str = "text"
    json_schema: str | None = None
    tools: list[Tool] = []
    tool_choice: str = "auto"
    echo: bool = False  # a completion's text (and logprobs) start with the prompt's
    speculative: bool = True  # False: no drafts for this request, whatever the launch says


class Usage(Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache, not computed
    accepted_prediction_tokens: int = 0  # drafted tokens the model agreed with
    rejected_prediction_tokens: int = 0  # drafted tokens checked and thrown away


class Download(Struct, frozen=True):
    """Files to fetch from the model hub into the worker's cache before loading."""

    repo_id: str
    files: list[str]  # one file, or the parts of a split file in order
    revision: str = "main"
    sha256: str | None = None  # of a single file, where the registry knows it
    package: str | None = None  # an installed Python distribution that ships the file


class Progress(Struct, frozen=True):
    stage: str  # "downloading" or "loading"
    done: int = 0  # bytes
    total: int = 0
    rate: float = 0.0  # bytes per second


class ModelSpec(Struct, frozen=True):
    """What a worker needs to load one replica of a model: a file on the worker
    (``model_path``), one to fetch (``download``) or the built-in demo model."""

    model_uid: str
    model_name: str
    model_path: str | None = None
    n_ctx: int = 2048
    model_format: str = "gguf"  # the file's format, as xb.core.engines names it
    model_type: str = "LLM"  # or "embedding"
    n_gpu_layers: int = 0
    engine_kwargs: str = "{}"  # extra keyword arguments for the engine, as JSON text
    download: Download | None = None
    chat_template: str | None = None  # None: the one in the model file
    stop: list[str] = []
    stop_token_ids: list[int] = []
    model_size_in_billions: str | None = None  # known when launched from the registry
    quantization: str | None = None
    n_parallel: int = 1  # sequences one replica decodes together; n_ctx is per sequence
    prefix_cache_tokens: int = -1  # tokens of finished sequences kept for reuse; -1: default
    engine: str = ""  # chosen at launch (xb.core.engines); "": the engine of model_format
    speculative: str = "ngram"  # drafts checked in the batch: "ngram", "draft" or "off"
    draft_tokens: int = 16  # the longest draft; the engine drafts fewer when that pays more
    draft_model: str | None = None  # a GGUF file with the model's vocabulary ("draft")
    draft_download: Download | None = None  # where to fetch it, for a registry family's


class ReplicaStatus(Struct, frozen=True):
    replica_id: Name
    model_uid: Name
    model_name: str
    state: ModelState
    error: str | None = None
    in_flight: Count = 0
    queue_depth: Count = 0
    abilities: list[str] = []
    progress: Progress | None = None
    spec: ModelSpec | None = None  # sent in READY, so a restarted broker can take it over
    slots: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1  # sequences decoded at once
    cached_tokens: Count = 0  # tokens of finished conversations held in its prefix cache
