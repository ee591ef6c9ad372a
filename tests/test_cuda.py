"""The CUDA suite: the same contracts as on the CPU, run on a GPU (every test here is marked `cuda`
and skips with "needs a CUDA device" on a machine without one; tests/conftest.py).

What must be equal to the CPU bit for bit: random bits, the shapes generator, the integer-valued
augmentations (flips, rot90), checkpoints moved between devices. What may differ in the last bits
(float reductions and fused multiply-adds are ordered differently on the GPU, and CIF's scatter
sums use atomics): the train step, CIF, the elastic warp; those are compared with a tolerance.
Bit-exact resume on CUDA holds under `funcml.repro.deterministic()` (deterministic kernels).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch

from funcml import checkpoint, devices, random, repro, trainer, tree
from funcml.asr import task as asr_task
from funcml.asr.cif import cif
from funcml.nn import model as models
from funcml.nn.reference import MLPConfig
from funcml.seg import task as seg_task
from funcml.seg.transforms import AugmentConfig, augment
from funcml.train import make_train_step

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


def test_auto_picks_the_gpu():
    assert devices.resolve("auto").type == "cuda"
    assert devices.describe("cuda").startswith("cuda:")


def test_split_and_fold_in_give_the_cpu_bits():
    k = random.key(1234)
    assert torch.equal(random.split(k, 7), random.split(k.to(CUDA), 7).cpu())
    for data in (0, 2**40 + 3, "dropout"):
        assert torch.equal(random.fold_in(k, data), random.fold_in(k.to(CUDA), data).cpu())


def test_flips_and_rot90_give_the_cpu_bits_and_the_warp_is_close():
    images = random.uniform(random.key(0), (8, 1, 24, 24))
    masks = random.randint(random.key(1), (8, 24, 24), 0, 3)
    exact = AugmentConfig(hflip_p=0.5, vflip_p=0.5, rot90=True)
    a = augment(random.key(2), images, masks, exact)
    b = augment(random.key(2), images.to(CUDA), masks.to(CUDA), exact)
    assert torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu())
    warp = AugmentConfig(elastic_p=1.0, rotate_p=1.0, scale_p=1.0)
    a = augment(random.key(3), images, masks, warp)
    b = augment(random.key(3), images.to(CUDA), masks.to(CUDA), warp)
    torch.testing.assert_close(b[0].cpu(), a[0], atol=1e-4, rtol=0)
    assert (b[1].cpu() == a[1]).float().mean() > 0.995  # nearest-neighbour masks: ties at pixel borders may flip


def test_seg_training_batches_made_on_the_gpu_match_the_cpu_ones():
    cfg = seg_task.resolve_config(seg_task.PRESETS["unet-transformer"][1])
    for step in (0, 7):
        x_cpu, m_cpu = seg_task.train_batch_fn(cfg, "cpu")(step)
        x_gpu, m_gpu = seg_task.train_batch_fn(cfg, CUDA)(step)
        assert x_gpu.device.type == "cuda" and m_gpu.device.type == "cuda"
        assert torch.equal(m_cpu, m_gpu.cpu())
        torch.testing.assert_close(x_gpu.cpu(), x_cpu, atol=1e-5, rtol=0)


def test_cif_on_the_gpu_equals_the_cpu_to_float_tolerance():
    b, t, d = 4, 50, 16
    h = random.normal(random.key(0), (b, t, d))
    alpha = random.uniform(random.key(1), (b, t)) * 0.6
    mask = torch.arange(t)[None, :] < torch.tensor([50, 41, 30, 12])[:, None]
    for kw in ({"target_lengths": torch.tensor([9, 7, 5, 2])}, {}):
        cpu = cif(h, alpha, mask=mask, max_tokens=20, **kw)
        gpu = cif(h.to(CUDA), alpha.to(CUDA), mask=mask.to(CUDA), max_tokens=20,
                  **{k: v.to(CUDA) for k, v in kw.items()})
        assert torch.equal(cpu.lengths, gpu.lengths.cpu()) and torch.equal(cpu.fire_positions, gpu.fire_positions.cpu())
        torch.testing.assert_close(gpu.embeds.cpu(), cpu.embeds, atol=1e-5, rtol=1e-5)


def _seg_step(cfg, compile_: bool):
    ts, tx = trainer.initial_state(cfg)
    step = make_train_step(seg_task.make_loss_fn(cfg), tx, compile=compile_)
    return devices.put(ts, CUDA), step


def test_the_train_step_eager_and_compiled_agree_on_the_gpu():
    cfg = seg_task.resolve_config(seg_task.PRESETS["tiny"][1])
    batch = seg_task.train_batch_fn(cfg, CUDA)(0)
    (ts_e, step_e), (ts_c, step_c) = _seg_step(cfg, False), _seg_step(cfg, True)
    for _ in range(3):  # losses and gradient norms (params after AdamW are ill-conditioned: a zero-gradient
        ts_e, m_e = step_e(ts_e, batch)  # bias, e.g. attention's key bias, moves by +-lr on rounding noise)
        ts_c, m_c = step_c(ts_c, batch)
        torch.testing.assert_close(m_c["loss"], m_e["loss"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(m_c["grad_norm"], m_e["grad_norm"], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_train_on_the_gpu(precision):
    cfg = dataclasses.replace(seg_task.resolve_config(seg_task.PRESETS["tiny"][1]), precision=precision)
    ts, tx = trainer.initial_state(cfg)
    assert (ts.loss_scale is not None) == (precision == "fp16")
    ts = devices.put(ts, CUDA)
    step = make_train_step(seg_task.make_loss_fn(cfg), tx, precision=precision, compile=False)
    get_batch = seg_task.train_batch_fn(cfg, CUDA)
    losses = []
    for i in range(20):
        ts, m = step(ts, get_batch(i))
        losses.append(float(m["loss"]))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(x.dtype == torch.float32 for x in tree.leaves(ts.params))  # master weights stay fp32


def _seg_cfg(tmp: Path, **kw):
    return dataclasses.replace(seg_task.PRESETS["tiny"][1], runs_dir=tmp, device="cuda", **kw)


def test_a_run_trains_on_the_gpu_and_resumes_bit_exactly(tmp_path):
    with repro.deterministic(warn_only=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ops without a deterministic kernel warn (and would fail the equality)
        full, _ = seg_task.train(_seg_cfg(tmp_path / "a", steps=6, eval_every=3), progress=False)
        half, _ = seg_task.train(_seg_cfg(tmp_path / "b", steps=3, eval_every=3), progress=False)
        resumed, _ = seg_task.train(_seg_cfg(tmp_path / "b", steps=6, eval_every=3, resume=half.path), progress=False)
    assert json.loads((full.path / "config.json").read_text())["device"] == "cuda"
    like, _ = trainer.initial_state(seg_task.resolve_config(_seg_cfg(tmp_path)))
    a = checkpoint.restore(full.path / "checkpoints" / "step_000000006", like)
    b = checkpoint.restore(resumed.path / "checkpoints" / "step_000000006", like)
    assert tree.first_difference(a.params, b.params) is None and tree.first_difference(a.opt_state, b.opt_state) is None


def test_a_gpu_checkpoint_loads_on_the_cpu_and_a_cpu_one_on_the_gpu(tmp_path):
    run, _ = seg_task.train(_seg_cfg(tmp_path / "gpu", steps=2, eval_every=2), progress=False)
    _, _, on_cpu, _ = seg_task.load_model(run.path, device="cpu")
    _, _, on_gpu, _ = seg_task.load_model(run.path, device=CUDA)
    assert devices.of(on_cpu).type == "cpu" and devices.of(on_gpu).type == "cuda"
    assert tree.first_difference(on_cpu, devices.put(on_gpu, "cpu")) is None
    cpu_run, _ = seg_task.train(dataclasses.replace(_seg_cfg(tmp_path / "cpu", steps=2, eval_every=2), device="cpu"),
                                progress=False)
    _, _, params, _ = seg_task.load_model(cpu_run.path, device=CUDA)
    assert devices.of(params).type == "cuda"


def test_evaluate_on_the_gpu_gives_the_cpu_metrics(tmp_path):
    run, _ = seg_task.train(_seg_cfg(tmp_path, steps=2, eval_every=2), progress=False)
    results = {}
    for dev in ("cpu", CUDA):
        cfg, model_cfg, params, state = seg_task.load_model(run.path, device=dev)
        results[str(dev)] = seg_task.evaluate(params, state, model_cfg, list(seg_task.val_batches(cfg)), cfg)
    assert abs(results["cpu"]["mean_iou"] - results["cuda"]["mean_iou"]) < 1e-3


def _asr_tiny(tmp: Path, device: str) -> Path:
    run, _ = asr_task.train(dataclasses.replace(asr_task.PRESETS["tiny"][1], runs_dir=tmp, device=device),
                            progress=False)
    return run.path


def test_asr_trains_on_the_gpu_and_decodes_as_on_the_cpu(tmp_path):
    run = _asr_tiny(tmp_path, "cuda")
    cfg, params_gpu, tok = asr_task.load_model(run, device=CUDA)
    _, params_cpu, _ = asr_task.load_model(run, device="cpu")
    examples = asr_task.val_examples(cfg, tok)[:16]
    gpu = asr_task.transcribe(params_gpu, cfg, tok, examples)
    cpu = asr_task.transcribe(params_cpu, cfg, tok, examples)
    same = sum(g.text == c.text for g, c in zip(gpu, cpu))
    assert same >= len(examples) - 1  # a weight at a CIF threshold may tip one token


def test_the_service_runs_on_the_gpu(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from funcml.asr.serve import create_app

    run = _asr_tiny(tmp_path, "cpu")
    cfg, _, tok = asr_task.load_model(run)
    feats = asr_task.val_examples(cfg, tok)[0].features
    texts = {}
    for dev in ("cpu", "cuda"):
        with TestClient(create_app(run, device=dev)) as client:
            assert client.get("/v1/model").json()["model"]["device"].startswith(dev)
            r = client.post("/v1/transcribe", json={"features": feats.tolist()})
            assert r.status_code == 200, r.text
            texts[dev] = r.json()["text"]
    assert texts["cpu"] == texts["cuda"]


def test_dropout_on_the_gpu_draws_the_cpu_masks():
    cfg = MLPConfig(in_dim=4, hidden=(64,), out_dim=1, dropout=0.5)
    params, state = models.init(random.key(0), cfg)
    x = random.normal(random.key(1), (32, 4))
    cpu, _ = models.apply(params, state, x, cfg, key=random.key(2), train=True)
    gpu, _ = models.apply(devices.put(params, CUDA), devices.put(state, CUDA), x.to(CUDA), cfg,
                          key=random.key(2).to(CUDA), train=True)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
