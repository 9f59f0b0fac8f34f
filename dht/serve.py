"""``dht serve``: a trained run behind an HTTP JSON endpoint, with requests batched together.

Endpoints: ``POST /predict`` with ``{"texts": ["...", ...]}`` answers ``{"predictions": [...]}`` (one
``TextPrediction`` per text, in order); ``GET /health``; ``GET /info`` (the run's method, options,
classes, test scores and FLOP ratios, and the server's limits).

Requests that arrive within ``max_wait_ms`` of each other are predicted as one list, so DHT's depth
queues and FastBERT's exits run on full batches rather than one text at a time; a single worker thread
runs the model, so predictions never interleave. The body is read as JSON whatever its Content-Type (curl's
``-d`` sends form encoding). Malformed JSON, a non-string text and an empty list are answered 422, too many
texts or too long a text 413, a body over the byte limit 413 (one without a Content-Length 411), each with a
one-line message naming what is wrong;
none of them reaches the model, and an error inside one prediction is answered 500 to the requests of
that batch only.

Why FastAPI with uvicorn: request validation with clear 4xx messages (pydantic), an asyncio loop on
which micro-batching is a queue and a timer, and a server that is the common choice for Python model
serving; writing HTTP parsing, validation and limits ourselves is what the project is not for.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, StrictStr, ValidationError

from dht.classifier import Classifier, TextPrediction

FLAGS = ("max_texts", "max_chars", "max_wait_ms")  # the limits dht serve takes as flags


@dataclass(frozen=True)
class Limits:
    """What one request may carry, and how long a request waits for others to share its batch."""

    max_texts: int = 256  # texts per request
    max_chars: int = 20_000  # characters per text (the tokenizer keeps the first max_length tokens anyway)
    max_body_bytes: int = 4_000_000  # request body
    max_wait_ms: float = 5.0  # a request waits at most this long for others to join its batch
    max_batch_texts: int = 512  # texts predicted together at most

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not value > 0:
                flag = f"--{name.replace('_', '-')}" if name in FLAGS else f"Limits.{name}"
                raise ValueError(f"{flag} must be > 0, got {value}")


class PredictRequest(BaseModel):
    texts: list[StrictStr]


def request_texts(body: bytes) -> list[str]:
    """The texts of a ``/predict`` body, JSON whatever the Content-Type; an HTTPException 422 with one line
    naming the first thing wrong (pydantic's check: the location, then its message)."""
    try:
        return PredictRequest.model_validate_json(body).texts
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise HTTPException(422, f'{where}: {first["msg"]} (send {{"texts": ["...", ...]}})') from None


class Batcher:
    """Collects concurrent requests' texts and predicts them as one list on a single worker thread."""

    def __init__(self, classifier: Classifier, limits: Limits) -> None:
        self.classifier = classifier
        self.limits = limits
        self.queue: asyncio.Queue[tuple[list[str], asyncio.Future]] = asyncio.Queue()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dht-predict")
        self.batches = 0  # batches predicted, for /info
        self.carry: tuple[list[str], asyncio.Future] | None = None  # a request that did not fit the last batch

    async def predict(self, texts: list[str]) -> list[TextPrediction]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def run(self) -> None:
        """Forever: take the first waiting request, gather others for up to ``max_wait_ms`` (or until
        ``max_batch_texts``), predict them together, answer each with its own slice."""
        loop = asyncio.get_running_loop()
        while True:
            first, self.carry = self.carry or await self.queue.get(), None
            items = [first]
            count = len(first[0])
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while count < self.limits.max_batch_texts:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if count + len(item[0]) > self.limits.max_batch_texts:
                    self.carry = item  # it starts the next batch
                    break
                items.append(item)
                count += len(item[0])
            texts = [text for request, _ in items for text in request]
            try:
                rows = await loop.run_in_executor(self.worker, self.classifier.predict, texts)
            except Exception as error:  # answer this batch's requests; the server keeps serving
                for _, future in items:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            start = 0
            for request, future in items:
                if not future.done():  # a client that went away leaves a cancelled future
                    future.set_result(rows[start:start + len(request)])
                start += len(request)


def create_app(classifier: Classifier, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI application serving ``classifier``; its batcher starts and stops with the app."""
    batcher = Batcher(classifier, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.worker.shutdown(wait=False)

    app = FastAPI(title="dht", summary=f"{classifier.method} run {classifier.path}", lifespan=lifespan)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if request.method == "POST" and length is None:  # a chunked body could exceed any limit unseen
            return JSONResponse({"detail": "a request body needs a Content-Length header"}, status_code=411)
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            return JSONResponse({"detail": f"request body over {limits.max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {**classifier.info(), "limits": limits.__dict__, "batches": batcher.batches}

    @app.post("/predict", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(request: Request) -> dict[str, Any]:
        texts = request_texts(await request.body())
        if not texts:
            raise HTTPException(422, "texts is empty: send a list of one or more strings")
        if len(texts) > limits.max_texts:
            raise HTTPException(413, f"{len(texts)} texts: at most {limits.max_texts} per request")
        for i, text in enumerate(texts):
            if len(text) > limits.max_chars:
                raise HTTPException(413, f"texts[{i}] has {len(text)} characters: at most {limits.max_chars}")
        rows = await batcher.predict(texts)
        return {"predictions": [row.to_dict() for row in rows]}

    return app


def serve(classifier: Classifier, host: str, port: int, limits: Limits = Limits()) -> None:
    """Serve ``classifier`` on ``host:port`` until interrupted (uvicorn, one process)."""
    import uvicorn

    uvicorn.run(create_app(classifier, limits), host=host, port=port, log_level="info")
