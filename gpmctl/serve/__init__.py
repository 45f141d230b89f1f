"""`gpmctl serve`: the model as an HTTP service (app: the endpoints; batcher: dynamic batching across requests).

Needs the `serve` extra (fastapi, uvicorn); nothing here is imported by the other commands."""
