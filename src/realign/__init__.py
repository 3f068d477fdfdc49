"""realign: repair LLM finetunes that became misaligned."""

import logging as _logging

__version__ = "0.1.0"

# bitsandbytes logs a warning at import on CPUs with AVX512-BF16 when the optional `kernels`
# package is missing; it is noise for realign's CPU paths. The filter sits on that one logger.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "kernels-community" not in record.getMessage())


def __getattr__(name: str):
    # lazy: importing realign must not import transformers
    if name == "RealignCallback":
        from .callback import RealignCallback

        return RealignCallback
    raise AttributeError(name)


__all__ = ["RealignCallback", "__version__"]
