"""The ASR HTTP service: a trained Paraformer behind FastAPI, with a micro-batcher.

    app = create_app("runs/asr-speech/<time>-<id>", max_batch=8, max_wait_ms=5)
    uvicorn.run(app, host="127.0.0.1", port=8000)      # or: python experiments/asr_serve.py --run RUN

Endpoints:

    POST /v1/transcribe   application/json      {"features": [[f_11, ..., f_1F], ...]}   ([T, F] numbers)
                          multipart/form-data   a WAV file in the field "file" (curl -F file=@clip.wav)
                          audio/wav             the WAV file as the body
        -> 200 {"text", "tokens", "timestamps": [[start_s, end_s], ...], "rtf", "audio_seconds", "batch_size"}
    GET  /healthz         {"status": "ok"}: ready; the model is loaded (and checked) in `create_app`,
                          before the server opens its port, so a 200 means it can transcribe
    GET  /v1/model        checkpoint and step, config summary, vocabulary size, feature dim, limits

The model is loaded once (`funcml.asr.task.load_model`: names, shapes and dtypes checked)
and evaluated with the pure `funcml.nn.model.apply` in eval mode (`task.transcribe_features`).
WAV input may be integer PCM (8/16/24/32-bit), IEEE float (32/64-bit) or WAVE_FORMAT_EXTENSIBLE
of either (any channel count, averaged; common sample rates, resampled to the front end's); it
goes through the same front end as training. A model trained on
toy features has no front end and accepts features only.

Batching. Requests are validated completely before they enter the queue, so a batch never
holds a bad item. A `MicroBatcher` worker takes the first waiting request, waits at most
`max_wait_ms` for the queue to hold `max_batch` (not at all if it already does), and runs
up to `max_batch` items as one padded batch on a single worker thread, off the event loop;
requests that arrive while a batch runs form the next one, so batches grow with
concurrency. The front end of WAV requests runs on the same thread. The wait is paid by a
lone request: `max_wait_ms=0` gives the lowest latency at concurrency 1, a few ms fuller
batches under load (benchmarks/asr_load.py measures both).

    rtf_i = frontend_s_i / audio_s_i + model_s / sum_j audio_s_j

is the compute of request `i` per second of its audio, the batch's model time shared in
proportion to audio (as `task.evaluate` measures batched RTF). Feature input counts
`T * feature_shift` seconds (10 ms per toy frame; the front end's hop times LFR's n).

Errors. Every bad request gets a 4xx and `{"error": CODE, "message": TEXT}`; the service
keeps running and the next request is served:

    400 malformed_json, malformed_multipart
    404 not_found; 405 method_not_allowed; 408 body_timeout (no body bytes for body_timeout_s)
    413 body_too_large (> max_body_bytes), too_long (> max_audio_seconds, or max_frames frames)
    415 unsupported_media_type (not JSON, multipart/form-data or audio/wav)
    422 missing_features, bad_shape (not [T, F], ragged, F != the model's), bad_dtype (not numbers),
        non_finite (NaN / Inf), empty_features, too_short (fewer frames than the encoder needs),
        missing_file, empty_audio, bad_wav (not a PCM / float WAV, compressed, truncated, damaged),
        bad_sample_width (not 8/16/24/32-bit PCM or 32/64-bit float),
        bad_sample_rate, audio_not_supported (a toy-feature model), bad_input (any other funcml error)
    499 client_disconnected (logged only: the client is gone);
    503 busy (> max_inflight_bodies bodies, or > max_inflight_bytes body bytes, being received)

A bug (not a bad request) answers 500 `internal_error` in the same JSON form and is logged
with its traceback; the service keeps serving. A client that disconnects while sending its
body is logged as 499 `client_disconnected` (no traceback, not a 500); a body that sends
nothing for `body_timeout_s` gets 408 `body_timeout`; a request that would take the bodies being
received beyond `max_inflight_bodies` bodies or `max_inflight_bytes` bytes (those received so far
plus its declared length) gets 503 `busy` at once. The byte budget is what bounds memory: a
stalled client holds only the bytes it sent, so hundreds of them do not lock legitimate clients
out (measured in benchmarks/asr_load.py --stalled/--disconnecting).

Access log: one JSON line per request on the logger `funcml.asr.serve.access` (INFO):
`{"time", "client", "method", "path", "status", "latency_ms", "bytes_in", "error"}`, where
`bytes_in` counts the body bytes read and `error` is the error code or null, plus
`batch_size` and `audio_seconds` for transcriptions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .. import checkpoint, devices, tree
from ..errors import ConfigError, FuncmlError
from ..trainer import checkpoint_dir
from . import audio as audio_lib
from . import task
from .encoder import encoder_lengths
from .frontend import features as frontend_features
from .frontend import num_frames
from .longform import is_silent
from .paraformer import Transcript

__all__ = ["MicroBatcher", "create_app", "ACCESS_LOGGER", "WAV_TYPES"]

ACCESS_LOGGER = "funcml.asr.serve.access"
WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")

_log = logging.getLogger(__name__)
_access = logging.getLogger(ACCESS_LOGGER)

_INLINE_PARSE_BYTES = 256 * 1024
_MIN_RATE, _MAX_RATE = 4000, 192000      # any rate in between (resampling memory is bounded at odd rates)

In = TypeVar("In")
Out = TypeVar("Out")


class _Reject(Exception):
    """A bad request: answered with `status` and `{"error": code, "message": message}`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# --------------------------------------------------------------------------- micro-batcher


class MicroBatcher(Generic[In, Out]):
    """Group concurrent calls into batches for `fn(items: list[In]) -> list[Out]` (one result per
    item, in order), run on one worker thread so the event loop stays free.

        batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=5.0)
        out = await batcher.submit(item)          # from any number of concurrent coroutines
        y = await batcher.run(g, *args)           # other blocking work, on the same thread
        await batcher.aclose()

    A batch starts when a first item is waiting: the worker waits up to `max_wait_ms` for
    `max_batch` items to be queued (not at all if they are), then takes up to `max_batch`.
    If `fn` raises on a batch of several items, each is retried alone, so an exception
    reaches only the callers whose item fails. Items of callers that went away (cancelled)
    are dropped before the batch runs. The worker starts on the first `submit` in a running
    event loop (and again in a new loop), so it needs no start-up hook.
    """

    def __init__(self, fn: Callable[[list[In]], Sequence[Out]], *, max_batch: int = 8, max_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
        if not (max_wait_ms >= 0 and math.isfinite(max_wait_ms)):
            raise ConfigError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait_s = fn, int(max_batch), max_wait_ms / 1000.0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._running: list[tuple[In, asyncio.Future]] = []   # the batch being computed

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="funcml-asr")
            self._queue, self._full = asyncio.Queue(), asyncio.Event()
            self._task = loop.create_task(self._worker(self._queue, self._full))
            self._loop = loop
        return loop

    async def submit(self, item: In) -> Out:
        """Queue `item` and wait for its result (or its exception)."""
        loop = self._start()
        fut = loop.create_future()
        self._queue.put_nowait((item, fut))
        if self._queue.qsize() >= self.max_batch - 1:  # with the worker's first item, a full batch
            self._full.set()
        return await fut

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the worker thread (serialized with the batches)."""
        loop = self._start()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def aclose(self) -> None:
        """Stop the worker; callers still waiting are cancelled. The thread is released."""
        if self._task is not None and self._loop is asyncio.get_running_loop():
            running = list(self._running)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            waiting = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            for _, fut in waiting + running:
                fut.cancel()
        self._task = self._loop = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _worker(self, queue: asyncio.Queue, full: asyncio.Event) -> None:
        while True:
            self._running = [await queue.get()]  # taken items are in _running until answered
            try:
                if queue.qsize() < self.max_batch - 1 and self.max_wait_s > 0:
                    full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(full.wait(), self.max_wait_s)
                while len(self._running) < self.max_batch and not queue.empty():
                    self._running.append(queue.get_nowait())
                full.clear()
                batch = [(x, fut) for x, fut in self._running if not fut.done()]
                if batch:
                    await self._process(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the worker must outlive any one batch
                _log.exception("micro-batcher: a batch failed outside fn")
                for _, fut in self._running:
                    if not fut.done():
                        fut.set_exception(e)
            finally:
                self._running = []

    async def _call(self, items: list[In]) -> Sequence[Out]:
        out = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, items)
        if len(out) != len(items):
            raise RuntimeError(f"micro-batcher: fn returned {len(out)} results for {len(items)} items")
        return out

    async def _process(self, batch: list[tuple[In, asyncio.Future]]) -> None:
        try:
            results = await self._call([x for x, _ in batch])
        except Exception as e:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(e)
                return
            for item in batch:  # find the failing items: the others still get their answer
                await self._process([item])
            return
        for (_, fut), r in zip(batch, results):
            if not fut.done():
                fut.set_result(r)


# --------------------------------------------------------------------------- decoding the request


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


class _ClientGone(Exception):
    """The client closed the connection before its body arrived: logged as 499, not as a bug."""


async def _read_body(request: Request, limit: int, timeout_s: float = 30.0,
                     counter: tuple[list[int], list[int]] | None = None) -> bytes:
    """The body, refused with 413 as soon as it exceeds `limit` bytes (declared or streamed), with
    408 when no bytes arrive for `timeout_s` seconds, and `_ClientGone` when the client leaves.
    `counter = (totals, mine)`: each chunk's length is added to `totals[1]` and `mine[0]` as it
    arrives (the caller subtracts `mine[0]` when the body is done)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Reject(413, "body_too_large", f"the body has {int(declared)} bytes; the limit is {limit} "
                                             "(--max-body-bytes)")
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout_s)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise _Reject(408, "body_timeout", f"no body bytes arrived for {timeout_s:g} s (--body-timeout-s); "
                                               f"{size} bytes received") from None
        except ClientDisconnect:
            raise _ClientGone(f"the client disconnected after {size} bytes of the body") from None
        size += len(chunk)
        if counter is not None:
            counter[0][1] += len(chunk)
            counter[1][0] += len(chunk)
        if size > limit:
            raise _Reject(413, "body_too_large", f"the body exceeds the limit of {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _features_from_json(body: bytes, *, feature_dim: int, min_frames: int, max_frames: int) -> torch.Tensor:
    """`{"features": [[...], ...]}` -> `[T, F]` float32, every problem a `_Reject` naming it."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise _Reject(400, "malformed_json", f"the body is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or "features" not in doc:
        got = f"an object with keys {sorted(doc)[:5]}" if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
        raise _Reject(422, "missing_features", 'expected a JSON object {"features": [[...], ...]} holding a '
                                               f"[T, {feature_dim}] matrix, got {got}")
    if not isinstance(doc["features"], list):
        raise _Reject(422, "bad_shape", f"features: expected [T, {feature_dim}] as a list of T rows, got a JSON "
                                        f"{type(doc['features']).__name__}")
    try:
        arr = np.asarray(doc["features"])
    except (ValueError, TypeError, RecursionError):
        raise _Reject(422, "bad_shape", f"features: rows of different lengths (a ragged array); expected [T, "
                                        f"{feature_dim}]: T rows of {feature_dim} numbers each") from None
    if arr.ndim >= 1 and arr.shape[0] == 0:
        raise _Reject(422, "empty_features", f"features: no frames (T = 0); send at least {min_frames} rows of "
                                             f"{feature_dim} numbers")
    if arr.ndim != 2 or arr.shape[1] != feature_dim:
        raise _Reject(422, "bad_shape", f"features: expected [T, {feature_dim}] (the model's feature dimension), "
                                        f"got shape {tuple(arr.shape)}")
    if arr.dtype.kind not in "iuf":
        what = {"b": "booleans", "U": "strings", "S": "strings"}.get(arr.dtype.kind, "null, non-numeric or "
                                                                                "out-of-range values")
        raise _Reject(422, "bad_dtype", f"features: expected numbers, got {what}")
    t = arr.shape[0]
    if t > max_frames:
        raise _Reject(413, "too_long", f"features: {t} frames exceed the limit of {max_frames} frames "
                                       "(--max-audio-seconds)")
    if t < min_frames:
        raise _Reject(422, "too_short", f"features: {t} frames; the encoder needs at least {min_frames}")
    with np.errstate(over="ignore"):
        x = arr.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        frame, feat = np.argwhere(bad)[0]
        raise _Reject(422, "non_finite", f"features: {int(bad.sum())} of {bad.size} values are NaN or infinite "
                                         f"(or overflow float32), the first at frame {frame}, feature {feat}")
    return torch.from_numpy(x)


def _waveform_from_wav(data: bytes, *, max_seconds: float) -> tuple[torch.Tensor, int]:
    """WAV bytes -> `(waveform [N] float32, sample_rate)`, channels averaged (`audio.decode_wav`:
    integer PCM 8/16/24/32-bit, IEEE float 32/64-bit, WAVE_FORMAT_EXTENSIBLE). A truncated
    upload is refused (a client that sent part of a file gets an error, not a partial text)."""
    if not data:
        raise _Reject(422, "empty_audio", "the audio upload is empty (0 bytes)")
    try:
        x, sr = audio_lib.decode_wav(data, name="the upload", truncated="error")
    except audio_lib.AudioError as e:
        code = {"empty": "empty_audio", "no_samples": "empty_audio", "sample_width": "bad_sample_width"}.get(
            e.reason, "bad_wav")
        problem = str(e).split("; ")[0]  # the file-level hints (read_audio, re-export) do not apply here
        raise _Reject(422, code,
                      f"{problem}; send a PCM or float WAV (convert with: sox in.xxx -b 16 out.wav)") from None
    if x.numel() / sr > max_seconds:
        raise _Reject(413, "too_long", f"the audio lasts {x.numel() / sr:.2f} s; the limit is {max_seconds:g} s "
                                       "(--max-audio-seconds)")
    return x, sr


def _check_rate(sr: int, target: int) -> None:
    if not _MIN_RATE <= sr <= _MAX_RATE:
        raise _Reject(422, "bad_sample_rate", f"the WAV's sample rate {sr} Hz is outside {_MIN_RATE}-{_MAX_RATE} "
                                              "Hz; resample it (e.g. sox in.wav -r 16000 out.wav)")


async def _wav_from_multipart(request: Request, body: bytes) -> bytes:
    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=4, max_fields=16).parse()
    except MultiPartException as e:
        raise _Reject(400, "malformed_multipart", f"the multipart body cannot be parsed ({e})") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        chosen = form.get("file") if isinstance(form.get("file"), UploadFile) else (files[0] if files else None)
        if chosen is None:
            raise _Reject(422, "missing_file", "the multipart upload holds no file; send the WAV in the field "
                                               "'file' (curl -F file=@clip.wav)")
        return await chosen.read()
    finally:
        await form.close()


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class _Model:
    cfg: task.AsrTrainConfig
    params: Any
    tokenizer: Any
    checkpoint: Path
    step: int
    metrics: dict
    feature_dim: int
    feature_shift_s: float   # seconds per input feature frame
    min_frames: int          # the fewest input frames giving one encoder frame


def _load(run_path: str | Path, device: torch.device) -> _Model:
    cfg, params, tok = task.load_model(run_path, device=device)
    ckpt = checkpoint_dir(Path(run_path), best_metric="val/cer", mode="min", trainer="asr_train")
    meta = checkpoint.load_meta(ckpt)
    shift = 0.01 if cfg.data == "toy" else cfg.frontend.hop_ms / 1000.0 * (
        cfg.frontend.lfr_n if cfg.frontend.use_lfr else 1)
    min_frames = next(t for t in range(1, 64) if encoder_lengths(t, cfg.model.encoder) >= 1)
    return _Model(cfg, params, tok, ckpt, int(meta["step"]), dict(meta.get("metrics") or {}),
                  task.feature_dim(cfg), shift, min_frames)


@dataclasses.dataclass(frozen=True)
class _Item:
    features: torch.Tensor   # [T, F] float32, validated
    audio_s: float
    frontend_s: float = 0.0
    silent: bool = False     # a WAV with no frame above -50 dBFS: empty text (the model would invent words)


def _transcribe_batch(model: _Model, items: list[_Item]) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    hyps, _ = task.transcribe_features(model.params, model.cfg, model.tokenizer, [it.features for it in items])
    model_s = time.perf_counter() - t0
    total = sum(it.audio_s for it in items)
    hyps = [Transcript("", [], [], [], []) if it.silent else h for h, it in zip(hyps, items)]
    return [{"text": h.text, "tokens": h.tokens, "timestamps": [[s, e] for s, e in zip(h.starts, h.ends)],
             "rtf": round(it.frontend_s / it.audio_s + model_s / total, 5), "audio_seconds": round(it.audio_s, 3),
             "batch_size": len(items)} for h, it in zip(hyps, items)]


def _wav_features(model: _Model, waveform: torch.Tensor, sr: int) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    fe = model.cfg.frontend
    if sr != fe.sample_rate:
        waveform = audio_lib.resample(waveform, sr, fe.sample_rate)
    feats = frontend_features(waveform, fe)
    return feats, time.perf_counter() - t0


# --------------------------------------------------------------------------- access log


class _AccessLog:
    """Pure ASGI middleware: one JSON line per HTTP request on the access logger."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status, size = [None], [0]  # None: no response was started (the client went away)
        state = scope.setdefault("state", {})

        async def receive_counted():
            msg = await receive()
            if msg["type"] == "http.request":
                size[0] += len(msg.get("body", b""))
            return msg

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive_counted, send_status)
        except Exception:
            status[0] = 500  # answered by Starlette's outermost error handler
            state.setdefault("error", "internal_error")
            raise
        finally:
            client = scope.get("client")
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "client": f"{client[0]}:{client[1]}" if client else None, "method": scope["method"],
                      "path": scope["path"], "status": status[0],
                      "latency_ms": round((time.perf_counter() - t0) * 1000.0, 3), "bytes_in": size[0],
                      "error": state.get("error")}
            for k in ("batch_size", "audio_seconds"):
                if k in state:
                    record[k] = state[k]
            _access.info(json.dumps(record))


# --------------------------------------------------------------------------- the app


def create_app(run_path: str | Path, *, max_batch: int = 8, max_wait_ms: float = 5.0,
               max_body_bytes: int = 8 * 2**20, max_audio_seconds: float = 30.0, body_timeout_s: float = 30.0,
               max_inflight_bodies: int = 4096, max_inflight_bytes: int = 256 * 2**20,
               device: str | torch.device = "cpu") -> FastAPI:
    """The FastAPI app serving the Paraformer of `run_path` (see the module doc).

    Arguments:
        run_path: a run directory (its best checkpoint by val/cer, else its latest) or a
            checkpoint directory (`checkpoints/step_*`).
        max_batch, max_wait_ms: the micro-batcher's batch size and longest wait for a batch to fill.
        max_body_bytes: the largest request body (413 above).
        max_audio_seconds: the longest audio (413 above); for feature input, at most
            `max_audio_seconds / feature_shift` frames.
        body_timeout_s: a body that sends nothing for this long is answered 408 and dropped.
        max_inflight_bodies: bodies being received at once; one more is answered 503 at once.
        max_inflight_bytes: body bytes held by the bodies being received (received so far, plus
            the declared length of a new one); a request beyond it is answered 503 at once.
            Bounds the memory of slow uploads without locking clients out behind stalled ones.
        device: where the model runs (a torch device or a `--device` name: auto, cpu, cuda, cuda:N);
            the WAV decoding and the front end run on the host.

    Raises: `DataError` / `CheckpointError` for a missing or bad run (at start, not per
    request); `ConfigError` for a limit out of range.
    """
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    if not (max_audio_seconds > 0 and math.isfinite(max_audio_seconds)):
        raise ConfigError(f"max_audio_seconds must be a finite number > 0, got {max_audio_seconds}")
    if not (body_timeout_s > 0 and math.isfinite(body_timeout_s)) or max_inflight_bodies < 1:
        raise ConfigError(f"body_timeout_s must be a finite number > 0 and max_inflight_bodies >= 1, got "
                          f"{body_timeout_s} and {max_inflight_bodies}")
    if max_inflight_bytes < max_body_bytes:
        raise ConfigError(f"max_inflight_bytes ({max_inflight_bytes}) must be at least max_body_bytes "
                          f"({max_body_bytes}), or no largest body could ever be received")
    model = _load(run_path, devices.resolve(device) if isinstance(device, str) else torch.device(device))
    inflight = [0, 0]  # bodies being received, their bytes received so far
    batcher: MicroBatcher[_Item, dict] = MicroBatcher(lambda items: _transcribe_batch(model, items),
                                                      max_batch=max_batch, max_wait_ms=max_wait_ms)
    max_frames = int(max_audio_seconds / model.feature_shift_s + 1e-9)
    accepts_audio = model.cfg.data == "speech"

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await batcher.aclose()

    app = FastAPI(title="funcml ASR", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_AccessLog)

    def problem(request: Request, status: int, code: str, message: str) -> JSONResponse:
        request.state.error = code
        return JSONResponse({"error": code, "message": message}, status_code=status)

    @app.exception_handler(_Reject)
    async def _on_reject(request: Request, e: _Reject):
        return problem(request, e.status, e.code, e.message)

    @app.exception_handler(_ClientGone)
    async def _on_client_gone(request: Request, e: _ClientGone):   # nobody to answer; logged, no traceback
        return problem(request, 499, "client_disconnected", str(e))

    @app.exception_handler(FuncmlError)
    async def _on_funcml_error(request: Request, e: FuncmlError):
        return problem(request, 422, "bad_input", str(e))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return problem(request, e.status_code, code, f"{request.method} {request.url.path}: {e.detail}")

    @app.exception_handler(Exception)
    async def _on_bug(request: Request, e: Exception):  # a bug, not a bad request: logged with its traceback
        return problem(request, 500, "internal_error", f"{type(e).__name__}: {e}")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info() -> dict:
        cfg, enc = model.cfg, model.cfg.model.encoder
        return {
            "run": str(run_path), "checkpoint": str(model.checkpoint), "step": model.step, "metrics": model.metrics,
            "data": cfg.data, "accepts": ["features", "wav"] if accepts_audio else ["features"],
            "vocab_size": model.tokenizer.vocab_size, "feature_dim": model.feature_dim,
            "sample_rate": cfg.frontend.sample_rate if accepts_audio else None,
            "feature_shift_s": model.feature_shift_s, "frame_shift_s": task.frame_shift(cfg),
            "model": {"encoder": {"block": enc.block, "input_layer": enc.input_layer, "d_model": enc.d_model,
                                  "num_layers": enc.num_layers, "num_heads": enc.num_heads},
                      "decoder_layers": cfg.model.decoder_layers, "max_tokens": cfg.model.max_tokens,
                      "num_params": tree.num_params(model.params), "device": str(devices.of(model.params))},
            "limits": {"max_batch": batcher.max_batch, "max_wait_ms": batcher.max_wait_s * 1000.0,
                       "max_body_bytes": max_body_bytes, "max_audio_seconds": max_audio_seconds,
                       "max_frames": max_frames, "min_frames": model.min_frames},
        }

    @app.post("/v1/transcribe")
    async def transcribe(request: Request) -> dict:
        kind = _media_type(request)
        if kind != "application/json" and kind != "multipart/form-data" and kind not in WAV_TYPES:
            got = f"Content-Type {kind!r}" if kind else "no Content-Type"
            raise _Reject(415, "unsupported_media_type", f"{got}; send application/json ({{\"features\": [[...]]}}), "
                                                         "multipart/form-data (a WAV in the field 'file') or audio/wav")
        declared = request.headers.get("content-length", "")
        declared_bytes = min(int(declared), max_body_bytes) if declared.isdigit() else 0
        if inflight[0] >= max_inflight_bodies:
            raise _Reject(503, "busy", f"{inflight[0]} request bodies are being received (--max-inflight-bodies); "
                                       "retry later")
        if inflight[1] + declared_bytes > max_inflight_bytes:
            raise _Reject(503, "busy", f"{inflight[1]} body bytes are being received and this body declares "
                                       f"{declared_bytes} (--max-inflight-bytes {max_inflight_bytes}); retry later")
        inflight[0] += 1
        received = [0]
        try:
            body = await _read_body(request, max_body_bytes, body_timeout_s, counter=(inflight, received))
        finally:
            inflight[0] -= 1
            inflight[1] -= received[0]
        if kind == "application/json":
            parse = functools.partial(_features_from_json, body, feature_dim=model.feature_dim,
                                      min_frames=model.min_frames, max_frames=max_frames)
            # a large body takes tens of ms to parse: in a thread, the loop keeps serving meanwhile
            feats = parse() if len(body) < _INLINE_PARSE_BYTES else await asyncio.to_thread(parse)
            item = _Item(feats, feats.shape[0] * model.feature_shift_s)
        else:
            if not accepts_audio:
                raise _Reject(422, "audio_not_supported", "this model was trained on toy features, not audio; send "
                                                          'JSON {"features": [[...], ...]} instead')
            data = await _wav_from_multipart(request, body) if kind == "multipart/form-data" else body
            waveform, sr = _waveform_from_wav(data, max_seconds=max_audio_seconds)
            _check_rate(sr, model.cfg.frontend.sample_rate)
            if num_frames(-(-waveform.numel() * model.cfg.frontend.sample_rate // sr), model.cfg.frontend) < 1:
                raise _Reject(422, "too_short", f"the audio lasts {waveform.numel() / sr * 1000:.1f} ms, shorter than "
                                                f"one {model.cfg.frontend.win_ms:g} ms analysis window")
            feats, frontend_s = await batcher.run(_wav_features, model, waveform, sr)
            if feats.shape[0] < model.min_frames:
                raise _Reject(422, "too_short", f"the audio gives {feats.shape[0]} feature frames; the encoder needs "
                                                f"at least {model.min_frames}")
            item = _Item(feats, waveform.numel() / sr, frontend_s, silent=is_silent(waveform, sr))
        result = await batcher.submit(item)
        request.state.batch_size, request.state.audio_seconds = result["batch_size"], result["audio_seconds"]
        return result

    return app
