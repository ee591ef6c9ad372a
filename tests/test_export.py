"""funcml.export: the eval-mode pure apply of a model as a torch.export program (params baked in),
saved and loaded, giving the outputs of `apply` on new inputs of the exported shape. (The
Paraformer's export, CIF included: tests/test_asr_recognizer.py.)"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from funcml import random, tree
from funcml.errors import ConfigError, DataError
from funcml.export import export_model, export_onnx, load_exported
from funcml.nn import model as models
from funcml.seg import Segmenter
from funcml.seg.unet import UNetConfig

ATOL = 1e-5  # exported vs eager apply; on CPU they agree bit for bit (asserted below)


def test_a_unet_transformer_run_exports_saves_loads_and_gives_the_apply_logits(seg_tiny_run, tmp_path):
    seg = Segmenter.load(seg_tiny_run)
    seg.export(tmp_path / "seg.pt2", batch=2)
    ep = load_exported(tmp_path / "seg.pt2")
    x = random.normal(random.key(1), (2, 3, 16, 16))  # not the zeros it was exported with
    want, _ = models.apply(seg.params, seg.model_state, x, seg.model_cfg, train=False)
    got = ep.module()(x)
    assert got.shape == (2, seg.num_classes, 16, 16)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert torch.equal(got, want)


def test_the_params_are_buffers_of_the_program_under_their_dotted_names():
    cfg = UNetConfig(in_channels=1, num_classes=2, depth=2, base_width=4)
    params, state = models.init(random.key(0), cfg)
    ep = export_model(params, state, cfg, torch.zeros(1, 1, 8, 8))
    named = tree.flatten_with_names(params)
    assert {f"params__{n.replace('.', '__')}" for n in named} <= set(ep.state_dict)
    for n, t in named.items():
        assert torch.equal(ep.state_dict[f"params__{n.replace('.', '__')}"], t)
    x = random.uniform(random.key(2), (1, 1, 8, 8))
    torch.testing.assert_close(ep.module()(x), models.apply(params, state, x, cfg)[0], atol=ATOL, rtol=0)


def test_onnx_export_without_the_onnx_package_says_pip_install_onnx(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as on a machine without them, installed or not
                        lambda name, *a: None if name in ("onnx", "onnxscript") else real_find_spec(name, *a))
    cfg = UNetConfig(in_channels=1, num_classes=2, depth=2, base_width=4)
    params, state = models.init(random.key(0), cfg)
    with pytest.raises(ConfigError, match="pip install onnx"):
        export_onnx(params, state, cfg, torch.zeros(1, 1, 8, 8), "/tmp/never-written.onnx")


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None
                    or importlib.util.find_spec("onnxruntime") is None,
                    reason="ONNX export needs the optional packages onnx, onnxscript and onnxruntime "
                           "(pip install onnx onnxscript onnxruntime)")
def test_onnx_export_gives_the_apply_logits(tmp_path):
    import numpy as np
    import onnxruntime

    cfg = UNetConfig(in_channels=1, num_classes=2, depth=2, base_width=4)
    params, state = models.init(random.key(0), cfg)
    path = export_onnx(params, state, cfg, torch.zeros(1, 1, 8, 8), tmp_path / "m.onnx")
    x = random.uniform(random.key(2), (1, 1, 8, 8))
    session = onnxruntime.InferenceSession(str(path))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, models.apply(params, state, x, cfg)[0].numpy(), atol=1e-4)


def test_a_missing_program_file_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="nope.pt2"):
        load_exported(tmp_path / "nope.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(DataError, match="junk.pt2"):
        load_exported(tmp_path / "junk.pt2")


def test_a_config_without_a_registered_model_is_a_config_error():
    @dataclasses.dataclass(frozen=True)
    class Unknown:
        dim: int = 1

    with pytest.raises(ConfigError, match="Unknown"):
        export_model({}, {}, Unknown(), torch.zeros(1))
