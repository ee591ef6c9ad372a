"""`--device` everywhere: the names, where tensors go, and that the training data paths stay on the
device they are given.

The "meta" device stands in for a GPU on a machine without one: its tensors have shapes and no
values, so a batch or a train step that runs through on "meta" never reads a value on the host (a
read raises) and never mixes devices (a non-scalar CPU tensor combined with a meta one raises).
Those are the two ways a CPU-tested pipeline breaks or stalls on CUDA. The CUDA runs themselves
are in tests/test_cuda.py (skipped without a GPU).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from funcml import devices, random, trainer, tree
from funcml.asr import task as asr_task
from funcml.asr.frontend import spec_augment, warp_frequency
from funcml.errors import ConfigError
from funcml.seg import task as seg_task
from funcml.seg.transforms import AugmentConfig, augment
from funcml.train import make_train_step

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_are_accepted_by_their_spelling(name):
    devices.check_name(name)


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", "", "cpu:0"])
def test_a_misspelt_device_is_a_config_error_naming_it_and_the_accepted_names(name):
    with pytest.raises(ConfigError, match=r"--device .* is not a device name; pass one of auto, cpu, cuda, cuda:N"):
        devices.resolve(name)


def test_cpu_and_auto_resolve_without_a_gpu_to_the_cpu():
    assert devices.resolve("cpu") == torch.device("cpu")
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    assert devices.resolve("auto") == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: cuda resolves")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_says_so_and_what_to_pass_instead(name):
    with pytest.raises(ConfigError, match=rf"--device {name}: CUDA is not available on this machine .* pass "
                                          r"--device cpu, or --device auto"):
        devices.resolve(name)


def test_the_flag_name_in_the_message_is_the_callers():
    with pytest.raises(ConfigError, match="--serve-device 'gpu'"):
        devices.resolve("gpu", flag="--serve-device")


@pytest.mark.parametrize("cls", [seg_task.SegTrainConfig, asr_task.AsrTrainConfig])
def test_train_configs_refuse_a_misspelt_device_when_built(cls):
    with pytest.raises(ConfigError, match="'gpu' is not a device name"):
        cls(device="gpu")
    assert cls().device == "auto"


# --------------------------------------------------------------------------- put / of


def test_put_moves_every_tensor_leaf_and_leaves_the_rest():
    t = {"a": torch.ones(2), "b": [torch.zeros(1, dtype=torch.int64), 3, "x"], "c": None}
    moved = devices.put(t, META)
    assert moved["a"].device == META and moved["b"][0].device == META and moved["b"][0].dtype == torch.int64
    assert moved["b"][1:] == [3, "x"] and moved["c"] is None
    assert devices.of(moved) == META and devices.of({"n": 1}) == torch.device("cpu")


def test_put_returns_leaves_already_on_the_device_as_they_are():
    x = torch.arange(3)
    assert devices.put({"x": x}, "cpu")["x"] is x


def test_describe_names_the_device_and_the_threads():
    assert devices.describe("cpu") == f"cpu ({torch.get_num_threads()} torch thread(s))"


# --------------------------------------------------------------------------- data and steps on a device


def _assert_on(pytree, device: torch.device) -> None:
    bad = {n: str(x.device) for n, x in tree.flatten_with_names(pytree).items()
           if isinstance(x, torch.Tensor) and x.device != device}
    assert not bad, f"leaves off {device}: {bad}"


def test_seg_shapes_batches_are_rendered_and_augmented_on_the_device_without_host_reads():
    cfg = seg_task.resolve_config(seg_task.PRESETS["unet-transformer"][1])
    x, masks = seg_task.train_batch_fn(cfg, META)(3)
    assert x.device == META and masks.device == META
    assert x.shape == (cfg.batch_size, cfg.model.in_channels, cfg.data.height, cfg.data.width)


def _folder(root: Path, n: int = 4, size: int = 40) -> Path:
    g = torch.Generator().manual_seed(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        img = (torch.rand(size, size, generator=g) * 255).to(torch.uint8).numpy()
        mask = ((torch.rand(size, size, generator=g) > 0.5).to(torch.uint8) * 255).numpy()
        Image.fromarray(img).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


def test_seg_folder_patches_are_put_on_the_device_and_augmented_there(tmp_path):
    base = seg_task.PRESETS["folder"][1]
    cfg = seg_task.resolve_config(dataclasses.replace(base, folder=_folder(tmp_path / "data"), class_map="0:0,255:1",
                                                      batch_size=2, patch=(32, 32)))
    x, masks = seg_task.train_batch_fn(cfg, META)(1)
    assert x.device == META and masks.device == META and x.shape == (2, 1, 32, 32)


def test_every_augmentation_draws_on_the_images_device():
    cfg = AugmentConfig(hflip_p=0.5, vflip_p=0.5, rot90=True, rotate_p=0.5, scale_p=0.5, elastic_p=0.5, noise_p=0.5,
                        blur_p=0.5, gamma_p=0.5, brightness=0.1, contrast=0.1, brightness_p=0.5, contrast_p=0.5)
    images = torch.empty(4, 1, 16, 16, device=META)
    masks = torch.empty(4, 16, 16, dtype=torch.int64, device=META)
    out, m = augment(random.key(0), images, masks, cfg)  # a CPU key, meta images
    assert out.device == META and m.device == META and out.shape == images.shape


def test_a_seg_train_step_runs_on_the_device_without_host_reads():
    cfg = seg_task.resolve_config(seg_task.PRESETS["unet-transformer"][1])
    ts, tx = trainer.initial_state(cfg)
    ts = devices.put(ts, META)
    step = make_train_step(seg_task.make_loss_fn(cfg), tx, compile=False, nonfinite="skip")
    new_ts, metrics = step(ts, seg_task.train_batch_fn(cfg, META)(0))
    _assert_on((new_ts, metrics), META)


def _asr_loss(cfg):
    def loss_fn(params, model_state, batch, key):
        loss, metrics = asr_task.paraformer_loss(params, batch, cfg.model, cfg.loss, key=key, train=True)
        return loss, (metrics, model_state)

    return loss_fn


def test_mel_warping_and_masking_draw_on_the_features_device():
    x = torch.empty(3, 20, 8, device=META)
    lengths = torch.tensor([20, 11, 5], device=META)
    assert warp_frequency(random.key(0), x, max_warp=0.1).device == META
    assert spec_augment(random.key(1), x, max_freq=3, lengths=lengths).device == META


def test_asr_batches_are_put_on_the_device_then_masked_there_and_the_step_runs():
    cfg = asr_task.resolve(dataclasses.replace(asr_task.PRESETS["tiny"][1], spec_augment=True))
    tok = asr_task.tokenizer_for(cfg)
    batch = asr_task.train_batch_fn(cfg, tok, META)(0)
    _assert_on(batch, META)
    ts, tx = trainer.initial_state(cfg)
    new_ts, metrics = make_train_step(_asr_loss(cfg), tx, compile=False, nonfinite="skip")(devices.put(ts, META), batch)
    _assert_on((new_ts, metrics), META)


def test_the_same_batches_on_the_cpu_as_before_the_device_was_threaded_through():
    # the device argument changes where a batch is made, not its bits (CPU here; CUDA in test_cuda.py)
    cfg = seg_task.resolve_config(seg_task.PRESETS["tiny"][1])
    a, b = seg_task.train_batch_fn(cfg)(5), seg_task.train_batch_fn(cfg, "cpu")(5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --------------------------------------------------------------------------- runs record and load their device


def test_a_cpu_run_records_its_device_and_loads_onto_the_device_asked_for(tmp_path, capsys):
    cfg = dataclasses.replace(seg_task.PRESETS["tiny"][1], steps=2, eval_every=2, runs_dir=tmp_path, device="cpu")
    run, _ = seg_task.train(cfg, progress=False)
    assert json.loads((run.path / "config.json").read_text())["device"] == "cpu"
    assert "device cpu (" in capsys.readouterr().err
    _, _, params, _ = seg_task.load_model(run.path, device="cpu")
    assert devices.of(params) == torch.device("cpu")


# --------------------------------------------------------------------------- every command has the flag

NO_COMPUTE = {  # scripts that run no model: nothing to place on a device
    "experiments/fsdd_manifest.py": "writes manifests",
    "experiments/summarize.py": "reads summaries",
    "benchmarks/plot_sweep.py": "plots a results JSON",
    "benchmarks/common.py": "the benchmarks' helpers (resolve_device)",
    "benchmarks/unet_module.py": "a torch.nn reference model imported by benchmarks",
}
TRAIN_CONFIG_SCRIPTS = {"experiments/seg_train.py", "experiments/asr_train.py"}  # the flag comes from TrainConfig


def _has_device_field(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == "device":
                    return True
    return False


SCRIPTS = sorted(str(p.relative_to(ROOT)) for d in ("experiments", "benchmarks") for p in (ROOT / d).glob("*.py"))


def test_the_scripts_without_a_model_exist():
    assert set(NO_COMPUTE) <= set(SCRIPTS)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in NO_COMPUTE])
def test_every_command_that_runs_a_model_takes_device(script):
    if script in TRAIN_CONFIG_SCRIPTS:
        assert "device" in {f.name for f in dataclasses.fields(trainer.TrainConfig)}
        return
    assert _has_device_field(ROOT / script), f"{script}: no `device` field in its config (add --device)"


# --------------------------------------------------------------------------- prefetching (on CUDA)


def test_prefetched_batches_are_the_functions_batches_in_and_out_of_order():
    calls = []

    def make(step: int) -> torch.Tensor:
        calls.append(step)
        return random.normal(random.fold_in(random.key(0), step), (3,))

    get = trainer.Prefetched(make)
    for step in (0, 1, 2, 7, 8, 3):
        assert torch.equal(get(step), make(step))
    assert calls.count(1) == 2 and calls.count(2) == 2  # made ahead once, and once more by the check above


def test_a_failing_prefetched_batch_raises_when_it_is_asked_for():
    def make(step: int) -> int:
        if step == 2:
            raise ValueError("bad file at step 2")
        return step

    get = trainer.Prefetched(make)
    assert get(0) == 0 and get(1) == 1
    with pytest.raises(ValueError, match="bad file at step 2"):
        get(2)
