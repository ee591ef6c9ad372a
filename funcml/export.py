"""Export a trained model's pure apply function: `torch.export` (and ONNX when `onnx` is installed).

    ep = export_model(params, state, cfg, example_input, path="model.pt2")
    ep = torch.export.load("model.pt2")
    out = ep.module()(x)                      # == models.apply(params, state, x, cfg, train=False)[0]

    export_onnx(params, state, cfg, example_input, "model.onnx")   # needs `pip install onnx onnxscript`

What is exported is the eval-mode forward of any registered model (`funcml.nn.model`):

    f(x) = apply(params, state, x, cfg, train=False)[0]

with `params` and `state` baked in: they become buffers of the program (`ep.state_dict`, dotted
names with "." written "__", e.g. `enc__0__conv__w`), so the program takes only `x`, and `x` has
the structure of `example_input` (a tensor, or a dict of tensors such as the Paraformer's
`{"features": [B, T, F], "feat_lengths": [B]}`). The output is `apply`'s (the segmentation logits
`[B, K, H, W]`), a NamedTuple becoming the dict of its fields (`torch.export.save` cannot store a
NamedTuple class): the Paraformer's `ParaformerOutput._asdict()`, CIF's fired tokens included
(CIF is vectorized with a static token budget `max_tokens`, so it exports).

Shapes are static: the program is specialized to `example_input`'s shapes (export once per shape
you serve; pad audio features to a fixed T and pass the true `feat_lengths`). Marking a
dimension dynamic fails with torch's "You marked batch as dynamic but your code specialized it to
be a constant (2)": the shape checks at the models' boundaries (`funcml.checks.check_shape`)
read sizes as Python ints. Values are not specialized: other inputs of the same shape give
`apply`'s outputs (tested to atol 1e-5; on CPU they agree bit for bit).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from . import tree
from .errors import ConfigError
from .nn import model as models

__all__ = ["export_model", "export_onnx", "load_exported", "ApplyModule"]

PyTree = Any


class ApplyModule(torch.nn.Module):
    """`forward(x) = apply(params, state, x, cfg, train=False)[0]` as a torch module whose buffers are
    the params and state (what `torch.export` and `torch.onnx` take); a NamedTuple output is
    returned as the dict of its fields."""

    def __init__(self, params: PyTree, state: PyTree, cfg: Any):
        super().__init__()
        models.get(cfg)  # a ConfigError names an unregistered config class
        self.cfg = cfg
        self._like = (params, state)
        self._names = list(tree.flatten_with_names({"params": params, "state": state}))
        for name, t in tree.flatten_with_names({"params": params, "state": state}).items():
            if not isinstance(t, torch.Tensor):
                raise ConfigError(f"export: every leaf of params and state must be a tensor, {name} is "
                                  f"{type(t).__name__}")
            self.register_buffer(name.replace(".", "__"), t)

    def forward(self, x: Any) -> Any:
        """The eval-mode output of the model on `x`."""
        named = {n: getattr(self, n.replace(".", "__")) for n in self._names}
        both = tree.unflatten_from_names(named, {"params": self._like[0], "state": self._like[1]})
        out, _ = models.apply(both["params"], both["state"], x, self.cfg, train=False)
        if isinstance(out, tuple) and hasattr(out, "_asdict"):  # a NamedTuple: saved programs hold dicts
            return out._asdict()
        return out


def export_model(params: PyTree, state: PyTree, cfg: Any, example_input: Any, *,
                 path: str | os.PathLike | None = None) -> torch.export.ExportedProgram:
    """`torch.export.export` of the model's eval-mode apply with params and state baked in as
    buffers, specialized to `example_input`'s shapes (see the module doc); saved to `path` with
    `torch.export.save` when given (load it with `torch.export.load` or `load_exported`)."""
    module = ApplyModule(params, state, cfg).eval()
    with torch.no_grad():
        ep = torch.export.export(module, (example_input,))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.pt2")  # torch.export.save wants .pt2
        try:
            torch.export.save(ep, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return ep


def load_exported(path: str | os.PathLike) -> torch.export.ExportedProgram:
    """`torch.export.load(path)`, with a DataError naming a missing or unreadable file."""
    from .errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such exported program; write one with funcml.export.export_model(..., path=)")
    try:
        return torch.export.load(path)
    except Exception as e:  # torch raises several types for a file that is not an exported program
        raise DataError(f"{path}: not a torch.export program ({type(e).__name__}: {e})") from None


def export_onnx(params: PyTree, state: PyTree, cfg: Any, example_input: Any, path: str | os.PathLike) -> Path:
    """The same function as `export_model`, written as ONNX to `path` (`torch.onnx.export` with the
    dynamo exporter, static shapes). Needs the optional packages `onnx` and `onnxscript`; without
    them a ConfigError says `pip install onnx onnxscript`."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"export_onnx needs the optional package(s) {', '.join(missing)}: "
                          f"pip install {' '.join(missing)} (torch.export needs neither: use export_model)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = ApplyModule(params, state, cfg).eval()
    with torch.no_grad():
        torch.onnx.export(module, (example_input,), str(path), dynamo=True)
    return path
