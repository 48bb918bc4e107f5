"""The xb wire protocol: every frame layout, command code, error code and body, defined once.

A message is a multipart ZeroMQ message of three frames::

    [VERSION, COMMAND, BODY]

preceded by the peer's identity frame where it passes a ROUTER socket. COMMAND is one
byte; BODY is the msgpack encoding of the struct that COMMAND names in ``_TYPES``.
Nothing is pickled. ``decode`` turns any frame list it cannot read into a
``ProtocolError``, which receivers count, log and drop.

Who sends what:

* worker -> broker: READY, HEARTBEAT, MODEL_EVENT, PARTIAL, FINAL, ERROR, DISCONNECT
* broker -> worker: REQUEST, CANCEL, LAUNCH, TERMINATE, HEARTBEAT, DISCONNECT
* facade -> broker: SUBMIT, CANCEL, LAUNCH_MODEL, TERMINATE_MODEL, LIST_MODELS,
  DESCRIBE_MODEL, CLUSTER_INFO, PING
* broker -> facade: PARTIAL, FINAL, ERROR, MODEL_INFO, MODEL_LIST, CLUSTER, ACK, PONG
* worker <-> its model processes: REQUEST, CANCEL, SHARE in; MODEL_EVENT, PARTIAL, FINAL,
  ERROR out

This module imports nothing of the project.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

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


# What a worker reports is checked as it is decoded: a frame outside these bounds is
# malformed, dropped and counted, before the broker acts on any of it.
MAX_REPLICAS_PER_WORKER = 1024
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**60)]  # an exabyte: more is a lie
Count = Annotated[int, msgspec.Meta(ge=0, le=1 << 20)]
Name = Annotated[str, msgspec.Meta(max_length=256)]


class ProtocolError(Exception):
    """A frame list that does not follow this protocol; log it and drop it."""


class ErrorCode(enum.StrEnum):
    """Why a request or management call failed; the facade maps each to an HTTP status."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_MODEL = "model_not_found"
    DUPLICATE_MODEL = "model_exists"
    NO_REPLICA = "no_ready_replica"
    QUEUE_FULL = "queue_full"
    WORKER_LOST = "worker_lost"
    MODEL_FAILED = "model_failed"
    LAUNCH_REFUSED = "launch_refused"
    UNKNOWN_WORKER = "worker_not_found"
    CANCELLED = "cancelled"
    BROKER_UNAVAILABLE = "broker_unavailable"
    INTERNAL = "internal_error"


Kind = Literal["chat", "completion", "embedding"]
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


class Usage(Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache, not computed


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
    model_format: str = "gguf"  # "gguf" runs on llama.cpp, "ggml" on chatglm.cpp
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


# ---- worker <-> broker -----------------------------------------------------------------


Replicas = Annotated[list[ReplicaStatus], msgspec.Meta(max_length=MAX_REPLICAS_PER_WORKER)]


class Ready(Struct, frozen=True):
    worker_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    host: Name
    pid: int
    memory: Memory
    slots: Count
    replicas: Replicas = []


class Heartbeat(Struct, frozen=True):
    memory: Memory | None = None
    replicas: Replicas = []
    queue_depth: Count = 0
    in_flight: Count = 0


class Disconnect(Struct, frozen=True):
    reason: str = ""


class ModelEvent(Struct, frozen=True):
    """A replica changed state; sent at once rather than waiting for the next heartbeat."""

    status: ReplicaStatus


class Request(Struct, frozen=True):
    request_id: str
    replica_id: str
    kind: Kind
    params: GenerateParams


class Cancel(Struct, frozen=True):
    request_id: str


class Launch(Struct, frozen=True):
    replica_id: str
    spec: ModelSpec
    need: int = 0  # the broker's estimate; the worker checks it against its own free memory


class Terminate(Struct, frozen=True):
    replica_id: str


class Share(Struct, frozen=True):
    """The CPU threads a model process may use from now on: its share of the worker's."""

    threads: Annotated[int, msgspec.Meta(ge=1, le=MAX_THREADS)]


class Partial(Struct, frozen=True):
    """Tokens of a request; ``index`` counts its PARTIAL frames from 0, so a receiver
    notices one that was lost on the way (a connection that broke mid-stream)."""

    request_id: str
    text: str
    tokens: int
    logprobs: list[TokenLogprob] = []
    index: int = 0


class Final(Struct, frozen=True):
    """The end of a request; ``partials`` is how many PARTIAL frames came before it
    (-1: not counted)."""

    request_id: str
    finish_reason: str
    usage: Usage
    text: str = ""
    logprobs: list[TokenLogprob] = []
    tool_calls: list[ToolCall] = []
    embeddings: list[list[float]] = []
    partials: int = -1


class Error(Struct, frozen=True):
    request_id: str
    code: ErrorCode
    message: str


# ---- facade <-> broker -----------------------------------------------------------------


class Submit(Struct, frozen=True):
    """A request for a model. ``prefix_keys`` name the conversations this one continues,
    longest first, and ``conversation`` names this one: the broker sends a follow-up to
    the replica that served its conversation, where its prefix is cached."""

    request_id: str
    model_uid: str
    kind: Kind
    params: GenerateParams
    prefix_keys: list[str] = []
    conversation: str = ""


class LaunchModel(Struct, frozen=True):
    request_id: str
    spec: ModelSpec  # an empty model_uid lets the broker pick one from the name
    replica: int = 1
    worker: str | None = None
    wait_ready: bool = True  # False: answer as soon as the replicas are placed
    request_limits: int | None = None  # requests running or waiting at most, then 429
    need: int = 0  # bytes per replica, estimated from the registry; 0: from the file
    abilities: list[str] = []  # known from the registry before loading


class ScaleModel(Struct, frozen=True):
    """Add or remove replicas of a running model until it has ``replica`` of them."""

    request_id: str
    model_uid: str
    replica: int


class TerminateModel(Struct, frozen=True):
    request_id: str
    model_uid: str


class ListModels(Struct, frozen=True):
    request_id: str
    offset: int = 0
    limit: int = PAGE_SIZE  # at most PAGE_SIZE


class DescribeModel(Struct, frozen=True):
    request_id: str
    model_uid: str


class ClusterInfo(Struct, frozen=True):
    request_id: str
    offset: int = 0
    limit: int = PAGE_SIZE  # at most PAGE_SIZE


class Ping(Struct, frozen=True):
    request_id: str = ""


class BrokerStats(Struct, frozen=True):
    """The broker's counters since it started, for the facade's ``/metrics``."""

    malformed: int = 0  # frames it could not read, or could not act upon
    dropped: int = 0  # frames it could not send: the peer was gone or too far behind
    refused: int = 0  # READYs for a worker id that belongs to another key
    retries: int = 0  # requests sent again after their replica failed before a token
    replacements: int = 0  # replicas placed again after they were lost
    restarts: int = 0  # failed replicas started again


class Pong(Struct, frozen=True):
    request_id: str = ""
    instance: str = ""  # new each time the broker starts: a facade sees a restart by it
    stats: BrokerStats | None = None


class ReplicaPlace(Struct, frozen=True):
    replica_id: str
    worker_id: str
    host: str
    state: ModelState
    error: str | None = None
    progress: Progress | None = None


class ModelInfo(Struct, frozen=True):
    request_id: str
    model_uid: str
    model_name: str
    model_path: str | None
    model_format: str
    model_type: str
    n_ctx: int
    abilities: list[str]
    replica: int
    replicas: list[ReplicaPlace]
    created: int
    queued: int = 0
    served: int = 0  # requests answered, for rates
    tokens: int = 0  # tokens generated
    model_size_in_billions: str | None = None
    quantization: str | None = None
    n_parallel: int = 1


class ModelList(Struct, frozen=True):
    request_id: str
    models: list[ModelInfo]
    total: int = 0  # models on every page: ask for the next from offset + len(models)


class WorkerInfo(Struct, frozen=True):
    worker_id: str
    host: str
    pid: int
    memory: Memory
    slots: int
    replicas: list[ReplicaStatus]
    queue_depth: int
    in_flight: int
    heartbeat_age: float
    served: int = 0


class Cluster(Struct, frozen=True):
    request_id: str
    workers: list[WorkerInfo]
    total: int = 0  # workers on every page


class Ack(Struct, frozen=True):
    request_id: str


class RegisterFamily(Struct, frozen=True):
    """Register a model family (the registry's JSON) with the broker, for every facade."""

    request_id: str
    family: Annotated[bytes, msgspec.Meta(max_length=MAX_FAMILY_BYTES)]
    overwrite: bool = False
    persist: bool = True  # False: until the broker stops


class UnregisterFamily(Struct, frozen=True):
    request_id: str
    model_name: str


class ListFamilies(Struct, frozen=True):
    request_id: str
    offset: int = 0
    limit: int = PAGE_SIZE


class Families(Struct, frozen=True):
    """Registered families (JSON each), a page at a time."""

    request_id: str
    families: list[bytes]
    total: int = 0


Message = (
    Ready
    | Heartbeat
    | Disconnect
    | ModelEvent
    | Request
    | Cancel
    | Launch
    | Terminate
    | Partial
    | Final
    | Error
    | Submit
    | LaunchModel
    | TerminateModel
    | ListModels
    | DescribeModel
    | ClusterInfo
    | Ping
    | Pong
    | ModelInfo
    | ModelList
    | Cluster
    | Ack
    | ScaleModel
    | RegisterFamily
    | UnregisterFamily
    | ListFamilies
    | Families
    | Share
)

# One byte per command; the order is the wire format, append only.
_TYPES: tuple[type[Message], ...] = (
    Ready,
    Heartbeat,
    Disconnect,
    ModelEvent,
    Request,
    Cancel,
    Launch,
    Terminate,
    Partial,
    Final,
    Error,
    Submit,
    LaunchModel,
    TerminateModel,
    ListModels,
    DescribeModel,
    ClusterInfo,
    Ping,
    Pong,
    ModelInfo,
    ModelList,
    Cluster,
    Ack,
    ScaleModel,
    RegisterFamily,
    UnregisterFamily,
    ListFamilies,
    Families,
    Share,
)
_COMMAND = {cls: bytes([i + 1]) for i, cls in enumerate(_TYPES)}
_DECODERS = {bytes([i + 1]): msgspec.msgpack.Decoder(cls) for i, cls in enumerate(_TYPES)}
_encoder = msgspec.msgpack.Encoder()


def encode(message: Message) -> list[bytes]:
    """The frames for ``message``, without any identity frame."""
    return [VERSION, _COMMAND[type(message)], _encoder.encode(message)]


def decode(frames: list[bytes]) -> Message:
    """Read ``[VERSION, COMMAND, BODY]``; anything else raises ``ProtocolError``."""
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    version, command, body = frames
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version[:16]!r}, expected {VERSION!r}")
    decoder = _DECODERS.get(command)
    if decoder is None:
        raise ProtocolError(f"unknown command {command[:16]!r}")
    if len(body) > MAX_BODY_BYTES:
        raise ProtocolError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        message: Message = decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"bad {decoder.type.__name__} body: {exc}") from exc
    return message
