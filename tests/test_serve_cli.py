"""The service's command line: a free port on request, a clear error for a port in use."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest

from funcml.errors import ConfigError

_spec = importlib.util.spec_from_file_location("asr_serve_cli", Path(__file__).resolve().parents[1] / "experiments"
                                               / "asr_serve.py")
asr_serve = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = asr_serve  # dataclasses look their module up there
_spec.loader.exec_module(asr_serve)


def test_port_0_binds_a_free_port_that_accepts_connections():
    sock = asr_serve._bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        sock.close()


def test_a_port_in_use_is_a_clear_error_naming_it():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: .*pick another --port"):
            asr_serve._bind("127.0.0.1", port)
    finally:
        busy.close()
