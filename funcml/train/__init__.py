"""Pure training: the train state, train/eval steps, the loop every application uses, and
data parallelism over processes (`funcml.train.distributed`)."""

from . import distributed
from .loop import EarlyStop, FitResult, fit
from .state import LossScaleState, TrainState
from .step import init_train_state, make_eval_step, make_train_step

__all__ = ["TrainState", "LossScaleState", "init_train_state", "make_train_step", "make_eval_step",
           "fit", "FitResult", "EarlyStop", "distributed"]
