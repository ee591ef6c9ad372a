"""funcml.repro and funcml.errors: environment facts, determinism toggles, purity checks, CLI errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from funcml import random, repro


def test_env_info_reports_versions_and_machine():
    info = repro.env_info()
    assert info["torch"] == torch.__version__
    for field in ("python", "numpy", "cpu", "cpu_count", "torch_threads", "cuda_available", "git_commit"):
        assert field in info


def test_deterministic_context_sets_and_restores_flags():
    before = torch.are_deterministic_algorithms_enabled()
    with repro.deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() == before


def test_check_reproducible_passes_for_a_pure_function(key):
    report = repro.check_reproducible(lambda k: {"x": random.normal(k, (10,))}, key)
    assert report.ok and "bit-identical" in str(report)


def test_check_reproducible_names_the_first_differing_leaf():
    calls = {"n": 0}

    def impure(x):
        calls["n"] += 1
        return {"same": x, "drifts": x + calls["n"]}

    report = repro.check_reproducible(impure, torch.zeros(3))
    assert not report.ok and report.first_difference == "drifts" and report.max_abs_diff == 1.0


def test_check_reproducible_catches_global_rng_use():
    report = repro.check_reproducible(lambda: {"x": torch.rand(4)})
    assert not report.ok and report.first_difference == "x"


def test_cli_main_prints_funcml_errors_without_traceback_and_exits_2(tmp_path):
    script = tmp_path / "cli.py"
    script.write_text(textwrap.dedent("""
        from funcml.errors import DataError, cli_main
        @cli_main
        def main():
            raise DataError("images/cat.png has no mask masks/cat.png; add the mask or remove the image")
        main()
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: images/cat.png has no mask masks/cat.png; add the mask or remove the image"
    assert "Traceback" not in out.stderr
