"""Speech recognition (Paraformer): tokenizer, toy features, batching, metrics, and the model."""
