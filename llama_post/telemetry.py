"""The process's Prometheus metrics, defined once; `/metrics` serves them.

The server records requests (`llama_post/server/observe.py`), an inference engine its tokens
and first tokens, `LocalJobs` its steps, restarts and failures. What is a state rather than an
event (the decode batch, the jobs by state) is read when scraped, from the live objects that
asked to be watched (`watch`): a set of weak references, so a process that builds many stacks
(the tests) neither keeps them alive nor counts one twice after `forget`.

Names carry their units (`_seconds`, `_total`). Routes are labelled by their template
(`/v1/post-training/jobs/{job_uuid}`), never the raw path, so ids do not multiply the series.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

UNMATCHED = "unmatched"  # the route label of a path no route serves

HTTP_REQUESTS = Counter(
    "llama_post_http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "llama_post_http_request_duration_seconds",
    "Time from a request's arrival to the start of its response (a stream's first byte).",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
GENERATED_TOKENS = Counter(
    "llama_post_inference_generated_tokens_total",
    "Tokens generated, by model (its rate is the tokens per second).",
    ["model"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llama_post_inference_time_to_first_token_seconds",
    "Time from a request joining an engine's queue to its first generated token.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "llama_post_inference_batch_size",
    "Sequences in one forward pass of an engine, by model and phase (prefill or decode).",
    ["model", "phase"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
JOB_STEPS = Counter(
    "llama_post_job_steps_total",
    "Optimizer steps completed by training jobs (a resumed job's replayed steps count once).",
    ["provider"],
)
WORKER_RESTARTS = Counter(
    "llama_post_job_worker_restarts_total",
    "Jobs scheduled again after their worker failed for the machine's reasons.",
    ["provider"],
)
WORKER_FAILURES = Counter(
    "llama_post_job_worker_failures_total",
    "Worker attempts that ended in failure, by reason class.",
    ["provider", "reason"],
)


@runtime_checkable
class Batching(Protocol):
    """An inference engine: the model it serves and the occupancy of its decode batch."""

    name: str
    max_batch: int

    def occupancy(self) -> tuple[int, int]:
        """(sequences in the decode batch, requests waiting to join it)."""
        ...


@runtime_checkable
class JobStore(Protocol):
    """A job runner: its jobs counted by state."""

    provider_id: str

    def count_by_state(self) -> dict[str, int]: ...


class Live(Collector):
    """Gauges read at scrape time from the engines and job runners now alive."""

    def __init__(self) -> None:
        self.watched: weakref.WeakSet[Batching | JobStore] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "llama_post_inference_batch_active_sequences",
            "Sequences in an engine's decode batch.",
            labels=["model"],
        )
        ratio = GaugeMetricFamily(
            "llama_post_inference_batch_occupancy_ratio",
            "Sequences in the decode batch over the engine's max_batch_size.",
            labels=["model"],
        )
        waiting = GaugeMetricFamily(
            "llama_post_inference_queue_waiting_requests",
            "Requests waiting to join an engine's decode batch.",
            labels=["model"],
        )
        jobs = GaugeMetricFamily(
            "llama_post_jobs", "Training jobs by provider and state.", labels=["provider", "state"]
        )
        batches: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        states: dict[tuple[str, str], int] = defaultdict(int)
        for thing in list(self.watched):
            if isinstance(thing, Batching):
                now, queued = thing.occupancy()
                totals = batches[thing.name]
                totals[0] += now
                totals[1] += queued
                totals[2] += thing.max_batch
            if isinstance(thing, JobStore):
                for state, n in thing.count_by_state().items():
                    states[(thing.provider_id, state)] += n
        for model, (now, queued, most) in sorted(batches.items()):
            active.add_metric([model], now)
            ratio.add_metric([model], now / most if most else 0.0)
            waiting.add_metric([model], queued)
        for (provider, state), n in sorted(states.items()):
            jobs.add_metric([provider, state], n)
        yield from (active, ratio, waiting, jobs)


LIVE = Live()
REGISTRY.register(LIVE)


def watch(thing: Batching | JobStore) -> None:
    LIVE.watched.add(thing)


def forget(thing: Batching | JobStore) -> None:
    LIVE.watched.discard(thing)
