"""The ASR HTTP service: endpoints, bad requests (each followed by a good one), batching, logs, CLI."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
import warnings
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from funcml import checkpoint, random
from funcml.asr import audio, speech, task
from funcml.asr.serve import ACCESS_LOGGER, MicroBatcher, create_app
from funcml.errors import ConfigError, DataError

with warnings.catch_warnings():  # starlette asks for httpx2, which is not installed; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
sys.path.insert(0, str(ROOT))

import asr_serve  # noqa: E402

from benchmarks import asr_load  # noqa: E402

TOY_MAX_BODY = 64 * 1024
TOY_MAX_SECONDS = 1.0     # 100 toy frames of 10 ms
SPEECH_MAX_SECONDS = 2.0


# The trained runs are the session's shared ones (tests/conftest.py): asr_toy_run, asr_speech_run.


@pytest.fixture(scope="module")
def toy_client(asr_toy_run):
    with TestClient(create_app(asr_toy_run, max_body_bytes=TOY_MAX_BODY, max_audio_seconds=TOY_MAX_SECONDS)) as client:
        yield client


@pytest.fixture(scope="module")
def speech_client(asr_speech_run):
    with TestClient(create_app(asr_speech_run, max_audio_seconds=SPEECH_MAX_SECONDS)) as client:
        yield client


def _wav_bytes(x: np.ndarray, sr: int = 16000, width: int = 2, channels: int = 1) -> bytes:
    """A PCM WAV of `x` ([N] in [-1, 1], repeated over channels) with `width`-byte samples."""
    scale = {1: 127, 2: 32767, 3: 2**23 - 1}[width]
    ints = np.round(np.repeat(np.asarray(x, dtype=np.float64)[:, None], channels, axis=1) * scale).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.ravel())
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(sr)
        f.writeframes(raw)
    return buf.getvalue()


def _retagged(data: bytes, tag: int) -> bytes:
    """WAV bytes with another format tag in the `fmt ` chunk (a codec the reader does not decode)."""
    return data[:20] + tag.to_bytes(2, "little") + data[22:]


def _float16_wav() -> bytes:
    """A float WAV whose samples claim to be 16-bit (no such IEEE format in WAV)."""
    data = bytearray(audio.encode_wav(torch.zeros(1600), 16000, sample_format="float", bits=32))
    data[32:34] = (2).to_bytes(2, "little")
    return bytes(data)


@pytest.fixture(scope="module")
def clip() -> tuple[bytes, torch.Tensor, int]:
    """A synthesized utterance as 16-bit WAV bytes, and the waveform those bytes decode to."""
    wav, sr = speech.synthesize("four two", voice="en+f3")
    data = _wav_bytes(wav.numpy(), sr)
    decoded = torch.from_numpy(np.frombuffer(data[44:], dtype="<i2").astype(np.float32) / 32768.0)
    return data, decoded, sr


def _feats(seed: int, t: int, f: int = 8) -> torch.Tensor:
    return random.normal(random.key(seed), (t, f))


def _expected(run: Path, feats: list[torch.Tensor]) -> list[dict]:
    """Each feature matrix transcribed alone by `task.transcribe_features`."""
    cfg, params, tok = task.load_model(run)
    out = []
    for x in feats:
        (h,), _ = task.transcribe_features(params, cfg, tok, [x])
        out.append({"text": h.text, "tokens": h.tokens, "timestamps": [[s, e] for s, e in zip(h.starts, h.ends)]})
    return out


def _same_transcript(got: dict, want: dict) -> bool:
    return all(got[k] == want[k] for k in ("text", "tokens", "timestamps"))


# ------------------------------------------------------------------------------------- endpoints


def test_healthz_answers_ok(toy_client):
    r = toy_client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_a_large_json_body_is_parsed_off_the_event_loop_with_the_same_result(asr_toy_run, monkeypatch):
    x = _feats(4, 2000)  # about 330 kB of JSON, above the inline-parse size
    body = json.dumps({"features": x.tolist()}).encode()
    threaded = []
    real = asyncio.to_thread

    async def spy(fn, *args, **kwargs):
        threaded.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    with TestClient(create_app(asr_toy_run)) as client:
        r = client.post("/v1/transcribe", content=body, headers=_J)
    assert len(threaded) == 1 and len(body) > 256 * 1024
    assert r.status_code == 200 and _same_transcript(r.json(), _expected(asr_toy_run, [x])[0])


def test_model_endpoint_reports_step_vocabulary_feature_dim_and_limits(toy_client, asr_toy_run):
    info = toy_client.get("/v1/model").json()
    cfg, params, tok = task.load_model(asr_toy_run)
    assert info["step"] == checkpoint.load_meta(info["checkpoint"])["step"] == cfg.steps
    assert info["vocab_size"] == tok.vocab_size and info["feature_dim"] == 8 and info["accepts"] == ["features"]
    assert info["model"]["encoder"]["d_model"] == cfg.model.encoder.d_model
    assert info["limits"]["max_frames"] == 100 and info["limits"]["max_body_bytes"] == TOY_MAX_BODY


def test_json_features_give_the_transcript_of_transcribe_features(toy_client, asr_toy_run):
    x = _feats(0, 40)
    r = toy_client.post("/v1/transcribe", json={"features": x.tolist()})
    assert r.status_code == 200
    body = r.json()
    assert _same_transcript(body, _expected(asr_toy_run, [x])[0])
    assert body["audio_seconds"] == pytest.approx(0.4) and body["rtf"] > 0 and body["batch_size"] == 1


def test_wav_upload_gives_the_transcript_of_the_offline_pipeline(speech_client, asr_speech_run, clip):
    data, decoded, sr = clip
    r = speech_client.post("/v1/transcribe", files={"file": ("clip.wav", data, "audio/wav")})
    assert r.status_code == 200
    cfg, params, tok = task.load_model(asr_speech_run)
    hyp, _, _ = task.transcribe_waveform(params, cfg, tok, decoded, sr)
    body = r.json()
    assert body["text"] == hyp.text and body["tokens"] == hyp.tokens
    assert body["timestamps"] == [[s, e] for s, e in zip(hyp.starts, hyp.ends)]
    assert body["audio_seconds"] == pytest.approx(decoded.numel() / sr, abs=1e-3)


def test_raw_wav_body_is_transcribed_like_a_multipart_upload(speech_client, clip):
    data = clip[0]
    raw = speech_client.post("/v1/transcribe", content=data, headers={"content-type": "audio/x-wav"}).json()
    multi = speech_client.post("/v1/transcribe", files={"file": ("clip.wav", data)}).json()
    assert _same_transcript(raw, multi)


@pytest.mark.parametrize("fmt", [("pcm", 24, False), ("pcm", 32, False), ("float", 32, False), ("float", 64, False),
                                 ("pcm", 16, True), ("float", 32, True)],
                         ids=["pcm24", "pcm32", "float32", "float64", "extensible_pcm16", "extensible_float32"])
def test_wav_in_any_pcm_or_float_format_gives_the_16bit_transcript(speech_client, clip, fmt):
    # `decoded` holds multiples of 1/32768: every one of these formats stores them exactly.
    data, decoded, sr = clip
    want = speech_client.post("/v1/transcribe", content=data, headers=_W).json()
    stereo = torch.stack([decoded, decoded])
    other = audio.encode_wav(stereo, sr, sample_format=fmt[0], bits=fmt[1], extensible=fmt[2])
    got = speech_client.post("/v1/transcribe", content=other, headers=_W)
    assert got.status_code == 200, got.text
    assert _same_transcript(got.json(), want)


@pytest.mark.parametrize("rate", [44100, 44101])
def test_wav_at_44100_hz_in_stereo_is_resampled_and_mixed_down(speech_client, asr_speech_run, clip, rate):
    _, decoded, sr = clip
    x = audio.resample(decoded, sr, rate).clamp(-1, 1).numpy()
    data = _wav_bytes(x, rate, channels=2)
    r = speech_client.post("/v1/transcribe", content=data, headers={"content-type": "audio/wav"})
    cfg, params, tok = task.load_model(asr_speech_run)
    mono = torch.from_numpy(np.frombuffer(data[44:], dtype="<i2")[::2].astype(np.float32) / 32768.0)
    hyp, _, _ = task.transcribe_waveform(params, cfg, tok, mono, rate)
    assert r.status_code == 200 and r.json()["text"] == hyp.text


def test_unknown_route_and_wrong_method_get_json_errors(toy_client):
    r = toy_client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = toy_client.get("/v1/transcribe")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


# ------------------------------------------------------------------------------------ bad requests

_J = {"content-type": "application/json"}
_W = {"content-type": "audio/wav"}
_ROW = ", ".join(["0.5"] * 7)

# (id, client, request kwargs, status, error code, a fragment of the message)
BAD = [
    ("malformed_json", "toy", dict(content=b'{"features": [[1, 2', headers=_J), 400, "malformed_json",
     "not valid JSON"),
    ("json_list_not_object", "toy", dict(json=[[0.0] * 8]), 422, "missing_features", "got a JSON list"),
    ("missing_features_key", "toy", dict(json={"feats": [[0.0] * 8]}), 422, "missing_features", "['feats']"),
    ("wrong_feature_dim", "toy", dict(json={"features": [[0.0] * 9] * 4}), 422, "bad_shape", "[T, 8]"),
    ("ragged_rows", "toy", dict(json={"features": [[0.0] * 8, [0.0] * 7]}), 422, "bad_shape", "ragged"),
    ("one_dimensional", "toy", dict(json={"features": [0.0] * 8}), 422, "bad_shape", "got shape (8,)"),
    ("strings", "toy", dict(json={"features": [["a"] * 8]}), 422, "bad_dtype", "strings"),
    ("nulls", "toy", dict(json={"features": [[None] * 8]}), 422, "bad_dtype", "null"),
    ("features_not_a_list", "toy", dict(json={"features": "0.5 0.5"}), 422, "bad_shape", "got a JSON str"),
    ("nan", "toy", dict(content=f'{{"features": [[{_ROW}, NaN]]}}'.encode(), headers=_J), 422, "non_finite",
     "NaN or infinite"),
    ("float32_overflow", "toy", dict(json={"features": [[1e39] * 8]}), 422, "non_finite", "overflow float32"),
    ("empty_features", "toy", dict(json={"features": []}), 422, "empty_features", "T = 0"),
    ("too_many_frames", "toy", dict(json={"features": [[0.0] * 8] * 101}), 413, "too_long", "limit of 100 frames"),
    ("body_too_large", "toy", dict(content=b" " * (TOY_MAX_BODY + 1) + b"{}", headers=_J), 413, "body_too_large",
     f"limit is {TOY_MAX_BODY}"),
    ("text_plain", "toy", dict(content=b"hello", headers={"content-type": "text/plain"}), 415,
     "unsupported_media_type", "'text/plain'"),
    ("no_content_type", "toy", dict(content=b"hello"), 415, "unsupported_media_type", "no Content-Type"),
    ("wav_to_toy_model", "toy", dict(content=_wav_bytes(np.zeros(1600)), headers=_W), 422, "audio_not_supported",
     "toy features"),
    ("empty_upload", "speech", dict(files={"file": ("a.wav", b"")}), 422, "empty_audio", "0 bytes"),
    ("wav_without_samples", "speech", dict(content=_wav_bytes(np.zeros(0)), headers=_W), 422, "empty_audio",
     "no audio samples"),
    ("float16_wav", "speech", dict(content=_float16_wav(), headers=_W), 422, "bad_sample_width",
     "16 bits"),
    ("truncated_wav", "speech", dict(content=audio.encode_wav(torch.zeros(1600), 16000)[:-1000], headers=_W), 422,
     "bad_wav", "truncated"),
    ("alaw_wav", "speech", dict(files={"file": ("a.wav", _retagged(audio.encode_wav(torch.zeros(1600), 16000), 6))}),
     422, "bad_wav", "A-law"),
    ("not_a_wav", "speech", dict(content=b"ID3 this is an mp3, honest", headers=_W), 422, "bad_wav",
     "MP3 audio, not a WAV file"),
    ("audio_too_long", "speech", dict(content=_wav_bytes(np.zeros(3 * 16000)), headers=_W), 413, "too_long",
     "3.00 s; the limit is 2 s"),
    ("audio_too_short", "speech", dict(content=_wav_bytes(np.zeros(100)), headers=_W), 422, "too_short", "25 ms"),
    ("sample_rate_too_low", "speech", dict(content=_wav_bytes(np.zeros(3000), sr=3000), headers=_W), 422,
     "bad_sample_rate", "3000 Hz is outside 4000-192000 Hz"),
    ("multipart_without_file", "speech", dict(data={"note": "hi"}, files={"other": (None, "x")}), 422,
     "missing_file", "field 'file'"),
    ("multipart_without_boundary", "speech", dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
     400, "malformed_multipart", "boundary"),
    ("speech_features_wrong_dim", "speech", dict(json={"features": [[0.0] * 8] * 20}), 422, "bad_shape", "[T, 80]"),
]


@pytest.fixture(scope="module")
def good_requests(asr_toy_run, speech_client, clip):
    """For each client, a good request and the answer it must keep getting."""
    x = _feats(1, 30)
    speech_answer = speech_client.post("/v1/transcribe", content=clip[0], headers=_W).json()
    return {"toy": (dict(json={"features": x.tolist()}), _expected(asr_toy_run, [x])[0]),
            "speech": (dict(content=clip[0], headers=_W), speech_answer)}


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_request_gets_a_4xx_naming_the_problem_and_the_next_good_request_succeeds(
        case, toy_client, speech_client, good_requests):
    _, which, kwargs, status, code, fragment = case
    client = toy_client if which == "toy" else speech_client
    r = client.post("/v1/transcribe", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and fragment in body["message"], body
    good, answer = good_requests[which]
    ok = client.post("/v1/transcribe", **good)
    assert ok.status_code == 200 and _same_transcript(ok.json(), answer)


def test_a_bug_in_inference_gives_a_json_500_and_the_service_recovers(asr_toy_run, monkeypatch):
    x = _feats(3, 20)
    real = task.transcribe_features

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    with TestClient(create_app(asr_toy_run), raise_server_exceptions=False) as client:
        monkeypatch.setattr(task, "transcribe_features", broken)
        r = client.post("/v1/transcribe", json={"features": x.tolist()})
        assert r.status_code == 500
        assert r.json() == {"error": "internal_error", "message": "RuntimeError: simulated bug"}
        monkeypatch.setattr(task, "transcribe_features", real)
        ok = client.post("/v1/transcribe", json={"features": x.tolist()})
        assert ok.status_code == 200 and _same_transcript(ok.json(), _expected(asr_toy_run, [x])[0])


# ---------------------------------------------------------------------------------- access log


def test_access_log_writes_one_json_line_per_request_with_latency(toy_client, caplog):
    bad = json.dumps({"features": [[0.0] * 9]}).encode()
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        toy_client.get("/healthz")
        toy_client.post("/v1/transcribe", json={"features": _feats(2, 20).tolist()})
        toy_client.post("/v1/transcribe", content=bad, headers=_J)
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == ACCESS_LOGGER]
    assert [(x["method"], x["path"], x["status"], x["error"]) for x in lines] == [
        ("GET", "/healthz", 200, None), ("POST", "/v1/transcribe", 200, None),
        ("POST", "/v1/transcribe", 422, "bad_shape")]
    assert all(x["latency_ms"] > 0 for x in lines)
    assert lines[1]["batch_size"] == 1 and lines[1]["audio_seconds"] == pytest.approx(0.2)
    assert lines[2]["bytes_in"] == len(bad)


# ------------------------------------------------------------------------------------ batching


def test_concurrent_requests_share_batches_and_each_gets_its_own_transcript(asr_toy_run):
    app = create_app(asr_toy_run, max_batch=4, max_wait_ms=500)
    feats = [_feats(10 + i, 12 + 3 * i) for i in range(8)]

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.gather(*(client.post("/v1/transcribe", json={"features": x.tolist()})
                                              for x in feats))

    replies = [r.json() for r in asyncio.run(go())]
    assert sorted(r["batch_size"] for r in replies) == [4] * 8
    for got, want in zip(replies, _expected(asr_toy_run, feats)):
        assert _same_transcript(got, want)


def _run_batcher(fn, items, **kw):
    async def go():
        batcher = MicroBatcher(fn, **kw)
        try:
            return await asyncio.gather(*(batcher.submit(x) for x in items), return_exceptions=True)
        finally:
            await batcher.aclose()

    return asyncio.run(go())


def test_micro_batcher_never_exceeds_max_batch_and_keeps_the_order():
    sizes = []

    def double(xs):
        sizes.append(len(xs))
        return [2 * x for x in xs]

    assert _run_batcher(double, list(range(10)), max_batch=4, max_wait_ms=200) == [2 * x for x in range(10)]
    assert sizes == [4, 4, 2]


def test_micro_batcher_runs_a_lone_item_after_max_wait():
    def identity(xs):
        return xs

    t0 = time.perf_counter()
    assert _run_batcher(identity, ["a"], max_batch=8, max_wait_ms=50) == ["a"]
    assert time.perf_counter() - t0 >= 0.05


def test_micro_batcher_fails_only_the_failing_item_of_a_batch():
    calls = []

    def strict(xs):
        calls.append(list(xs))
        if any(x < 0 for x in xs):
            raise ValueError(f"negative item in {xs}")
        return [x + 1 for x in xs]

    out = _run_batcher(strict, [1, -1, 2], max_batch=8, max_wait_ms=200)
    assert out[0] == 2 and out[2] == 3 and isinstance(out[1], ValueError)
    assert calls == [[1, -1, 2], [1], [-1], [2]]


def test_micro_batcher_runs_batches_off_the_event_loop():
    def slow(xs):
        time.sleep(0.3)
        return xs

    async def go():
        batcher = MicroBatcher(slow, max_batch=2, max_wait_ms=0)
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        await batcher.submit(1)
        ticker.cancel()
        await batcher.aclose()
        return ticks

    assert asyncio.run(go()) >= 5


@pytest.mark.parametrize("max_batch, max_wait_ms", [(1, 0), (4, 1000)], ids=["while_computing", "while_filling"])
def test_micro_batcher_close_cancels_every_caller_still_waiting(max_batch, max_wait_ms):
    def slow(xs):
        time.sleep(0.2)
        return xs

    async def go():
        batcher = MicroBatcher(slow, max_batch=max_batch, max_wait_ms=max_wait_ms)
        calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.05)  # a batch is running (or filling), the other callers wait
        await batcher.aclose()
        await asyncio.wait(calls, timeout=5)
        return [c.cancelled() for c in calls]

    assert asyncio.run(go()) == [True, True, True]


def test_micro_batcher_rejects_bad_settings():
    with pytest.raises(ConfigError, match="max_batch"):
        MicroBatcher(lambda xs: xs, max_batch=0)
    with pytest.raises(ConfigError, match="max_wait_ms"):
        MicroBatcher(lambda xs: xs, max_wait_ms=-1)


# ---------------------------------------------------------------------------------- start-up, CLI


def test_create_app_names_a_missing_run_and_rejects_bad_limits(tmp_path, asr_toy_run):
    with pytest.raises(DataError, match="does not exist"):
        create_app(tmp_path / "nope")
    with pytest.raises(ConfigError, match="max_audio_seconds"):
        create_app(asr_toy_run, max_audio_seconds=0)
    with pytest.raises(ConfigError, match="max_body_bytes"):
        create_app(asr_toy_run, max_body_bytes=0)


def test_cli_builds_the_app_from_its_flags(asr_toy_run):
    cfg, app = asr_serve.build(["--run", str(asr_toy_run), "--max-batch", "3", "--max-audio-seconds", "2",
                                "--port", "8123"])
    assert (cfg.host, cfg.port) == ("127.0.0.1", 8123)
    with TestClient(app) as client:
        limits = client.get("/v1/model").json()["limits"]
    assert limits["max_batch"] == 3 and limits["max_frames"] == 200


def test_cli_reports_a_missing_run_in_one_line_and_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        asr_serve.main(["--run", str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err


def test_load_script_percentile_interpolates_between_order_statistics():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert asr_load._percentile(xs, 0) == 1.0 and asr_load._percentile(xs, 100) == 4.0
    assert asr_load._percentile(xs, 50) == 2.5
    assert asr_load._percentile(xs, 99) == pytest.approx(3.97)


def test_silence_gets_empty_text(speech_client):
    r = speech_client.post("/v1/transcribe", content=_wav_bytes(np.zeros(16000)), headers=_W)
    assert r.status_code == 200 and r.json()["text"] == "" and r.json()["tokens"] == []


# ------------------------------------------------------------------ disconnecting, stalled and excess clients


async def _asgi_call(app, receive, content_length: int | None = None) -> tuple[int, dict, list]:
    """POST /v1/transcribe straight through the ASGI interface with a custom `receive`:
    `(status, JSON body, the sent messages)`."""
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/transcribe", "raw_path": b"/v1/transcribe", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 80)}
    sent: list[dict] = []

    async def send(msg):
        sent.append(msg)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")), sent


def test_a_client_that_disconnects_mid_body_is_logged_as_499_without_a_traceback(asr_toy_run, caplog):
    app = create_app(asr_toy_run)
    messages = iter([{"type": "http.request", "body": b'{"features": [[0.1', "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    with caplog.at_level(logging.INFO):
        asyncio.run(_asgi_call(app, receive))
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert [(a["status"], a["error"]) for a in access] == [(499, "client_disconnected")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_body_that_stalls_gets_408_and_excess_bodies_get_503(asr_toy_run):
    app = create_app(asr_toy_run, body_timeout_s=0.2, max_inflight_bodies=1)

    async def stalled():
        await asyncio.sleep(3600)

    status, body, _ = asyncio.run(_asgi_call(app, stalled))
    assert status == 408 and body["error"] == "body_timeout"

    async def slow():
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def two_at_once():
        return await asyncio.gather(_asgi_call(app, slow), _asgi_call(app, slow))

    results = sorted(asyncio.run(two_at_once()), key=lambda r: r[0])
    assert results[-1][0] == 503 and results[-1][1]["error"] == "busy" and results[0][0] != 503


def test_stalled_clients_hold_only_their_bytes_and_the_byte_budget_sheds_large_bodies(asr_toy_run):
    """Many stalled uploads that sent little do not lock a small request out; a body whose declared
    length would take the bytes being received past max_inflight_bytes gets 503 at once."""
    app = create_app(asr_toy_run, body_timeout_s=0.5, max_body_bytes=1000, max_inflight_bytes=1000)

    def stalling(first: bytes):
        sent = [False]

        async def receive():
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": first, "more_body": True}
            await asyncio.sleep(3600)
        return receive

    async def small():
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def scenario():
        stalled = [_asgi_call(app, stalling(b"{" * 10), content_length=900) for _ in range(20)]
        big = _asgi_call(app, stalling(b"{" * 700), content_length=800)
        return await asyncio.gather(*stalled, big)

    async def then_over_budget():
        holder = asyncio.ensure_future(_asgi_call(app, stalling(b"{" * 900), content_length=900))
        await asyncio.sleep(0.1)
        over = await _asgi_call(app, small, content_length=200)
        under = await _asgi_call(app, small, content_length=50)
        return (await holder), over, under

    results = asyncio.run(scenario())
    assert [r[0] for r in results] == [408] * 21  # none refused: 20 x 10 + 700 bytes fit the budget
    held, over, under = asyncio.run(then_over_budget())
    assert held[0] == 408
    assert over[0] == 503 and over[1]["error"] == "busy" and "--max-inflight-bytes" in over[1]["message"]
    assert under[0] == 422  # past the budget check: "{}" has no features


def test_a_byte_budget_smaller_than_one_body_is_refused(asr_toy_run):
    with pytest.raises(ConfigError, match="max_inflight_bytes"):
        create_app(asr_toy_run, max_body_bytes=1000, max_inflight_bytes=999)

