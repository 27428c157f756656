"""eoq: a llama.cpp-style inference engine with a compressed KV cache."""
import pkgutil as _pkgutil

# Development builds put _core in <build>/eoq/; extend_path lets `eoq._core` be found there.
__path__ = _pkgutil.extend_path(__path__, __name__)

from ._core import EoqError  # noqa: E402
from .engine import Completion, CompletionStream, Engine  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Engine", "Completion", "CompletionStream", "EoqError", "default_model_path",
           "__version__"]


def __getattr__(name):
    # eoq.models is imported on first use, so that `python -m eoq.models` runs it fresh.
    if name == "default_model_path":
        from .models import default_model_path

        return default_model_path
    raise AttributeError(f"module 'eoq' has no attribute {name!r}")
