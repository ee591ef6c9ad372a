"""The model contract and the registry of models, keyed by config class.

Every model in funcml is a pair of pure functions, and the train, eval, checkpoint and
benchmark code relies on nothing else:

    params, state = init(key, cfg)
    out, state = apply(params, state, inputs, cfg, *, key=None, train=False)

* `cfg` is a frozen (hence hashable) dataclass; it is a static argument, so
  `torch.compile` specializes on it.
* `params` are the trained tensors, `state` the non-trained ones (BatchNorm running
  statistics), `{}` when there are none. Both are pytrees with stable dotted names
  (`funcml.tree.flatten_with_names`), the keys of checkpoints.
* `apply` never mutates its arguments: a model with state returns the new state, and in
  eval mode returns the state it was given.
* `key` is keyword-only. `train=True` on a model with dropout needs one: a missing key
  raises `PRNGKeyError` (`require_key`, the one guard every model and layer calls), never a
  silent default.
* Sub-keys are derived by name, never by position: the sub-tree at path `P` of a
  function's param tree (relative to the `key` that function receives, dot-joined as in
  `funcml.tree.flatten_with_names`) is initialized from `random.fold_in(key, P)`, and in
  `apply` draws its randomness from the same path (`subkey(key, P)`); a dropout site that is
  not a sub-tree is a named stream under its owner (`"attn.dropout"`). So the same key gives
  the same bits, and adding a layer or a sub-module never changes the params or the dropout
  masks of the others:

      init_paraformer:  params["encoder"] = init_encoder(fold_in(key, "encoder"), ...)
      init_encoder:     params["layers"]["3"] = init_block(fold_in(key, "layers.3"), ...)
      init_unet:        params["enc"]["0"]["conv1"] = init_conv2d(fold_in(key, "enc.0.conv1"), ...)

The registry maps a config class to its `Model(init, apply)`. Adding a variant is adding a
config class, its `init` and `apply`, and one call:

    @dataclasses.dataclass(frozen=True)
    class TinyConfig:
        dim: int = 4

    def init_tiny(key, cfg): ...
    def apply_tiny(params, state, x, cfg, *, key=None, train=False): ...

    register(TinyConfig, init_tiny, apply_tiny)

after which the dispatchers route by `type(cfg)`:

    params, state = model.init(key, TinyConfig())
    out, state = model.apply(params, state, x, TinyConfig())

Lookup is by exact class (a subclass of a registered config is not matched), so two
variants can never be confused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import torch

from .. import random
from ..errors import ConfigError, PRNGKeyError

__all__ = ["Model", "register", "get", "registered", "init", "apply", "require_key", "subkey"]

PyTree = Any
InitFn = Callable[..., tuple[PyTree, PyTree]]
ApplyFn = Callable[..., tuple[Any, PyTree]]


class Model(NamedTuple):
    """A model: `init(key, cfg) -> (params, state)` and
    `apply(params, state, x, cfg, *, key=None, train=False) -> (out, state)`."""

    init: InitFn
    apply: ApplyFn


_REGISTRY: dict[type, Model] = {}


def _is_frozen_dataclass(cls: Any) -> bool:
    return (isinstance(cls, type) and dataclasses.is_dataclass(cls)
            and cls.__dataclass_params__.frozen)  # type: ignore[attr-defined]


def register(cfg_cls: type, init: InitFn, apply: ApplyFn) -> Model:
    """Register the model of config class `cfg_cls` and return its `Model(init, apply)`.

    Arguments:
        cfg_cls: a frozen dataclass (the class, not an instance).
        init: `init(key, cfg) -> (params, state)`.
        apply: `apply(params, state, x, cfg, *, key=None, train=False) -> (out, state)`.

    Registering the same pair again is a no-op (so a module may be re-imported); a different
    pair for an already registered class is a `ConfigError`.
    """
    if not _is_frozen_dataclass(cfg_cls):
        raise ConfigError(
            f"register: cfg_cls must be a frozen dataclass class (@dataclasses.dataclass(frozen=True)), "
            f"got {cfg_cls!r}; configs are hashable static arguments")
    if not callable(init) or not callable(apply):
        raise ConfigError(f"register({cfg_cls.__name__}): init and apply must be callables, "
                          f"got {type(init).__name__} and {type(apply).__name__}")
    new = Model(init, apply)
    old = _REGISTRY.get(cfg_cls)
    if old is not None and old != new:
        raise ConfigError(
            f"register: {cfg_cls.__module__}.{cfg_cls.__qualname__} already has a model "
            f"({old.init.__name__}, {old.apply.__name__}); give the new variant its own config class")
    _REGISTRY[cfg_cls] = new
    return new


def registered() -> tuple[type, ...]:
    """The registered config classes, in registration order."""
    return tuple(_REGISTRY)


def get(cfg: Any) -> Model:
    """The `Model` registered for `type(cfg)` (or for `cfg` itself when it is a class).

    Raises: ConfigError naming the class and listing the registered ones.
    """
    cls = cfg if isinstance(cfg, type) else type(cfg)
    found = _REGISTRY.get(cls)
    if found is None:
        names = ", ".join(c.__name__ for c in _REGISTRY) or "none"
        raise ConfigError(
            f"no model is registered for config class {cls.__name__}; registered: [{names}]. "
            f"Import the module that defines it, or call funcml.nn.model.register({cls.__name__}, init, apply)")
    return found


def init(key: torch.Tensor, cfg: Any) -> tuple[PyTree, PyTree]:
    """`params, state = init(key, cfg)`, routed to the model registered for `type(cfg)`."""
    return get(cfg).init(key, cfg)


def apply(params: PyTree, state: PyTree, x: Any, cfg: Any, *, key: torch.Tensor | None = None,
          train: bool = False) -> tuple[Any, PyTree]:
    """`out, state = apply(params, state, x, cfg, key=key, train=train)`, routed by `type(cfg)`."""
    return get(cfg).apply(params, state, x, cfg, key=key, train=train)


def require_key(key: torch.Tensor | None, *, train: bool, needs_key: bool, model: str, why: str = "dropout",
                call: str = "apply") -> None:
    """Raise `PRNGKeyError` when `train` and the model needs randomness but `key` is None.

    The one key guard of funcml: every model and layer with randomness calls it first thing,
    so the error names the model (`model`), the randomness (`why`, e.g. `"dropout_rate=0.1"`)
    and the call to fix (`call`: `"apply"` for a model, the function's name for a layer),
    instead of failing deep inside a layer.
    """
    if train and needs_key and key is None:
        raise PRNGKeyError(
            f"{model}: train=True with {why} needs a PRNG key; pass {call}(..., key=k, train=True) "
            f"with k from funcml.random (e.g. random.fold_in(root_key, step)), or train=False for evaluation")


def subkey(key: torch.Tensor | None, path: str) -> torch.Tensor | None:
    """The key of the sub-tree (or named random stream) at dotted `path` below the owner of
    `key`: `random.fold_in(key, path)`, the sub-key rule of every model (see the module doc).
    None stays None, so `apply` in eval mode derives nothing."""
    return None if key is None else random.fold_in(key, path)
