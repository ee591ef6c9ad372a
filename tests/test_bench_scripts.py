"""The benchmark scripts (benchmarks/bench_*.py): each runs on a tiny size through its `main(args=[...])`
and writes its JSON; the references they compare against compute the same math as funcml.

No timing targets here: the scripts measure, RESULTS.md reports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import (bench_asr_infer, bench_cif, bench_ensemble, bench_optim, bench_overhead,  # noqa: E402
                        bench_train_step, common)
from benchmarks.unet_module import UNetModule, to_funcml  # noqa: E402
from funcml import random, tree  # noqa: E402
from funcml.asr.cif import cif  # noqa: E402
from funcml.errors import ConfigError, RangeError  # noqa: E402
from funcml.nn import model as models  # noqa: E402
from funcml.seg.unet import UNetConfig  # noqa: E402

MACHINE_KEYS = {"cpu", "cpu_count", "torch_threads", "torch", "device", "date", "load_average"}
TINY_SEG = ["--scale", "tiny", "--batch-size", "2", "--image-size", "16", "--warmup", "1", "--repeat", "1"]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------ common


def test_time_interleaved_calls_every_variant_warmup_plus_repeat_times_in_rotating_order():
    calls = []
    timings = common.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                      warmup=1, repeat=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {name: len(t.times_s) for name, t in timings.items()} == {"a": 3, "b": 3}


def test_timing_reports_the_median_of_the_timed_calls():
    t = common.Timing((0.3, 0.1, 0.2, 0.5), warmup=2)
    assert (t.median_s, t.min_s, t.max_s) == (0.25, 0.1, 0.5)
    assert t.to_dict()["repeat"] == 4


def test_markdown_table_formats_floats_to_three_digits_and_none_as_dash():
    table = common.markdown_table([{"n": 4, "ms": 12.3456, "r": None, "big": 1234.5, "ok": True}],
                                  {"n": "N", "ms": "ms/step", "r": "ratio", "big": "big", "ok": "ok"})
    assert table.splitlines() == ["| N | ms/step | ratio | big | ok |", "|---|---|---|---|---|",
                                  "| 4 | 12.3 | - | 1234 | yes |"]


def test_measure_peak_memory_sees_a_64_mb_allocation():
    mem = common.measure_peak_memory(lambda: torch.ones(16 * 2**20).sum(), torch.device("cpu"), calls=1)
    assert mem["kind"] == "rss_hwm"  # Linux: VmHWM, reset through /proc/self/clear_refs
    assert mem["delta_mb"] >= 60.0 and mem["peak_mb"] >= mem["baseline_mb"] + 60.0


def test_measure_peak_memory_sees_growth_after_a_bigger_allocation_was_freed():
    torch.ones(32 * 2**20).sum()  # 128 MB allocated and freed before the measurement
    mem = common.measure_peak_memory(lambda: torch.ones(16 * 2**20).sum(), torch.device("cpu"), calls=1)
    assert mem["delta_mb"] >= 60.0


def test_machine_info_names_the_cpu_threads_torch_and_load():
    info = common.machine_info(torch.device("cpu"))
    assert MACHINE_KEYS <= set(info)
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert len(info["load_average"]) == 3


def test_resolve_device_cuda_without_a_gpu_is_a_config_error_that_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available on this machine.*pass --device cpu"):
        common.resolve_device("cuda")
    assert common.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("script", [bench_train_step, bench_overhead, bench_cif, bench_ensemble, bench_optim])
def test_every_script_exits_2_with_one_line_for_device_cuda_without_a_gpu(script, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        script.main(args=["--device", "cuda", "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    assert "error: --device cuda: CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------------------ train step


def test_step_flops_of_the_tiny_unet_equal_the_hand_count():
    setup = bench_train_step.TASKS["unet"](bench_train_step.TaskSpec(2, 16, "fp32", False, torch.device("cpu"),
                                                                      "tiny"))
    # (cin, cout, k, side of the input grid) of every conv of depth 2, base width 4, on 16x16;
    # the transposed convs (k=2) scatter from their input grid.
    convs = [(3, 4, 3, 16), (4, 4, 3, 16), (4, 8, 3, 8), (8, 8, 3, 8), (8, 16, 3, 4), (16, 16, 3, 4),
             (16, 8, 2, 4), (16, 8, 3, 8), (8, 8, 3, 8), (8, 4, 2, 8), (8, 4, 3, 16), (4, 4, 3, 16), (4, 5, 1, 16)]
    forward = sum(2 * 2 * s * s * cin * cout * k * k for cin, cout, k, s in convs)
    first_input_grad = 2 * 2 * 16 * 16 * 3 * 4 * 9  # the image needs no gradient
    flops = bench_train_step.step_flops(setup)
    assert flops["by_op"]["aten.convolution"] == forward
    assert flops["total"] == 3 * forward - first_input_grad


def test_step_flops_count_the_cpu_attention_of_the_tiny_hybrid_by_hand():
    setup = bench_train_step.TASKS["unet-transformer"](
        bench_train_step.TaskSpec(2, 16, "fp32", False, torch.device("cpu"), "tiny"))
    b, t, d = 2, (16 // 4) ** 2, 4 * 2**2  # 4x4 bottleneck tokens of width base_width * 2^depth
    by_op = bench_train_step.step_flops(setup)["by_op"]
    assert by_op["aten._scaled_dot_product_flash_attention_for_cpu"] == 2 * (2 * b * t * t * d)  # QK^T and PV


def test_train_step_bench_runs_both_tasks_on_a_tiny_size_and_writes_json_and_plot(tmp_path):
    out = tmp_path / "train.json"
    result = bench_train_step.main(args=[
        "--tasks", "unet", "unet-transformer", "--scale", "tiny", "--batch-sizes", "2", "--image-sizes", "16",
        "--precisions", "fp32", "bf16", "--no-compile", "--warmup", "1", "--repeat", "1", "--matmul-size", "64",
        "--profile-steps", "1", "--profile-task", "unet", "--profile-batch", "2", "--profile-size", "16",
        "--plot", "--out", str(out)])
    saved = _json(out)
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert MACHINE_KEYS <= set(saved["machine"])
    assert set(saved["matmul_peak"]) == {"fp32", "bf16"}
    assert [(r["task"], r["precision"], r["mode"]) for r in saved["rows"]] == [
        ("unet", "fp32", "eager"), ("unet", "bf16", "eager"),
        ("unet-transformer", "fp32", "eager"), ("unet-transformer", "bf16", "eager")]
    for row in saved["rows"]:
        assert row["ms"] > 0 and row["items_per_s"] > 0 and row["gflop"] > 0 and row["peak_fraction"] > 0
        assert row["peak_mb"] > 0 and row["compile_s"] is None
    assert saved["profile"]["top_ops"] and saved["profile"]["top_ops"][0]["self_cpu_ms_per_step"] > 0
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_train_step_bench_times_the_compiled_step_and_its_compile_cost(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCML_COMPILE_BACKEND", "aot_eager")  # the path, not inductor's code generation
    result = bench_train_step.main(args=[
        "--tasks", "unet", "--scale", "tiny", "--batch-sizes", "2", "--image-sizes", "16", "--precisions", "fp32",
        "--compile-batch-sizes", "2", "--compile-image-sizes", "16", "--warmup", "1", "--repeat", "1",
        "--matmul-size", "64", "--out", str(tmp_path / "train.json")])
    compiled = [r for r in result["rows"] if r["mode"] == "compiled"]
    assert len(compiled) == 1 and compiled[0]["compile_s"] > 0


def test_unknown_task_is_a_config_error_listing_the_tasks(capsys, tmp_path):
    with pytest.raises(SystemExit):
        bench_train_step.main(args=["--tasks", "wavenet", "--out", str(tmp_path / "x.json")])
    assert "unknown task 'wavenet'; TASKS has ['paraformer', 'unet', 'unet-transformer']" in capsys.readouterr().err


def test_train_step_bench_times_the_paraformer_step_in_utterances(tmp_path):
    result = bench_train_step.main(args=[
        "--tasks", "paraformer", "--scale", "tiny", "--batch-sizes", "2", "--image-sizes", "64", "--precisions",
        "fp32", "--no-compile", "--warmup", "1", "--repeat", "1", "--matmul-size", "64",
        "--out", str(tmp_path / "train.json")])
    (row,) = result["rows"]
    assert row["task"] == "paraformer" and row["unit"] == "utterances" and row["ms"] > 0


def test_asr_infer_bench_reports_rtf_for_each_batch_size_and_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCML_COMPILE_BACKEND", "aot_eager")
    out = tmp_path / "infer.json"
    result = bench_asr_infer.main(args=[
        "--tiny", "--num-utts", "3", "--batch-sizes", "1", "2", "--repeat", "1", "--cache-dir",
        str(tmp_path / "cache"), "--out", str(out)])
    saved = _json(out)
    assert [(r["mode"], r["batch"]) for r in saved["rows"]] == [("eager", 1), ("eager", 2), ("compiled", 1),
                                                                 ("compiled", 2)]
    assert all(r["rtf"] > 0 and 0 < r["frontend_share"] < 1 for r in result["rows"])
    assert saved["audio_seconds"] > 0 and MACHINE_KEYS <= set(saved["machine"])
    assert all(r["graphs"] >= 1 for r in saved["rows"] if r["mode"] == "compiled")


def test_asr_infer_bench_rejects_an_utterance_longer_than_every_bucket(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_asr_infer.main(args=["--tiny", "--num-utts", "1", "--batch-sizes", "1", "--repeat", "1",
                                   "--buckets", "8", "--cache-dir", str(tmp_path / "cache"),
                                   "--out", str(tmp_path / "infer.json")])
    assert exit_info.value.code == 2
    assert "frames > the largest of --buckets (8,)" in capsys.readouterr().err
    assert not (tmp_path / "infer.json").exists()


# ------------------------------------------------------------------------------ nn.Module U-Net


def _module_and_funcml(cfg: UNetConfig, key, dtype=torch.float32):
    params, state = models.init(key, cfg)
    params, state = tree.cast(params, dtype), tree.cast(state, dtype)
    return params, state, UNetModule.from_funcml(cfg, params, state).to(dtype)


@pytest.mark.parametrize("train", [False, True])
def test_unet_module_with_funcml_weights_gives_the_same_logits(getkey, train):
    cfg = UNetConfig(in_channels=3, num_classes=5, depth=3, base_width=8)  # BatchNorm, channels-last
    params, state, net = _module_and_funcml(cfg, getkey())
    x = random.normal(getkey(), (4, 3, 32, 32))
    want, new_state = models.apply(params, state, x, cfg, train=train)
    got = net.train(train)(x).detach()
    assert got.shape == want.shape == (4, 5, 32, 32)
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())  # float32 rounding only
    _, module_state = to_funcml(net, params, state)
    assert tree.allclose(module_state, new_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", [
    UNetConfig(depth=2, base_width=4, norm="group", groups=2, upsample="bilinear", channels_last=False),
    UNetConfig(depth=2, base_width=4, norm="instance", pad_fill="zeros", activation="gelu"),
    UNetConfig(depth=2, base_width=4, norm="none"),
])
def test_unet_module_matches_every_norm_upsampling_and_padding_in_float64(getkey, cfg):
    params, state, net = _module_and_funcml(cfg, getkey(), torch.float64)
    x = random.normal(getkey(), (2, 3, 13, 10), dtype=torch.float64)  # padded to 16 x 12, cropped back
    want, _ = models.apply(params, state, x, cfg, train=True)
    torch.testing.assert_close(net.train()(x).detach(), want, rtol=1e-12, atol=1e-12)


def test_unet_module_round_trips_the_funcml_params_and_consumes_no_global_rng(key):
    cfg = UNetConfig(depth=2, base_width=4)
    params, state = models.init(key, cfg)
    rng = torch.random.get_rng_state()
    net = UNetModule.from_funcml(cfg, params, state)
    assert torch.equal(torch.random.get_rng_state(), rng)
    back_params, back_state = to_funcml(net, params, state)
    assert tree.equal(back_params, params) and tree.equal(back_state, state)


def test_unet_module_rejects_dropout_it_cannot_reproduce():
    with pytest.raises(ConfigError, match="dropout=0.1 would draw from torch's global RNG"):
        UNetModule(UNetConfig(dropout=0.1))


def test_overhead_bench_module_and_funcml_follow_the_same_trajectory(tmp_path):
    out = tmp_path / "overhead.json"
    result = bench_overhead.main(args=[*TINY_SEG, "--no-compile", "--check-steps", "3",
                                       "--out", str(out)])
    saved = _json(out)
    assert MACHINE_KEYS <= set(saved["machine"])
    assert saved["agreement"]["steps"] == 3
    # Step 0 runs both sides on the same weights: the same loss to float32 rounding. Later losses
    # follow weights that may differ by the Adam bound below: at this tiny size (batch 2, 16x16,
    # BatchNorm over 2 samples) that moves the loss by up to ~1e-2.
    assert saved["agreement"]["abs_loss_diffs"][0] < 1e-6
    # Adam may turn rounding noise in a ~0 gradient into a step of up to lr: 0, 1/30, 2/30 of 5e-3
    # (plus float32 rounding of the weights themselves)
    assert saved["agreement"]["max_abs_param_diff"] <= 2 * 5e-3 * (0 + 1 + 2) / 30 + 1e-5
    assert [r["variant"] for r in saved["rows"]] == ["module-eager", "funcml-eager"]
    assert saved["ratios"]["module-eager"] == 1.0 and result["ratios"]["funcml-eager"] > 0


@pytest.mark.slow
def test_overhead_bench_times_the_compiled_funcml_step(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCML_COMPILE_BACKEND", "aot_eager")
    result = bench_overhead.main(args=[*TINY_SEG, "--check-steps", "1", "--out", str(tmp_path / "o.json")])
    assert [r["variant"] for r in result["rows"]] == ["module-eager", "funcml-eager", "funcml-compiled"]
    assert result["rows"][2]["compile_s"] > 0


# ------------------------------------------------------------------------------ optimizer


def test_optim_bench_times_four_variants_that_agree_with_torch_adamw(tmp_path):
    out = tmp_path / "optim.json"
    result = bench_optim.main(args=["--scale", "tiny", "--warmup", "1", "--repeat", "2", "--out", str(out)])
    saved = _json(out)
    assert MACHINE_KEYS <= set(saved["machine"])
    assert [r["variant"] for r in saved["rows"]] == ["funcml-fused", "funcml-chain", "torch-foreach", "torch-fused"]
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["torch-foreach"]["ratio"] == 1.0 and all(r["ms"] > 0 for r in rows.values())
    # one clip + AdamW step from the same params and grads: float32 rounding apart
    assert rows["funcml-fused"]["max_abs_param_diff_vs_torch"] < 1e-6
    assert rows["funcml-chain"]["max_abs_param_diff_vs_torch"] < 1e-6


# ------------------------------------------------------------------------------ CIF


def test_cif_loop_by_hand_fires_two_tokens_splitting_the_boundary_frame():
    h = torch.eye(3)[None]  # frame t is the unit vector e_t
    alpha = torch.tensor([[0.5, 0.7, 0.8]])
    out = bench_cif.cif_loop(h, alpha, tail_threshold=0.45)
    # token 0: all of frame 0 (0.5) and 0.5 of frame 1; token 1: the rest of frame 1 (0.2) and frame 2 (0.8)
    torch.testing.assert_close(out.embeds, torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]]]))
    assert out.lengths.tolist() == [2] and out.fire_positions.tolist() == [[1, 2]]


def test_cif_loop_rejects_a_frame_weight_that_would_close_two_tokens():
    with pytest.raises(RangeError, match="a frame weight reaches the threshold 1.0"):
        bench_cif.cif_loop(torch.ones(1, 2, 3), torch.tensor([[0.2, 1.5]]))


@pytest.mark.parametrize("train", [True, False])
def test_cif_loop_agrees_with_vectorized_cif_in_float64(getkey, train):
    inp = bench_cif.make_inputs(getkey(), 3, 60, 8, dtype=torch.float64)
    kw = dict(mask=inp["mask"], target_lengths=inp["target_lengths"] if train else None)
    want, got = cif(inp["h"], inp["alpha"], **kw), bench_cif.cif_loop(inp["h"], inp["alpha"], **kw)
    assert torch.equal(got.lengths, want.lengths) and torch.equal(got.fire_positions, want.fire_positions)
    torch.testing.assert_close(got.embeds, want.embeds, rtol=1e-10, atol=1e-10)


def test_cif_loop_gradients_agree_with_vectorized_cif_in_float64(getkey):
    inp = bench_cif.make_inputs(getkey(), 2, 40, 4, dtype=torch.float64)
    report = bench_cif.compare(inp)
    assert report["lengths_equal"] and report["fire_positions_equal"]
    for name in ("max_abs_embeds_diff", "max_abs_grad_h_diff", "max_abs_grad_alpha_diff"):
        assert report[name] < 1e-10, name


def test_cif_bench_runs_on_a_tiny_size_and_reports_speedup_and_agreement(tmp_path):
    out = tmp_path / "cif.json"
    bench_cif.main(args=["--lengths", "20", "40", "--dim", "8", "--batch-size", "2", "--warmup", "1", "--repeat", "1",
                         "--out", str(out)])
    saved = _json(out)
    assert MACHINE_KEYS <= set(saved["machine"])
    assert [r["T"] for r in saved["rows"]] == [20, 40]
    for row in saved["rows"]:
        assert row["speedup_fwd"] > 0 and row["speedup_fwd_bwd"] > 0
        assert row["lengths_equal"] and row["fire_positions_equal"]
        assert row["max_abs_embeds_diff"] < 2e-3 and row["vec_err_embeds"] < 1e-4  # sqrt(eps) max|h| at most


# ------------------------------------------------------------------------------ ensembles


def test_ensemble_bench_vmapped_members_equal_sequential_single_models(tmp_path):
    out = tmp_path / "ensemble.json"
    bench_ensemble.main(args=[*TINY_SEG, "--sizes", "1", "2", "--check-steps", "2", "--out", str(out)])
    saved = _json(out)
    assert MACHINE_KEYS <= set(saved["machine"])
    assert [r["N"] for r in saved["rows"]] == [1, 2]
    for row in saved["rows"]:
        assert row["max_abs_loss_diff"] < 1e-5
        # Adam may turn rounding noise in a ~0 gradient into a step of up to lr; the warmup's
        # first two rates are 0 and 5e-3 / 30
        assert row["max_abs_param_diff"] <= 2 * 5e-3 / 30 + 1e-6
        assert row["vmapped_ms"] > 0 and row["sequential_ms"] > 0 and row["speedup"] > 0


def test_without_out_a_benchmark_writes_a_fresh_file_and_never_the_committed_one(monkeypatch, tmp_path):
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    committed = tmp_path / "bench_optim.json"
    committed.write_text("{}")
    first = common.fresh_results_path("bench_optim")
    first.write_text("{}")
    second = common.fresh_results_path("bench_optim")
    assert first.parent == tmp_path and first.name.startswith("bench_optim-") and first.suffix == ".json"
    assert second != first and not second.exists() and committed.read_text() == "{}"


# ------------------------------------------------------------------------------ kill_during_save


def test_kill_during_save_counts_no_broken_checkpoint_and_no_dead_end(tmp_path):
    from benchmarks import kill_during_save

    out = tmp_path / "kill.json"
    payload = kill_during_save.main(["--kills", "2", "--damage-trials", "10", "--mb", "1", "--max-delay-s", "0.3",
                                     "--out", str(out)])
    s = _json(out)["summary"]
    assert s == payload["summary"]
    assert (s["kills"], s["broken_after_kill"], s["damage_trials"], s["dead_end_resumes"]) == (2, 0, 10, 0)
    assert all(r["killed"] for r in payload["kills"])
    assert len({r["damage"] for r in payload["damage"]}) == 10
