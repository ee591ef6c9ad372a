"""funcml: a pure-functional, JAX-style deep-learning library in PyTorch.

Models are pure functions over explicit parameter pytrees; randomness comes only from
explicit keys; configs are frozen dataclasses; training steps are pure and compiled.

    from funcml import random
    from funcml.nn import model as models
    from funcml.nn.reference import MLPConfig

    cfg = MLPConfig(in_dim=8, hidden=(32,), out_dim=1, dropout=0.1)
    k_init, k_drop, k_x = random.split(random.key(0), 3)
    params, state = models.init(k_init, cfg)          # any registered config: U-Net, Paraformer, ...
    x = random.normal(k_x, (4, 8))
    out, state = models.apply(params, state, x, cfg, key=k_drop, train=True)

Start with `help(funcml.random)` and `help(funcml.tree)`.
"""

from . import checkpoint, checks, compiler, config, errors, nn, optim, random, repro, runs, train, tree
from .checks import check_dtype, check_finite, check_range, check_shape
from .errors import (CheckpointError, ConfigError, DataError, DTypeError, FuncmlError, NonFiniteError,
                     PRNGKeyError, RangeError, ShapeError)

__version__ = "0.1.0"

__all__ = [
    "checkpoint", "checks", "compiler", "config", "errors", "nn", "optim", "random", "repro", "runs", "train", "tree",
    "check_shape", "check_dtype", "check_range", "check_finite",
    "FuncmlError", "ShapeError", "DTypeError", "RangeError", "ConfigError", "DataError",
    "CheckpointError", "NonFiniteError", "PRNGKeyError",
]
