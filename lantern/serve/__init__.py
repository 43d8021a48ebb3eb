"""`lantern serve`: an OpenAI- and Ollama-compatible HTTP server over the batch engine.

The HTTP layer is thin: `app.py` (the FastAPI app: auth, CORS, health, metrics, access log,
errors), `openai.py` and `ollama.py` (request parsing and response shapes of each API),
`service.py` (what they share: limits, model names, running requests on the engine),
`metrics.py` (Prometheus). Generation is `lantern.generate.batch.BatchEngine`, structured
output `lantern.generate.constrained` and tool calls `lantern.generate.tools`: all usable
without HTTP.
"""

from .app import attach, create_app

__all__ = ["attach", "create_app"]
