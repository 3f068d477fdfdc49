"""Models in and out: loading checkpoints (full, LoRA, hub id), exporting a repaired model as an
adapter or keeping a LoRA unmerged, and the chat models shipped offline."""
