"""A LoRA finetune kept unmerged: one copy of the base weights serves as both base and finetune.

Loading an adapter the usual way makes two full models (the base, and the base with the adapter
merged in) — for a 7B model in bf16, 28 GB instead of 14. Kept unmerged, the finetune is the peft
model and the base is the same model seen with its adapter switched off (`disable_adapter()`),
so evaluating both, and any repair that only changes the adapter (a linear merge scales it),
needs one copy of the weights plus the adapter.

`adapter_scalable` says when scaling the adapter is exactly the interpolation θ_base + α·Δ:
plain LoRA, no trained biases, no fully trained modules (`modules_to_save`), no DoRA (its
magnitude vector makes the change non-linear in the adapter's weights).
"""

from __future__ import annotations

import torch


class AdapterDisabled:
    """The base model seen through a peft model with its adapter off (never a second copy).

    Calls (forward, generate) run inside `disable_adapter()`; every other attribute (config,
    device, parameters for their device, get_output_embeddings, …) is the wrapped HF model's.
    Do not change weights through it: they are the finetune's base weights too.
    """

    def __init__(self, peft_model) -> None:
        self._peft = peft_model

    def get_base_model(self):
        return self._peft.get_base_model()

    def forward(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self._peft(*args, **kwargs)

    __call__ = forward

    def generate(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self._peft.generate(*args, **kwargs)

    def named_parameters(self, *args, **kwargs):
        """The base's own parameters (the adapter's left out)."""
        for name, p in self._peft.get_base_model().named_parameters(*args, **kwargs):
            if ".lora_" not in name:
                yield name, p

    def parameters(self, *args, **kwargs):
        for _, p in self.named_parameters(*args, **kwargs):
            yield p

    def __getattr__(self, name):
        return getattr(self._peft.get_base_model(), name)


def is_unmerged(model) -> bool:
    """A peft model whose adapter is live (not merged into the weights)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def adapter_scalable(adapter_config: dict) -> str | None:
    """None when scaling this adapter interpolates exactly between base and finetune, else why not."""
    if adapter_config.get("peft_type", "LORA") != "LORA":
        return f"a {adapter_config.get('peft_type')} adapter, not LoRA"
    if adapter_config.get("use_dora"):
        return "a DoRA adapter (its magnitude vector is not linear in the adapter)"
    if adapter_config.get("modules_to_save"):
        return "the adapter fully trains some modules (modules_to_save)"
    if adapter_config.get("bias", "none") != "none" or adapter_config.get("lora_bias"):
        return "the adapter trains biases"
    return None


def up_projections(model) -> dict[str, torch.Tensor]:
    """name -> a copy of every LoRA up-projection (B); the adapter's change is linear in these."""
    return {name: p.detach().clone() for name, p in model.named_parameters()
            if ".lora_B." in name or ".lora_embedding_B." in name}


@torch.no_grad()
def scale_adapter(model, up: dict[str, torch.Tensor], alpha: float) -> None:
    """B ← α·B₀ for every up-projection: the model becomes θ_base + α·(θ_ft − θ_base) exactly."""
    params = dict(model.named_parameters())
    for name, b in up.items():
        params[name].copy_((alpha * b.float()).to(params[name].dtype))
