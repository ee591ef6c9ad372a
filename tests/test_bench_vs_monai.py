"""benchmarks/bench_vs_monai.py: funcml's U-Net train step against MONAI's, at the --quick size.

No timing targets here (the script measures, RESULTS.md reports): these check that every variant is
timed with finite numbers, that both sides really compute the same loss and the same architecture,
and that a peer's compile failure is recorded rather than raised.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("monai", reason="MONAI is the optional benchmark peer: pip install 'funcml[bench]' (monai==1.6.1)")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_vs_monai  # noqa: E402
from funcml import random, tree  # noqa: E402
from funcml.nn import model as models  # noqa: E402

EAGER = ["funcml-eager", "monai-basic-eager", "monai-unet-eager"]


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "vs_monai.json"
    returned = bench_vs_monai.main(args=["--quick", *args, "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["rows"] == json.loads(json.dumps(returned["rows"]))
    return written


def test_quick_run_times_every_eager_variant_with_finite_timings_and_both_parameter_counts(tmp_path):
    result = _run(tmp_path, "--variants", *EAGER)
    rows = {r["variant"]: r for r in result["rows"]}
    assert sorted(rows) == sorted(EAGER)
    for row in rows.values():
        assert len(row["timing"]["times_s"]) == result["config"]["repeat"] == 3
        assert all(math.isfinite(t) and t > 0 for t in row["timing"]["times_s"])
        assert math.isfinite(row["ms"]) and 0 < row["peak_fraction"] and math.isfinite(row["speedup_vs_monai_best"])
    # Parameter counts: reported per row and per architecture, equal to counts made here independently.
    cfg = bench_vs_monai.funcml_unet_config(bench_vs_monai._resolved(bench_vs_monai.MonaiBenchConfig(quick=True),
                                                                      torch.device("cpu")))
    funcml_params = tree.num_params(models.init(random.key(0), cfg)[0])
    from monai.networks.nets import BasicUNet

    basic = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 8, 16, 32, 64, 4), norm="batch",
                      act="relu", bias=False)
    basic_params = sum(p.numel() for p in basic.parameters())
    arch = result["architectures"]
    assert rows["funcml-eager"]["params"] == arch["funcml"]["params"] == funcml_params
    assert rows["monai-basic-eager"]["params"] == arch["monai-basic"]["params"] == basic_params
    assert abs(funcml_params - basic_params) / basic_params < 0.01  # only BasicUNet's last up-sampling is wider
    assert set(result["ratios"]) == {"funcml-eager vs monai-basic-eager", "funcml-eager vs monai-unet-eager"}
    assert result["matmul_peak"]["fp32"]["gflops_per_s"] > 0 and result["machine"]["monai"] == "1.6.1"


def test_funcml_and_basic_unet_have_the_same_layers_and_a_monai_unet_differs():
    cfg = bench_vs_monai._resolved(bench_vs_monai.MonaiBenchConfig(quick=True), torch.device("cpu"))
    funcml = bench_vs_monai.describe_architecture(cfg, "funcml")["layers"]
    assert funcml == bench_vs_monai.describe_architecture(cfg, "monai-basic")["layers"]
    assert funcml == {"batchnorm": 18, "conv1x1": 1, "conv3x3": 18, "deconv2x2": 4}  # 9 blocks of 2 convs, 4 ups, head
    assert bench_vs_monai.describe_architecture(cfg, "monai-unet")["layers"] != funcml


@pytest.mark.parametrize("num_classes", [2, 3])
def test_funcml_ce_dice_loss_equals_monai_dice_ce_loss_with_the_benchmark_settings(num_classes):
    cfg = bench_vs_monai._resolved(bench_vs_monai.MonaiBenchConfig(quick=True, num_classes=num_classes),
                                   torch.device("cpu"))
    agreement = bench_vs_monai.loss_agreement(cfg, bench_vs_monai._batch(cfg, torch.device("cpu")))
    assert agreement["abs_loss_diff"] < 1e-5 and agreement["max_abs_grad_diff"] < 1e-7
    assert agreement["funcml"] > 0


def test_a_failing_peer_compile_is_recorded_with_its_error_and_the_others_are_still_timed(tmp_path, monkeypatch):
    def fails(runner, device):
        raise AssertionError("expected size 8==8, stride 1==1024 at dim=1\n"
                             "Error in op: torch.ops.aten.replication_pad2d_backward.default")

    monkeypatch.setattr(bench_vs_monai, "compile_cost", fails)
    result = _run(tmp_path, "--variants", "monai-basic-eager", "monai-basic-compiled")
    assert [r["variant"] for r in result["rows"]] == ["monai-basic-eager"]
    error = result["compile_failures"]["monai-basic-compiled"]["error"]
    assert error == ("AssertionError: expected size 8==8, stride 1==1024 at dim=1 "
                     "(Error in op: torch.ops.aten.replication_pad2d_backward.default)")


@pytest.mark.slow
def test_compiled_variants_report_the_compile_apart_from_finite_step_times(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCML_COMPILE_BACKEND", "aot_eager")  # the path, not inductor's code generation
    result = _run(tmp_path, "--variants", "funcml-compiled", "monai-unet-compiled")
    rows = {r["variant"]: r for r in result["rows"]}
    assert sorted(rows) == ["funcml-compiled", "monai-unet-compiled"] and not result["compile_failures"]
    for row in rows.values():
        assert row["compile_s"] > 0 and math.isfinite(row["second_call_s"])
        assert all(math.isfinite(t) for t in row["timing"]["times_s"]) and row["timing"]["warmup"] == 1
    assert result["machine"]["compile_backend"] == "aot_eager"
    assert "funcml-compiled vs monai-unet-compiled" in result["ratios"]


def test_unknown_variant_is_a_config_error_listing_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_vs_monai.main(args=["--quick", "--variants", "keras-eager", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--variants: unknown ['keras-eager']; choose among funcml-eager, funcml-compiled" in err
    assert not (tmp_path / "x.json").exists()


def test_an_image_size_that_four_poolings_cannot_halve_is_a_config_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_vs_monai.main(args=["--quick", "--image-size", "40", "--out", str(tmp_path / "x.json")])
    assert "--image-size 40 must be a multiple of 16" in capsys.readouterr().err


def test_device_cuda_without_a_gpu_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        bench_vs_monai.main(args=["--quick", "--device", "cuda", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    assert "error: --device cuda: CUDA is not available" in capsys.readouterr().err


def test_device_auto_is_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_vs_monai._device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench_vs_monai._device("auto") == "cuda"


def test_without_monai_the_script_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "monai", None)  # `import monai` then raises ImportError
    with pytest.raises(SystemExit) as exc:
        bench_vs_monai.main(args=["--quick", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    assert "pip install 'funcml[bench]' (monai==1.6.1)" in capsys.readouterr().err
