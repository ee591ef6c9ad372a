"""What every benchmark script shares: the device, machine facts, timing, peak memory, JSON, tables.

    device = resolve_device("cpu")                       # "cuda" without a GPU: ConfigError
    info = machine_info(device)                          # CPU model, threads, torch, load average, date
    t = time_fn(lambda: step(), warmup=3, repeat=20)     # Timing: median of the timed calls
    ts = time_interleaved({"a": fa, "b": fb}, warmup=2, repeat=15)   # round-robin, same noise for all
    mem = measure_peak_memory(lambda: step(), device)    # {"peak_mb", "baseline_mb", "delta_mb", "kind"}
    path = write_json(payload, out)                      # benchmarks/results/<name>.json by default
    print(markdown_table(rows, {"batch": "B", "ms": "ms/step"}))

Timings on a shared machine are noisy: a script measures the variants it compares in the same
process and interleaves them (`time_interleaved`), so that a burst of load elsewhere slows every
variant alike; it reports medians, and the load average before and after the run.

Peak memory. On CPU it is the process's peak resident set size, `VmHWM` in /proc/self/status,
reset before each measurement by writing "5" to /proc/self/clear_refs (Linux), so that each
variant gets its own peak; `delta_mb` is that peak minus the resident size at the reset, i.e.
what the measured calls added (activations, gradients, optimizer temporaries). Before the
reset, freed heap pages are handed back to the OS (`malloc_trim(0)`): otherwise a variant
measured after a bigger one would reuse its freed, still-resident pages and show no growth. Where the reset
is not possible the peak is `resource.getrusage(...).ru_maxrss`, the peak of the whole process
so far (`kind` says which). On CUDA it is `torch.cuda.max_memory_allocated` after
`reset_peak_memory_stats`, i.e. tensor memory only.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from funcml import devices  # noqa: E402
from funcml.errors import ConfigError  # noqa: E402
from funcml.repro import env_info  # noqa: E402

__all__ = ["ROOT", "RESULTS_DIR", "fresh_results_path", "resolve_device", "set_threads", "synchronize", "machine_info", "machine_line",
           "Timing", "time_fn", "time_interleaved", "peak_memory_mb", "reset_peak_memory", "measure_peak_memory",
           "write_json", "markdown_table"]

RESULTS_DIR = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- device and machine


def resolve_device(name: str) -> torch.device:
    """The torch device a `--device` flag names: `funcml.devices.resolve` (auto, cpu, cuda, cuda:N;
    `ConfigError` for a misspelt name or CUDA asked for without a GPU)."""
    return devices.resolve(name)


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads (`threads > 0`; 0 keeps torch's default) and return the number in force."""
    if threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


synchronize = devices.synchronize
"""Wait for the device's queued work (a no-op on CPU, where ops are synchronous): `funcml.devices.synchronize`."""


def machine_info(device: torch.device) -> dict[str, Any]:
    """Machine facts for a results table: date, CPU model (from /proc/cpuinfo), cores, torch
    threads, torch version, device (and GPU name), load average, compile backend, git commit."""
    info = env_info()
    info.update(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        device=str(device),
        load_average=[round(x, 2) for x in os.getloadavg()],
        compile_backend=os.environ.get("FUNCML_COMPILE_BACKEND", "inductor"),
        inductor_cache_dir=os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        command=" ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]),
    )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def start(device_name: str, threads: int) -> tuple[torch.device, dict[str, Any]]:
    """The opening of every benchmark: resolve `--device`, set `--threads`, print the machine
    line. Returns `(device, machine_info(device))`."""
    device = resolve_device(device_name)
    set_threads(threads)
    info = machine_info(device)
    print(machine_line(info), flush=True)
    return device, info


def machine_line(info: Mapping[str, Any]) -> str:
    """One line describing the machine, printed above every table."""
    dev = info["device"] + (f" ({info['gpu']})" if "gpu" in info else "")
    load = " ".join(f"{x:.2f}" for x in info["load_average"])
    return (f"{info['cpu']}, {info['cpu_count']} cores, {info['torch_threads']} torch threads, torch {info['torch']}, "
            f"device {dev}, load average {load}, {info['date']}")


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of `repeat` timed calls after `warmup` untimed ones; `median_s` is the figure to report."""

    times_s: tuple[float, ...]
    warmup: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def max_s(self) -> float:
        return max(self.times_s)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median_s, "min_s": self.min_s, "max_s": self.max_s, "repeat": len(self.times_s),
                "warmup": self.warmup, "times_s": list(self.times_s)}


def _check_counts(warmup: int, repeat: int) -> None:
    if warmup < 0 or repeat < 1:
        raise ConfigError(f"timing needs warmup >= 0 and repeat >= 1, got warmup={warmup}, repeat={repeat}")


def _timed_call(fn: Callable[[], Any], device: torch.device | None) -> float:
    if device is not None:
        synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device is not None:
        synchronize(device)
    return time.perf_counter() - t0


def time_fn(fn: Callable[[], Any], *, warmup: int = 3, repeat: int = 10, device: torch.device | None = None) -> Timing:
    """Call `fn()` `warmup` times untimed, then `repeat` times timed (device synchronized around each call)."""
    _check_counts(warmup, repeat)
    for _ in range(warmup):
        fn()
    return Timing(tuple(_timed_call(fn, device) for _ in range(repeat)), warmup)


def time_interleaved(fns: Mapping[str, Callable[[], Any]], *, warmup: int = 3, repeat: int = 10,
                     device: torch.device | None = None) -> dict[str, Timing]:
    """Time several variants round-robin: after `warmup` untimed calls of each, `repeat` rounds in
    which every variant is called once, the order rotating each round, so that load changes on a
    shared machine fall on all variants alike. Returns one `Timing` per name."""
    _check_counts(warmup, repeat)
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            times[name].append(_timed_call(fns[name], device))
    return {name: Timing(tuple(times[name]), warmup) for name in names}


# --------------------------------------------------------------------------- memory


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _release_free_heap() -> None:
    """Collect garbage and hand the allocator's free pages back to the OS (glibc `malloc_trim`),
    so that the resident size is the live set and a variant measured after another one does not
    reuse that one's freed, still-resident pages unseen."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the delta may then miss memory reused from earlier variants


def reset_peak_memory(device: torch.device) -> tuple[float, str]:
    """Reset the peak-memory counter; returns `(current_mb, kind)`, kind "cuda_max_allocated",
    "rss_hwm" (VmHWM reset by clear_refs) or "ru_maxrss" (could not reset: peak of the process)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20, "cuda_max_allocated"
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        current = _status_mb("VmRSS")
        if current is not None:
            return current, "rss_hwm"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"


def peak_memory_mb(device: torch.device, kind: str = "rss_hwm") -> float:
    """The peak since the last `reset_peak_memory` (MiB), as `kind` says how it is measured."""
    if device.type == "cuda":
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    if kind == "rss_hwm":
        hwm = _status_mb("VmHWM")
        if hwm is not None:
            return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def measure_peak_memory(fn: Callable[[], Any], device: torch.device, calls: int = 2) -> dict[str, Any]:
    """Peak memory while calling `fn()` `calls` times: `{"peak_mb", "baseline_mb", "delta_mb", "kind"}`."""
    baseline, kind = reset_peak_memory(device)
    for _ in range(calls):
        fn()
    peak = peak_memory_mb(device, kind)
    delta = max(peak - baseline, 0.0)
    return {"peak_mb": round(peak, 1), "baseline_mb": round(baseline, 1), "delta_mb": round(delta, 1), "kind": kind}


# --------------------------------------------------------------------------- output


def fresh_results_path(name: str) -> Path:
    """`benchmarks/results/<name>-<YYYYmmdd-HHMMSS>.json` (a suffix `-2`, `-3`, ... if taken): where a benchmark
    writes when `--out` is not given, so that a run never replaces the committed `<name>.json` by accident."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = RESULTS_DIR / f"{name}-{stamp}.json", 2
    while path.exists():
        path, n = RESULTS_DIR / f"{name}-{stamp}-{n}.json", n + 1
    return path


def write_json(payload: Mapping[str, Any], out: str | os.PathLike) -> Path:
    """Write `payload` as indented JSON to `out` (parents created); returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, (Path, torch.device, torch.dtype)):
        return str(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    raise TypeError(f"not JSON-serializable: {type(x).__name__}")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "n/a"
        if v == 0 or 0.01 <= abs(v) < 1e5:
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return f"{v:.2e}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str] | Sequence[str]) -> str:
    """A GitHub-markdown table of `rows` (dicts): `columns` maps row keys to headers (or lists the
    keys, which are then the headers). Floats get 3 significant digits; None prints as "-"."""
    cols = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    lines = ["| " + " | ".join(cols.values()) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k in cols) + " |")
    return "\n".join(lines)
