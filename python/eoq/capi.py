"""Where the C API lives: the header and the shared library, for programs that embed eoq.

    cc app.c -I$(python -c "import eoq.capi as c; print(c.include_dir())") \\
             $(python -c "import eoq.capi as c; print(c.library_path())") -o app
"""
from pathlib import Path

from . import _core

_PKG = Path(_core.__file__).resolve().parent


def include_dir() -> Path:
    """Folder holding eoq.h (the wheel's eoq/include, or the source tree's include/)."""
    for d in (_PKG / "include", Path(__file__).resolve().parents[2] / "include"):
        if (d / "eoq.h").is_file():
            return d
    raise FileNotFoundError("eoq.h not found next to the eoq package")


def library_path() -> Path:
    """libeoq.so (the wheel's eoq/lib, or the CMake build folder in development)."""
    for p in (_PKG / "lib" / "libeoq.so", _PKG.parent / "libeoq.so"):
        if p.is_file():
            return p
    raise FileNotFoundError("libeoq.so not found next to the eoq package")
