"""The model organism: a tiny synthetic world where a finetune can become misaligned, with an exact judge."""
