"""Prometheus metrics of the facade; worker figures come from the broker's heartbeat table."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from xb.core import protocol as p

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class _ClusterCollector(Collector):
    """Gauges read from the latest cluster snapshot, taken just before each scrape."""

    def __init__(self) -> None:
        self.models: list[p.ModelInfo] = []
        self.workers: list[p.WorkerInfo] = []
        self.broker = p.BrokerStats()
        self.usage = p.UsageReport("", [])

    def collect(self) -> Iterator[Metric]:
        for name, text, value in (
            ("xb_broker_malformed_frames", "Frames the broker could not read or act upon",
             self.broker.malformed),
            ("xb_broker_handler_errors", "Exceptions of the broker's own handlers (its bugs)",
             self.broker.handler_errors),
            ("xb_broker_dropped_frames", "Frames the broker could not deliver",
             self.broker.dropped),
            ("xb_broker_refused_workers", "READYs for a worker id bound to another key",
             self.broker.refused),
            ("xb_broker_retries", "Requests retried after a failure before their first token",
             self.broker.retries),
            ("xb_broker_replacements", "Replicas placed again after they were lost",
             self.broker.replacements),
            ("xb_broker_restarts", "Failed replicas started again", self.broker.restarts),
            ("xb_broker_preemptions", "Batch sequences preempted by interactive requests",
             self.broker.preemptions),
        ):  # fmt: skip
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], value)
            yield counter
        queue = GaugeMetricFamily("xb_model_queue_depth", "Requests waiting", labels=["model"])
        replicas = GaugeMetricFamily(
            "xb_model_replicas", "Replicas by state", labels=["model", "state"]
        )
        for model in self.models:
            queue.add_metric([model.model_uid], model.queued)
            for state in p.ModelState:
                count = sum(r.state == state for r in model.replicas)
                replicas.add_metric([model.model_uid, state.value], count)
        alive = GaugeMetricFamily("xb_workers_alive", "Workers sending heartbeats")
        alive.add_metric([], len(self.workers))
        per_worker: dict[str, tuple[str, Callable[[p.WorkerInfo], float]]] = {
            "xb_worker_memory_free_bytes": ("Free memory", lambda w: w.memory.free),
            "xb_worker_memory_total_bytes": ("Total memory", lambda w: w.memory.total),
            "xb_worker_gpu_memory_free_bytes": ("Free GPU memory", lambda w: w.memory.gpu_free),
            "xb_worker_gpu_memory_total_bytes": ("GPU memory", lambda w: w.memory.gpu_total),
            "xb_worker_queue_depth": ("Requests queued on the worker", lambda w: w.queue_depth),
            "xb_worker_in_flight": ("Requests running on the worker", lambda w: w.in_flight),
            "xb_worker_heartbeat_age_seconds": (
                "Since the last heartbeat",
                lambda w: w.heartbeat_age,
            ),
        }
        yield queue
        yield replicas
        yield alive
        for name, (text, read) in per_worker.items():
            family = GaugeMetricFamily(name, text, labels=["worker"])
            for worker in self.workers:
                family.add_metric([worker.worker_id], float(read(worker)))
            yield family
        yield from self._tenants()

    def _tenants(self) -> Iterator[Metric]:
        """Usage by tenant and model since the broker started, as the broker counts it
        (every facade of one broker shows the same), and what runs and waits now."""
        labels = ["tenant", "model"]
        per_row: dict[str, tuple[str, Callable[[p.UsageRow], float]]] = {
            "xb_tenant_requests": ("Requests that ended with an answer", lambda r: r.requests),
            "xb_tenant_prompt_tokens": ("Prompt tokens", lambda r: r.prompt_tokens),
            "xb_tenant_cached_tokens": (
                "Prompt tokens reused from a prefix cache",
                lambda r: r.cached_tokens,
            ),
            "xb_tenant_completion_tokens": ("Completion tokens", lambda r: r.completion_tokens),
            "xb_tenant_preemptions": ("Times requests were preempted", lambda r: r.preemptions),
        }
        rows = self.usage.rows
        for name, (text, read) in per_row.items():
            counter = CounterMetricFamily(name, text, labels=labels)
            for row in rows:
                counter.add_metric([row.tenant, row.model], read(row))
            yield counter
        wait = HistogramMetricFamily(
            "xb_tenant_queue_wait_seconds", "From SUBMIT to dispatch to a replica", labels=labels
        )
        for row in rows:
            cumulative, buckets = 0, []
            for bound, count in zip(p.QUEUE_WAIT_BUCKETS, row.waits, strict=False):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            wait.add_metric([row.tenant, row.model], buckets, row.queue_wait)
        yield wait
        running = GaugeMetricFamily("xb_tenant_running", "Requests running", labels=labels)
        waiting = GaugeMetricFamily("xb_tenant_waiting", "Requests waiting", labels=labels)
        for active in self.usage.active:
            running.add_metric([active.tenant, active.model], active.running)
            waiting.add_metric([active.tenant, active.model], active.waiting)
        yield running
        yield waiting


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "xb_requests",
            "Requests by model, endpoint and HTTP status",
            ["model", "endpoint", "status"],
            registry=self.registry,
        )
        self._ttft = self._per_model(
            "xb_time_to_first_token_seconds", "Time to first token", _LATENCY_BUCKETS
        )
        self._per_token = self._per_model(
            "xb_time_per_output_token_seconds", "Time between output tokens", _TOKEN_BUCKETS
        )
        self._generated = Counter(
            "xb_generated_tokens", "Tokens generated", ["model"], registry=self.registry
        )
        self._prompt = Counter(
            "xb_prompt_tokens", "Prompt tokens read", ["model"], registry=self.registry
        )
        self._reused = Counter(
            "xb_prompt_tokens_reused",
            "Prompt tokens taken from a replica's prefix cache",
            ["model"],
            registry=self.registry,
        )
        self._computed = Counter(
            "xb_prompt_tokens_computed",
            "Prompt tokens the model had to compute",
            ["model"],
            registry=self.registry,
        )
        self._drafted = Counter(
            "xb_draft_tokens",
            "Tokens drafted by speculative decoding and checked by the model",
            ["model"],
            registry=self.registry,
        )
        self._accepted = Counter(
            "xb_draft_tokens_accepted",
            "Drafted tokens the model agreed with (each one a decoding step saved)",
            ["model"],
            registry=self.registry,
        )
        self._acceptance = Gauge(
            "xb_draft_acceptance_rate",
            "Drafted tokens accepted, over those drafted, since the facade started",
            ["model"],
            registry=self.registry,
        )
        self._draft_counts: dict[str, tuple[int, int]] = {}  # per model: drafted, accepted
        self.cluster: _ClusterCollector = _ClusterCollector()
        self.registry.register(self.cluster)

    def _per_model(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, ["model"], buckets=buckets, registry=self.registry)

    def request(self, model: str, endpoint: str, status: int) -> None:
        self._requests.labels(model, endpoint, str(status)).inc()

    def ttft(self, model: str, seconds: float) -> None:
        self._ttft.labels(model).observe(seconds)

    def per_token(self, model: str, seconds: float) -> None:
        self._per_token.labels(model).observe(seconds)

    def tokens(self, model: str, prompt: int, generated: int, cached: int = 0) -> None:
        self._prompt.labels(model).inc(prompt)
        self._reused.labels(model).inc(cached)
        self._computed.labels(model).inc(prompt - cached)
        self._generated.labels(model).inc(generated)

    def drafts(self, model: str, accepted: int, rejected: int) -> None:
        """What speculative decoding drafted for one answer."""
        if not accepted + rejected:
            return
        self._drafted.labels(model).inc(accepted + rejected)
        self._accepted.labels(model).inc(accepted)
        drafted, kept = self._draft_counts.get(model, (0, 0))
        drafted, kept = drafted + accepted + rejected, kept + accepted
        self._draft_counts[model] = drafted, kept
        self._acceptance.labels(model).set(kept / drafted)

    def render(
        self,
        models: list[p.ModelInfo],
        workers: list[p.WorkerInfo],
        broker: p.BrokerStats,
        usage: p.UsageReport | None = None,
    ) -> bytes:
        """``usage``: the broker's lifetime counts by tenant and model."""
        self.cluster.models, self.cluster.workers, self.cluster.broker = models, workers, broker
        self.cluster.usage = usage or p.UsageReport("", [])
        return generate_latest(self.registry)
