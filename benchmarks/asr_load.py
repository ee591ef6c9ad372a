"""ASR service load test: requests/s and latency of POST /v1/transcribe at several concurrencies.

    python benchmarks/asr_load.py                        # tiny speech model trained in a temp dir, ~2 min
    python benchmarks/asr_load.py --requests 2000 --concurrency 1 8 32
    python benchmarks/asr_load.py --run runs/asr-speech/<time>-<id> --payload wav
    python benchmarks/asr_load.py --max-wait-ms 0        # batching without waiting for a batch to fill
    python benchmarks/asr_load.py --concurrency 32 --stalled 500 --disconnecting 500   # hostile clients too

Without `--run` it first trains the `tiny` preset on a few synthesized utterances (3 steps,
into a temporary directory, deleted at the end): the figures measure the service (HTTP,
JSON, validation, batching, the model's pure apply), not a good model. It then starts
`experiments/asr_serve.py` as a subprocess on 127.0.0.1 (a free port), waits for /healthz,
and for each concurrency `c` sends `--warmup` untimed requests and then `--requests` timed
ones from `c` concurrent clients (httpx, async, one keep-alive connection each), cycling
through `--utterances` payloads: log-mel features of synthesized digit strings as JSON
(`--payload features`) or the 16-bit WAV files themselves (`--payload wav`, the front end
then runs in the server). It reports requests/s, latency percentiles (client-side, from
send to parsed reply), errors (non-200 replies and transport failures) and the mean batch
size the server reported; the server is stopped at the end, also on errors and Ctrl-C.

With `--stalled N` / `--disconnecting M`, during the last level N extra clients each open a
connection, announce a body and send a few bytes of it, then go silent (the server must
answer 408 after `--body-timeout-s`), and M more send part of a body and close the
connection (the server must log 499); the report adds every 5xx in the server's access log
and the server's resident memory before, at its peak during, and 2 s after that level.

The client shares the machine with the server: on a small machine its own CPU time lowers
every figure, and more so at high concurrency.

Writes `--out`, by default a fresh `benchmarks/results/asr_load-<time>.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (fresh_results_path, ROOT, machine_info, machine_line, markdown_table,  # noqa: E402
                               resolve_device, write_json)
from funcml.errors import ConfigError, DataError, cli_main  # noqa: E402


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """Load-test the ASR HTTP service."""

    run: Path | None = None
    """A trained run (or checkpoint) to serve; None: train the tiny speech model into a temp dir."""
    requests: int = 2000
    """Timed requests per concurrency level."""
    concurrency: tuple[int, ...] = (1, 8, 32)
    """Concurrent clients, one level after the other."""
    warmup: int = 16
    """Untimed requests before each level."""
    payload: Literal["features", "wav"] = "features"
    """JSON features [T, F] or 16-bit WAV uploads (audio/wav; needs a speech model)."""
    utterances: int = 8
    """Distinct synthesized utterances the requests cycle through."""
    max_batch: int = 8
    """The server's --max-batch."""
    max_wait_ms: float = 5.0
    """The server's --max-wait-ms."""
    threads: int = 1
    """The server's torch threads."""
    device: str = "cpu"
    """The server's --device (and the tiny run's): auto (CUDA when a GPU is visible, else the CPU), cpu, cuda, cuda:N."""
    request_timeout_s: float = 60.0
    """A request slower than this counts as an error."""
    startup_timeout_s: float = 120.0
    """Give up if /healthz does not answer within this."""
    stalled: int = 0
    """Clients that start a body during the last level and then go silent."""
    disconnecting: int = 0
    """Clients that send part of a body during the last level and then close the connection."""
    body_timeout_s: float = 5.0
    """The server's --body-timeout-s (how long a stalled client holds a connection)."""
    max_inflight_bodies: int | None = None
    """The server's --max-inflight-bodies (None: the server's default)."""
    out: Path | None = None
    """The JSON file to write (default: a fresh `benchmarks/results/asr_load-<time>.json`, so the committed
    `asr_load.json` is replaced only when named here)."""
    def __post_init__(self) -> None:
        if self.requests < 1 or self.warmup < 0 or self.utterances < 1:
            raise ConfigError("--requests and --utterances must be >= 1, --warmup >= 0")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"--concurrency needs levels >= 1, got {self.concurrency}")
        if self.stalled < 0 or self.disconnecting < 0:
            raise ConfigError(f"--stalled and --disconnecting are client counts >= 0, got {self.stalled} and "
                              f"{self.disconnecting}")
        if not self.body_timeout_s > 0 or (self.max_inflight_bodies is not None and self.max_inflight_bodies < 1):
            raise ConfigError(f"--body-timeout-s must be > 0 and --max-inflight-bodies >= 1, got "
                              f"{self.body_timeout_s} and {self.max_inflight_bodies}")


# --------------------------------------------------------------------------- model and payloads


def _train_tiny(workdir: Path, device: str = "cpu") -> Path:
    """The `tiny` preset on 8 synthesized utterances, 3 steps (about 10 s): a speech model to serve."""
    import torch

    from funcml.asr import task

    base = task.PRESETS["tiny"][1]
    cfg = dataclasses.replace(base, data="speech", num_train=8, num_val=4, num_test=4, steps=3, eval_every=3,
                              speech=dataclasses.replace(base.speech, digits_len=(1, 2)),
                              runs_dir=workdir / "runs", cache_dir=workdir / "cache", device=device)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run, _ = task.train(cfg, progress=False)
    finally:
        torch.set_num_threads(before)
    return run.path


def _payloads(run: Path, kind: str, n: int) -> list[tuple[bytes, str]]:
    """`n` request bodies and their content types: synthesized digit strings (held-out voices)."""
    from funcml.asr import audio, frontend, speech, task

    cfg, _, _ = task.load_model(run)
    if kind == "wav" and cfg.data != "speech":
        raise ConfigError(f"--payload wav: {run} was trained on toy features; use --payload features")
    out = []
    for i in range(n):
        text = " ".join(speech.DIGITS[(3 * i + j) % len(speech.DIGITS)] for j in range(1 + i % 3))
        wav, sr = speech.synthesize(text, voice=("en+f3", "en+m4")[i % 2])
        if kind == "wav":
            with tempfile.TemporaryDirectory() as tmp:
                audio.write_wav(Path(tmp) / "x.wav", wav, sr)
                out.append(((Path(tmp) / "x.wav").read_bytes(), "audio/wav"))
            continue
        if cfg.data == "speech":
            wav = audio.resample(wav, sr, cfg.frontend.sample_rate) if sr != cfg.frontend.sample_rate else wav
            feats = frontend.features(wav, cfg.frontend)
        else:
            import torch

            feats = torch.randn(100 + 10 * i, task.feature_dim(cfg), generator=torch.Generator().manual_seed(i))
        rows = [[round(float(v), 4) for v in row] for row in feats.tolist()]
        out.append((json.dumps({"features": rows}).encode(), "application/json"))
    return out


# --------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(cfg: LoadConfig, run: Path, port: int, log_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "experiments" / "asr_serve.py"), "--run", str(run), "--port", str(port),
           "--max-batch", str(cfg.max_batch), "--max-wait-ms", str(cfg.max_wait_ms), "--threads", str(cfg.threads),
           "--body-timeout-s", str(cfg.body_timeout_s), "--device", cfg.device,
           *(["--max-inflight-bodies", str(cfg.max_inflight_bodies)] if cfg.max_inflight_bodies else [])]
    return subprocess.Popen(cmd, stdout=open(log_dir / "access.jsonl", "wb"), stderr=open(log_dir / "server.err", "wb"),
                            start_new_session=True)


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float, err_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DataError(f"the server exited with status {proc.returncode}: "
                                f"{err_path.read_text(errors='replace')[-2000:]}")
            try:
                if (await client.get(base + "/healthz", timeout=2.0)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise DataError(f"the server did not answer /healthz within {timeout_s:g} s")


# --------------------------------------------------------------------------- load


def _percentile(xs: list[float], q: float) -> float:
    """The `q`-th percentile (0..100) by linear interpolation between order statistics."""
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


async def _level(base: str, payloads: list[tuple[bytes, str]], concurrency: int, n: int, warmup: int,
                 timeout_s: float) -> dict[str, Any]:
    """`warmup` then `n` requests from `concurrency` clients, each with its own keep-alive
    connection (one shared pool of many connections costs the client more CPU per request)."""
    import httpx

    async def one(client: httpx.AsyncClient, i: int) -> tuple[float, int, int | None]:
        body, ctype = payloads[i % len(payloads)]
        t0 = time.perf_counter()
        try:
            r = await client.post("/v1/transcribe", content=body, headers={"content-type": ctype})
            status = r.status_code
            batch = r.json().get("batch_size") if status == 200 else None
        except (httpx.HTTPError, ValueError):
            status, batch = -1, None
        return time.perf_counter() - t0, status, batch

    async def run(clients: list[httpx.AsyncClient], total: int) -> list[tuple[float, int, int | None]]:
        counter = iter(range(total))
        results: list[tuple[float, int, int | None]] = []

        async def worker(client: httpx.AsyncClient) -> None:
            for i in counter:
                results.append(await one(client, i))

        await asyncio.gather(*(worker(c) for c in clients))
        return results

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout_s))
                   for _ in range(concurrency)]
        await run(clients, warmup)
        t0 = time.perf_counter()
        results = await run(clients, n)
        wall = time.perf_counter() - t0
    lat = [r[0] * 1000.0 for r in results if r[1] == 200]
    batches = [r[2] for r in results if r[2] is not None]
    errors = sum(r[1] != 200 for r in results)
    return {"concurrency": concurrency, "requests": n, "errors": errors, "seconds": round(wall, 3),
            "rps": round(n / wall, 2), "p50_ms": round(_percentile(lat, 50), 2),
            "p95_ms": round(_percentile(lat, 95), 2), "p99_ms": round(_percentile(lat, 99), 2),
            "mean_ms": round(statistics.fmean(lat), 2) if lat else float("nan"),
            "mean_batch": round(statistics.fmean(batches), 2) if batches else float("nan"),
            "status_counts": {str(s): sum(r[1] == s for r in results) for s in sorted({r[1] for r in results})}}


async def _hostile(port: int, *, stall: bool, wait_s: float) -> int | None:
    """One hostile client on a raw socket: it announces a 64 kB WAV body and sends 1 kB of it, then
    either goes silent and reads the reply (the status, None when the server closes without one), or
    closes the connection after a short pause (returns None)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return -1
    try:
        writer.write(b"POST /v1/transcribe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
                     b"Content-Length: 65536\r\n\r\n" + b"RIFF" + bytes(1020))
        await writer.drain()
        if not stall:
            await asyncio.sleep(0.05)
            return None
        line = await asyncio.wait_for(reader.readline(), timeout=wait_s)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else None
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        return -1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process `pid` (Linux /proc)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _access_records(path: Path) -> list[dict[str, Any]]:
    """The server's access log so far (complete lines only)."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


async def _load(cfg: LoadConfig, base: str, payloads: list[tuple[bytes, str]], server_pid: int, access: Path
                ) -> list[dict[str, Any]]:
    rows = []
    port = int(base.rsplit(":", 1)[1])
    for li, c in enumerate(cfg.concurrency):
        client0, server0 = _cpu_seconds(), _cpu_seconds(server_pid)
        seen = len(_access_records(access))
        hostile = li == len(cfg.concurrency) - 1 and (cfg.stalled or cfg.disconnecting)
        if not hostile:
            row = await _level(base, payloads, c, cfg.requests, cfg.warmup, cfg.request_timeout_s)
        else:
            rss_before, peak = _rss_mb(server_pid), [0.0]
            stop = asyncio.Event()

            async def watch() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], _rss_mb(server_pid))
                    await asyncio.sleep(0.2)

            watcher = asyncio.create_task(watch())
            wait_s = cfg.body_timeout_s + 30.0
            bad = [_hostile(port, stall=True, wait_s=wait_s) for _ in range(cfg.stalled)]
            bad += [_hostile(port, stall=False, wait_s=wait_s) for _ in range(cfg.disconnecting)]
            row, *statuses = await asyncio.gather(
                _level(base, payloads, c, cfg.requests, cfg.warmup, cfg.request_timeout_s), *bad)
            stop.set()
            await watcher
            await asyncio.sleep(2.0)
            rss_after = _rss_mb(server_pid)
            stalled_statuses = statuses[:cfg.stalled]
            row.update({"stalled": cfg.stalled, "disconnecting": cfg.disconnecting,
                        "stalled_replies": {str(s): stalled_statuses.count(s) for s in sorted(
                            set(stalled_statuses), key=lambda v: -2 if v is None else v)},
                        "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_peak": round(peak[0], 1),
                        "server_rss_mb_after": round(rss_after, 1),
                        "rss_after_over_before": round(rss_after / rss_before, 3)})
        await asyncio.sleep(0.2)  # let the last log lines reach the file
        records = _access_records(access)[seen:]
        row["server_5xx"] = sum(int(r.get("status") or 0) >= 500 for r in records)
        row["server_status_counts"] = {str(k): sum(r.get("status") == k for r in records)
                                       for k in sorted({r.get("status") for r in records}, key=lambda v: v or 0)}
        timed = [r["latency_ms"] for r in records[cfg.warmup:] if r["path"] == "/v1/transcribe" and r.get("status") == 200]
        row["server_p50_ms"] = round(_percentile(timed, 50), 2)
        row["server_p99_ms"] = round(_percentile(timed, 99), 2)
        # CPU per timed request, warm-up included in both: where the machine's time went
        n = cfg.requests + cfg.warmup
        row["client_cpu_ms"] = round((_cpu_seconds() - client0) / n * 1000.0, 2)
        row["server_cpu_ms"] = round((_cpu_seconds(server_pid) - server0) / n * 1000.0, 2)
        print(f"  concurrency {c:3d}: {row['rps']:8.1f} req/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
              f"{row['errors']} errors, mean batch {row['mean_batch']}, server-side p50 {row['server_p50_ms']} ms "
              f"p99 {row['server_p99_ms']} ms, CPU ms/req server {row['server_cpu_ms']} client {row['client_cpu_ms']}; "
              f"server log {row['server_status_counts']}",
              file=sys.stderr, flush=True)
        if "stalled" in row:
            print(f"  hostile clients: {row['stalled']} stalled (replies {row['stalled_replies']}), "
                  f"{row['disconnecting']} disconnecting; server RSS {row['server_rss_mb_before']} MB before, "
                  f"{row['server_rss_mb_peak']} MB peak, {row['server_rss_mb_after']} MB 2 s after "
                  f"({row['rss_after_over_before']}x)", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@cli_main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = tyro.cli(LoadConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    work = Path(tempfile.mkdtemp(prefix="asr-load-"))
    proc = None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too
    try:
        t0 = time.perf_counter()
        run = cfg.run if cfg.run is not None else _train_tiny(work, cfg.device)
        payloads = _payloads(run, cfg.payload, cfg.utterances)
        print(f"[asr_load] model {run} ready in {time.perf_counter() - t0:.1f} s; "
              f"{len(payloads)} {cfg.payload} payloads of {min(len(b) for b, _ in payloads)}-"
              f"{max(len(b) for b, _ in payloads)} bytes", file=sys.stderr, flush=True)
        port = _free_port()
        proc = _start_server(cfg, run, port, work)
        base = f"http://127.0.0.1:{port}"
        asyncio.run(_wait_healthy(base, proc, cfg.startup_timeout_s, work / "server.err"))
        rows = asyncio.run(_load(cfg, base, payloads, proc.pid, work / "access.jsonl"))
    finally:
        if proc is not None:
            _stop_server(proc)
        signal.signal(signal.SIGTERM, previous)
        access_lines = sum(1 for _ in open(work / "access.jsonl", "rb")) if (work / "access.jsonl").exists() else 0
        shutil.rmtree(work, ignore_errors=True)

    import torch

    info = machine_info(resolve_device(cfg.device))
    info["torch_threads"] = cfg.threads  # the server's; the client does no tensor work while timing
    by_c = {r["concurrency"]: r for r in rows}
    speedup = round(by_c[8]["rps"] / by_c[1]["rps"], 2) if 1 in by_c and 8 in by_c else None
    payload = {"config": dataclasses.asdict(cfg), "run": str(cfg.run) if cfg.run else "tiny speech model (temp dir)",
               "machine": info, "results": rows, "throughput_c8_over_c1": speedup,
               "access_log_lines": access_lines}
    path = write_json(payload, cfg.out or fresh_results_path("asr_load"))
    print(machine_line(info))
    print(f"server: --max-batch {cfg.max_batch} --max-wait-ms {cfg.max_wait_ms:g} --threads {cfg.threads}; "
          f"payload {cfg.payload}; {cfg.requests} requests per level")
    print(markdown_table(rows, {"concurrency": "concurrency", "requests": "requests", "errors": "errors",
                                "rps": "req/s", "p50_ms": "p50 ms", "p95_ms": "p95 ms", "p99_ms": "p99 ms",
                                "mean_batch": "mean batch", "server_cpu_ms": "server CPU ms/req",
                                "client_cpu_ms": "client CPU ms/req", "server_5xx": "server 5xx"}))
    for row in rows:
        if "stalled" in row:
            print(f"hostile clients during concurrency {row['concurrency']}: {row['stalled']} stalled (replies "
                  f"{row['stalled_replies']}), {row['disconnecting']} disconnecting; server log "
                  f"{row['server_status_counts']}; server RSS {row['server_rss_mb_before']} MB before, "
                  f"{row['server_rss_mb_peak']} MB peak, {row['server_rss_mb_after']} MB 2 s after "
                  f"({row['rss_after_over_before']}x)")
    if speedup is not None:
        print(f"throughput at concurrency 8 / 1: {speedup:.2f}x")
    print(f"results written to {path}")
    return payload


if __name__ == "__main__":
    main()
