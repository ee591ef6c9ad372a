"""Pure training: the train state, train/eval steps and the loop every application uses."""

from .state import LossScaleState, TrainState

__all__ = ["TrainState", "LossScaleState"]
