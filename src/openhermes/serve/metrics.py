"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("openhermes_requests", "HTTP API requests by path and status", ["path", "status"],
                                registry=r)
        self.prompt_tokens = Counter("openhermes_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.cached_tokens = Counter("openhermes_prompt_tokens_cached", "Prompt tokens of finished requests whose KV "
                                     "was reused from an earlier request (prefix cache, slot reuse)", registry=r)
        self.completion_tokens = Counter("openhermes_completion_tokens", "Generated tokens of finished requests",
                                         registry=r)
        self.cancelled = Counter("openhermes_cancelled_requests", "Requests stopped because the client went away",
                                 registry=r)
        self.queue_depth = Gauge("openhermes_queue_depth", "Requests waiting to join the batch", registry=r)
        self.active = Gauge("openhermes_active_sequences", "Requests decoding in the batch", registry=r)
        self.batch_rows = Histogram("openhermes_batch_rows", "Rows decoded together per step", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.latency = Histogram("openhermes_request_latency_seconds", "Request latency, submit to last token",
                                 registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.ttft = Histogram("openhermes_time_to_first_token_seconds", "Submit to first text", registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def render(self) -> bytes:
        return generate_latest(self.registry)
