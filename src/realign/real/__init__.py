"""Real misaligned finetunes of real chat models, built offline from public data realign ships."""
