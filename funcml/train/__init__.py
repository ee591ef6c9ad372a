"""Pure training: the train state, train/eval steps and the loop every application uses."""

from .loop import EarlyStop, FitResult, fit
from .state import LossScaleState, TrainState
from .step import init_train_state, make_eval_step, make_train_step

__all__ = ["TrainState", "LossScaleState", "init_train_state", "make_train_step", "make_eval_step",
           "fit", "FitResult", "EarlyStop"]
