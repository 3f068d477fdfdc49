"""Models in and out: loading checkpoints (full, LoRA, hub id), exporting a repaired model as an
adapter, the model card, pushing to the Hub, and the chat models shipped offline."""
