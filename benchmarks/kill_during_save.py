"""Checkpoints under SIGKILL: kill a process that is saving, many times, and count what breaks.

    python benchmarks/kill_during_save.py                 # 30 kills + 10 damage trials, about a minute
    python benchmarks/kill_during_save.py --kills 100 --mb 64

Each kill trial starts a writer process that saves a train state of `--mb` MB of parameters
with `CheckpointManager` at steps 1, 2, 3, ... (keeping the last 2), and SIGKILLs it after a
random delay after it is ready (drawn from `--seed`'s key: kills land during and between saves).
Then, in this process, a fresh manager on the same folder must: list only checkpoints that
verify (sizes and SHA-256), restore the latest one, and save the next step (no dead end).
A trial counts as broken when any of that fails.

Each damage trial saves steps 1 and 2, then damages the newest one (a file deleted, truncated,
emptied, or the whole folder emptied: ten kinds); a fresh manager must restore step 1, save
step 2 again and restore it.

Prints a table and writes `--out` (default a fresh `benchmarks/results/kill_during_save-<time>.json`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import ROOT, fresh_results_path, machine_info, machine_line, resolve_device, write_json  # noqa: E402
from funcml import checkpoint, random  # noqa: E402
from funcml.errors import ConfigError, cli_main  # noqa: E402
from funcml.train import TrainState  # noqa: E402


@dataclasses.dataclass(frozen=True)
class KillConfig:
    """Kill a checkpoint writer many times; damage the newest checkpoint in ten ways."""

    kills: int = 30
    """Kill trials (a writer process SIGKILLed at a random moment)."""
    damage_trials: int = 10
    """Trials that damage the newest checkpoint (ten kinds, cycled)."""
    mb: int = 16
    """Parameter megabytes per checkpoint (bigger: longer saves, more kills land inside one)."""
    max_delay_s: float = 1.0
    """Kills land uniformly in [0, this] seconds after the writer is ready to save (imports done)."""
    seed: int = 0
    """Key of the kill delays."""
    device: str = "cpu"
    """Where the saved tensors live (auto, cpu, cuda, cuda:N): a CUDA state is written from CPU copies and
    restored onto the device."""
    out: Path | None = None
    """The JSON file to write (default: a fresh benchmarks/results/kill_during_save-<time>.json)."""

    def __post_init__(self) -> None:
        if self.kills < 0 or self.damage_trials < 0:
            raise ConfigError(f"--kills and --damage-trials must be >= 0, got {self.kills} and {self.damage_trials}")
        if self.mb < 1:
            raise ConfigError(f"--mb must be >= 1, got {self.mb}")
        if not self.max_delay_s > 0:
            raise ConfigError(f"--max-delay-s must be > 0, got {self.max_delay_s}")


_WRITER = textwrap.dedent("""
    import sys
    import torch
    from funcml import checkpoint, random
    from funcml.train import TrainState

    root, n, dev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    mgr = checkpoint.CheckpointManager(root, keep_last=2)
    start = max(mgr.steps(), default=0) + 1
    print("ready", flush=True)
    for step in range(start, start + 1000):
        ts = TrainState(step=torch.tensor(step, device=dev), params={"w": torch.full((n,), float(step), device=dev)},
                        model_state={}, opt_state=(), key=random.key(step, dev))
        mgr.save(ts)
""")


def _state(step: int, n: int, device: torch.device = torch.device("cpu")) -> TrainState:
    return TrainState(step=torch.tensor(step, device=device), params={"w": torch.full((n,), float(step), device=device)},
                      model_state={}, opt_state=(), key=random.key(step, device))


def _check(root: Path, n: int, device: torch.device) -> tuple[bool, str, int]:
    """A fresh manager on `root`: every listed checkpoint verifies, the latest restores with its own
    values, and the next step saves. `(ok, why, latest step or -1)`."""
    try:
        mgr = checkpoint.CheckpointManager(root, keep_last=2)
        path = mgr.latest_verified()
        if path is None:
            mgr.save(_state(1, n, device))
            return True, "no checkpoint yet; saved step 1", -1
        ts = mgr.restore_latest(_state(0, n, device), device=device)
        step = int(ts.step)
        if ts.params["w"].device != device or not torch.equal(ts.params["w"], torch.full((n,), float(step),
                                                                                          device=device)):
            return False, f"step {step} restored wrong values (or onto {ts.params['w'].device})", step
        mgr.save(_state(step + 1, n, device))
        return True, "", step
    except Exception as e:  # anything at all is a broken trial
        return False, f"{type(e).__name__}: {e}", -1


def _kill_trial(root: Path, n: int, delay: float, device: torch.device) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(n), str(device)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        proc.stdout.readline()  # "ready": the imports are done, the saves start now
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    temps = sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-")) if root.exists() else []
    ok, why, step = _check(root, n, device)
    return {"delay_s": round(delay, 3), "killed": proc.returncode == -signal.SIGKILL, "ok": ok, "why": why,
            "latest_step": step, "temp_dirs_left_by_the_kill": len(temps)}


_DAMAGE = ["delete meta.json", "delete params", "delete model_state", "delete opt_state", "truncate meta.json",
           "truncate params", "truncate model_state", "truncate opt_state", "empty meta.json", "empty folder"]


def _damage_trial(root: Path, n: int, kind: int) -> dict:
    mgr = checkpoint.CheckpointManager(root, keep_last=None)
    mgr.save(_state(1, n))
    mgr.save(_state(2, n))
    newest = mgr.path(2)
    files = ["meta.json", "params.safetensors", "model_state.safetensors", "opt_state.safetensors"]
    target = newest / files[kind % 4]
    if kind < 4:
        target.unlink()
    elif kind < 8:
        target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 2)])
    elif kind == 8:
        target.write_text("")
    else:
        for f in files:
            (newest / f).unlink()
    try:
        fresh = checkpoint.CheckpointManager(root, keep_last=None)
        first = int(fresh.restore_latest(_state(0, n)).step)
        fresh.save(_state(2, n))
        again = int(fresh.restore_latest(_state(0, n)).step)
        ok, why = first == 1 and again == 2, f"restored {first}, then {again}"
    except Exception as e:
        ok, why = False, f"{type(e).__name__}: {e}"
    return {"damage": _DAMAGE[kind % len(_DAMAGE)], "ok": ok, "why": "" if ok else why}


@cli_main
def main(argv: list[str] | None = None) -> dict:
    cfg = tyro.cli(KillConfig, args=argv, description="\n\n".join(__doc__.split("\n\n")[:2]))
    n = cfg.mb * 2**20 // 4
    device = resolve_device(cfg.device)
    u = random.uniform(random.key(cfg.seed), (max(cfg.kills, 1),), dtype=torch.float64).tolist()
    kills, damages = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kill-save-") as tmp:
        root = Path(tmp) / "checkpoints"
        for i in range(cfg.kills):
            row = _kill_trial(root, n, u[i] * cfg.max_delay_s, device)
            kills.append(row)
            print(f"  kill {i + 1:3d}/{cfg.kills}: after {row['delay_s']:.2f} s, latest step {row['latest_step']}, "
                  f"{'ok' if row['ok'] else 'BROKEN: ' + row['why']}", file=sys.stderr, flush=True)
        for i in range(cfg.damage_trials):
            damages.append(_damage_trial(Path(tmp) / f"damage-{i}", n, i))
    info = machine_info(device)
    summary = {"kills": len(kills), "broken_after_kill": sum(not r["ok"] for r in kills),
               "kills_that_left_a_temp_dir": sum(r["temp_dirs_left_by_the_kill"] > 0 for r in kills),
               "final_step": kills[-1]["latest_step"] if kills else None,
               "damage_trials": len(damages), "dead_end_resumes": sum(not r["ok"] for r in damages),
               "seconds": round(time.perf_counter() - t0, 1)}
    payload = {"config": dataclasses.asdict(cfg), "machine": info, "summary": summary, "kills": kills,
               "damage": damages}
    path = write_json(payload, cfg.out or fresh_results_path("kill_during_save"))
    print(machine_line(info))
    print(f"{summary['kills']} kills of a writer saving {cfg.mb} MB checkpoints: {summary['broken_after_kill']} broken "
          f"(a kill inside a save in {summary['kills_that_left_a_temp_dir']} of them, the run reached step "
          f"{summary['final_step']}); {summary['damage_trials']} damaged newest checkpoints: "
          f"{summary['dead_end_resumes']} dead-end resumes; {summary['seconds']} s")
    for r in damages:
        if not r["ok"]:
            print(f"  damage {r['damage']!r}: {r['why']}")
    print(f"results written to {path}")
    return payload


if __name__ == "__main__":
    main()
