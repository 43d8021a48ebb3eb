"""`/metrics`: the server's Prometheus metrics (prometheus-client), one registry per app.

What is measured:

- `lantern_requests_total{endpoint, status}`: HTTP requests answered, by route and status code;
  `lantern_request_seconds{endpoint}`: how long each took, to the last byte.
- `lantern_prompt_tokens_total`, `lantern_generation_tokens_total`: prompt tokens of the
  requests served and tokens they generated.
- `lantern_queue_waiting`, `lantern_sequences_running`: requests waiting for a slot, and
  sequences decoding (read from the engine when scraped).
- `lantern_kv_tokens` (tokens held in the KV caches, idle slots kept for prefix reuse included),
  `lantern_kv_reserved_tokens` (the part of the budget running sequences reserved),
  `lantern_kv_budget_tokens` (`--ctx-size`).
- `lantern_time_to_first_token_seconds`: from submission to the engine to the first token;
  `lantern_inter_token_latency_seconds`: between consecutive tokens of one sequence.
- `lantern_batch_sequences`: sequences in each pass the engine ran (a histogram: its buckets
  above 1 show requests were batched, not served one at a time); `lantern_batch_tokens`,
  `lantern_pass_seconds`: tokens and seconds per pass.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..generate.batch import BATCH_BUCKETS, StepStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The metrics of one server. `bind(engine)` points the gauges at an engine (when the model
    has loaded) and makes it report its passes here."""

    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lantern_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram("lantern_request_seconds", "Seconds per HTTP request, to the last byte",
                                         ["endpoint"], buckets=_REQUEST_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lantern_prompt_tokens", "Prompt tokens of the requests served", registry=r)
        self.generation_tokens = Counter("lantern_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("lantern_time_to_first_token_seconds",
                              "Seconds from a request's submission to the engine to its first token",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("lantern_inter_token_latency_seconds",
                             "Seconds between consecutive tokens of one sequence", buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_sequences = Histogram("lantern_batch_sequences", "Sequences in each pass the engine ran",
                                         buckets=BATCH_BUCKETS, registry=r)
        self.batch_tokens = Histogram("lantern_batch_tokens", "Tokens in each pass the engine ran",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.pass_seconds = Histogram("lantern_pass_seconds", "Seconds per engine pass",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.waiting = Gauge("lantern_queue_waiting", "Requests waiting for a slot", registry=r)
        self.running = Gauge("lantern_sequences_running", "Sequences being decoded", registry=r)
        self.kv_tokens = Gauge("lantern_kv_tokens", "Tokens held in the KV caches (idle slots included)", registry=r)
        self.kv_reserved = Gauge("lantern_kv_reserved_tokens", "KV tokens reserved by running sequences", registry=r)
        self.kv_budget = Gauge("lantern_kv_budget_tokens", "The KV budget shared by all sequences (--ctx-size)",
                               registry=r)
        self.ready = Gauge("lantern_ready", "1 once the model is loaded and the server answers requests", registry=r)

    def bind(self, engine) -> None:
        self.waiting.set_function(lambda: engine.waiting)
        self.running.set_function(lambda: engine.running)
        self.kv_tokens.set_function(lambda: engine.kv_tokens)
        self.kv_reserved.set_function(lambda: engine.reserved)
        self.kv_budget.set(engine.ctx_size)
        previous = engine.on_step

        def on_step(stats: StepStats) -> None:
            self.on_step(stats)
            if previous is not None:
                previous(stats)

        engine.on_step = on_step
        self.ready.set(1)

    def on_step(self, stats: StepStats) -> None:
        self.batch_sequences.observe(stats.sequences)
        self.batch_tokens.observe(stats.tokens)
        self.pass_seconds.observe(stats.seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
