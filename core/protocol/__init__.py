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
  DESCRIBE_MODEL, CLUSTER_INFO, PING, USAGE_CALL
* broker -> facade: PARTIAL, FINAL, ERROR, MODEL_INFO, MODEL_LIST, CLUSTER, ACK, PONG,
  QUEUED (a waiting request's place in line, to a facade that asked for it), USAGE_REPORT
* worker <-> its model processes: REQUEST, CANCEL, SHARE in; MODEL_EVENT, PARTIAL, FINAL,
  ERROR out

This package imports nothing of the project but itself; its bounds, error codes and the
pieces messages carry live in ``parts.py`` and are re-exported here.
"""

from __future__ import annotations

import logging
from typing import Annotated, get_args

import msgspec

# Every name of parts is re-exported (p.ModelSpec, p.ErrorCode, ...); those used here are
# named as well.
from xb.core.protocol.parts import *  # noqa: F403
from xb.core.protocol.parts import (
    MAX_BODY_BYTES,
    MAX_FAMILY_BYTES,
    MAX_REPLICAS_PER_WORKER,
    MAX_THREADS,
    PAGE_SIZE,
    VERSION,
    Count,
    ErrorCode,
    GenerateParams,
    Kind,
    Memory,
    ModelSpec,
    ModelState,
    Name,
    Priority,
    Progress,
    ProtocolError,
    Quota,
    ReplicaStatus,
    Struct,
    Tenant,
    TokenLogprob,
    ToolCall,
    Usage,
    Weight,
)

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
    """A request for a replica. An ``interactive`` one that finds every slot busy preempts
    a ``batch`` sequence, and one whose tenant has nothing running a sequence of a tenant
    holding two slots or more (``worker/llama_engine.py``)."""

    request_id: str
    replica_id: str
    kind: Kind
    params: GenerateParams
    priority: Priority = "interactive"
    tenant: Tenant = ""  # a tenant with no sequence running may preempt one holding two


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
    preemptions: int = 0  # times it left its slot for an interactive request, and resumed


class Error(Struct, frozen=True):
    """``retry_after``: seconds until a retry may succeed (a quota's window), 0 when the
    error does not say."""

    request_id: str
    code: ErrorCode
    message: str
    retry_after: Annotated[int, msgspec.Meta(ge=0, le=1 << 30)] = 0


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
    # Who sent it, for fair turns (``broker/fairshare.py``): the API key's name, or the
    # OpenAI ``user`` field without keys; and how it ranks, and its tenant's weight.
    tenant: Tenant = ""
    priority: Priority = "interactive"
    weight: Weight = 1.0
    # Whether the facade wants QUEUED messages while it waits (a stream shows them):
    # older facades leave it False and are sent none.
    positions: bool = False
    # The tenant's quotas, from its API key (0: none), which the broker checks and counts
    # (``broker/quotas.py``), so every facade in front of it shares the counts.
    rpm: Quota = 0  # requests per minute
    tokens_per_day: Quota = 0  # prompt and completion tokens per UTC day


class Queued(Struct, frozen=True):
    """A waiting request's place in line for a slot of its model: 1 is served next
    (``broker/positions.py`` says when it is sent)."""

    request_id: str
    position: Annotated[int, msgspec.Meta(ge=1)]


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


class PageCall(Struct, frozen=True):
    """A call for one page of a list reply: at most ``PAGE_SIZE`` entries from ``offset``."""

    request_id: str
    offset: int = 0
    limit: int = PAGE_SIZE


class TerminateModel(Struct, frozen=True):
    request_id: str
    model_uid: str


class ListModels(PageCall, frozen=True):
    """The running models, one page."""


class DescribeModel(Struct, frozen=True):
    request_id: str
    model_uid: str


class ClusterInfo(PageCall, frozen=True):
    """The workers, one page."""


class Ping(Struct, frozen=True):
    request_id: str = ""


class BrokerStats(msgspec.Struct, forbid_unknown_fields=False):
    """The broker's counters since it started, for the facade's ``/metrics``. Not frozen,
    unlike the messages: the broker counts in one of these (``broker/cluster.py``)."""

    malformed: int = 0  # frames it could not read, or could not act upon
    handler_errors: int = 0  # exceptions its own handlers raised on frames it could read
    dropped: int = 0  # frames it could not send: the peer was gone or too far behind
    refused: int = 0  # READYs for a worker id that belongs to another key
    retries: int = 0  # requests sent again after their replica failed before a token
    replacements: int = 0  # replicas placed again after they were lost
    restarts: int = 0  # failed replicas started again
    preemptions: int = 0  # batch sequences that gave their slot to an interactive request


class Pong(Struct, frozen=True):
    request_id: str = ""
    instance: str = ""  # new each time the broker starts: a facade sees a restart by it
    stats: BrokerStats | None = None


class UsageCall(Struct, frozen=True):
    """Usage by tenant and model between ``start`` and ``end`` (Unix seconds), from the
    broker's minute buckets; ``lifetime``: since the broker started instead (``/metrics``)."""

    request_id: str
    start: float = 0.0
    end: float = 0.0
    lifetime: bool = False


class UsageRow(Struct, frozen=True):
    """What one tenant sent one model: requests ended with FINAL, their prompt tokens
    (``cached``: reused from a prefix cache), completion tokens, preemptions, and the
    time they waited for a slot (``waits``: counts per ``QUEUE_WAIT_BUCKETS`` bound)."""

    tenant: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    preemptions: int = 0
    queue_wait: float = 0.0  # seconds, summed over the requests
    waits: list[int] = []


class Activity(Struct, frozen=True):
    """A tenant's requests of one model now: running on a replica, and waiting."""

    tenant: str
    model: str
    running: int = 0
    waiting: int = 0


class UsageReport(Struct, frozen=True):
    request_id: str
    rows: list[UsageRow]
    active: list[Activity] = []
    start: float = 0.0
    end: float = 0.0
    truncated: bool = False  # more rows than MAX_USAGE_ROWS: the busiest are kept


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
    engine: str = ""  # "": an earlier broker's, which ran each format on one engine


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


class ListFamilies(PageCall, frozen=True):
    """The registered model families, one page."""


class Families(Struct, frozen=True):
    """Registered families (JSON each), a page at a time."""

    request_id: str
    families: list[bytes]
    total: int = 0


# Every message, once: the command table below is read from this union.
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
    | Queued
    | UsageCall
    | UsageReport
)

# One byte per command, in the order of the union above: the order is the wire format,
# append only.
_TYPES: tuple[type[Message], ...] = get_args(Message)
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


def decode_or_drop(frames: list[bytes], log: logging.Logger, sender: str) -> Message | None:
    """``decode``, or None once ``log`` has said that a malformed frame from ``sender``
    was dropped (a peer's bad frame is never the receiver's failure)."""
    try:
        return decode(frames)
    except ProtocolError as exc:
        log.warning("dropped malformed frame from %s: %s", sender, exc)
        return None
