"""python experiments/asr_serve.py --run RUN   # serve a trained Paraformer over HTTP on 127.0.0.1:8000

    python experiments/asr_serve.py --run RUN --port 8080 --max-batch 16 --max-wait-ms 2
    python experiments/asr_serve.py --run RUN --port 0 --port-file port.txt   # a free port, written to port.txt
    curl -s http://127.0.0.1:8000/healthz
    curl -s http://127.0.0.1:8000/v1/model
    curl -s -F file=@clip.wav http://127.0.0.1:8000/v1/transcribe                 # a 16-bit PCM WAV
    curl -s -H 'Content-Type: application/json' -d '{"features": [[0.1, ...], ...]}' \\
        http://127.0.0.1:8000/v1/transcribe                                        # [T, F] features

Loads the run's best checkpoint (or the checkpoint given) once, then serves `POST
/v1/transcribe`, `GET /healthz` and `GET /v1/model` with uvicorn (see `funcml.asr.serve` for
the request and response formats, the micro-batcher and the error codes). Access logs go to
stdout, one JSON line per request; the start-up line and server errors go to stderr. A
missing or bad run prints one line `error: ...` and exits 2. Ctrl-C stops the server.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import tyro  # noqa: E402

from funcml.asr.serve import ACCESS_LOGGER, create_app  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Serve a trained Paraformer over HTTP."""

    run: Path
    """A run directory (its best checkpoint by val/cer) or a checkpoint directory."""
    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 exposes the service to the network)."""
    port: int = 8000
    """TCP port; 0 picks a free one (printed, and written to --port-file)."""
    port_file: Path | None = None
    """Write the port the service listens on to this file once it is bound (for scripts, with --port 0)."""
    max_batch: int = 8
    """Most requests run as one batch."""
    max_wait_ms: float = 5.0
    """Longest wait for a batch to fill once a request is waiting (0: never wait)."""
    max_body_bytes: int = 8 * 2**20
    """Largest request body in bytes (413 above)."""
    max_audio_seconds: float = 30.0
    """Longest audio, or the same duration of feature frames (413 above)."""
    body_timeout_s: float = 30.0
    """A request body that sends nothing for this many seconds is answered 408 and dropped."""
    max_inflight_bodies: int = 4096
    """Request bodies received at once; one more is answered 503."""
    max_inflight_bytes: int = 256 * 2**20
    """Body bytes held by the bodies being received (plus a new one's declared length); beyond it 503 (bounds memory)."""
    threads: int = 1
    """torch intra-op threads of the inference thread."""
    device: str = "auto"
    """Where the model runs: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:N."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")


def build(argv: list[str] | None = None):
    """Parse the flags and load the model: `(cfg, app)`, without serving."""
    cfg = tyro.cli(ServeConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    app = create_app(cfg.run, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                     max_body_bytes=cfg.max_body_bytes, max_audio_seconds=cfg.max_audio_seconds,
                     body_timeout_s=cfg.body_timeout_s, max_inflight_bodies=cfg.max_inflight_bodies,
                     max_inflight_bytes=cfg.max_inflight_bytes, device=cfg.device)
    return cfg, app


@cli_main
def main(argv: list[str] | None = None) -> None:
    import uvicorn

    cfg, app = build(argv)
    torch.set_num_threads(cfg.threads)
    access = logging.getLogger(ACCESS_LOGGER)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    sock = _bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    print(f"[asr_serve] {cfg.run} on http://{cfg.host}:{port} (max batch {cfg.max_batch}, max wait "
          f"{cfg.max_wait_ms:g} ms, {cfg.threads} torch thread(s), device {cfg.device})", file=sys.stderr, flush=True)
    if cfg.port_file is not None:
        tmp = cfg.port_file.with_name(f".{cfg.port_file.name}.tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, cfg.port_file)  # a reader never sees a half-written file
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning"))
    server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 lets the OS pick a free one. A port in use is a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port (0 picks a free "
                          "one)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    main()
