"""funcml.nn: layers as pure `(init, apply)` pairs over parameter dicts of tensors."""
