"""Prometheus metrics of one server (its own registry, so several apps can live in one process) and the structured
access log."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..timing import StageEvent

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
access_log = logging.getLogger("diffrt.serve.access")


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # the process's memory, CPU and start time (process_*), per replica
        self.requests = Counter(
            "diffrt_http_requests_total", "HTTP requests by route and status", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "diffrt_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("diffrt_queue_depth", "Jobs waiting per model", ["model"], registry=r)
        self.in_flight = Gauge("diffrt_jobs_in_flight", "Jobs running per model", ["model"], registry=r)
        self.unet_batch = Histogram(
            "diffrt_unet_batch_requests",
            "Requests sharing one UNet run (step-level batching)",
            ["model"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.unet_rows = Histogram(
            "diffrt_unet_batch_rows", "UNet rows per run", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.stage_seconds = Histogram(
            "diffrt_stage_seconds",
            "Pipeline stage latency (text encoder, UNet run, scheduler step, VAE)",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "diffrt_job_seconds",
            "End-to-end job latency, queue wait included",
            ["model", "state"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "diffrt_queue_wait_seconds", "Time jobs wait in the queue", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter("diffrt_images_generated_total", "Images generated", ["model"], registry=r)
        self.errors = Counter(
            "diffrt_errors_total", "Failed or cancelled jobs and error responses", ["kind"], registry=r
        )

    # ----- hooks the server installs ----------------------------------------------------------------------------
    def stage_hook(self, model: str):
        def hook(event: StageEvent) -> None:
            self.stage_seconds.labels(model, event.stage).observe(event.seconds)

        return hook

    def batch_hook(self, model: str):
        def hook(calls: int, rows: int, seconds: float) -> None:
            self.unet_batch.labels(model).observe(calls)
            self.unet_rows.labels(model).observe(rows)

        return hook

    def queue(self, model: str, depth: int, running: int) -> None:
        self.queue_depth.labels(model).set(depth)
        self.in_flight.labels(model).set(running)

    def job_finished(self, model: str, job: Any) -> None:
        end = job.finished or time.time()
        self.job_seconds.labels(model, job.state).observe(end - job.created)
        if job.started is not None:
            self.queue_seconds.labels(model).observe(job.started - job.created)
        if job.state == "done":
            self.images.labels(model).inc(len(job.images))
        else:
            self.errors.labels(f"job_{job.state}").inc()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(f"http_{status}").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def log_access(**fields: Any) -> None:
    """One JSON line per request on the ``diffrt.serve.access`` logger."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(json.dumps(fields, separators=(",", ":"), default=str))
