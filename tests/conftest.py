import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Development: EOQ_BUILD_DIR=build-x runs the tests against a CMake build folder instead of an
# installed package.
if os.environ.get("EOQ_BUILD_DIR"):
    sys.path.insert(0, str((ROOT / os.environ["EOQ_BUILD_DIR"]).resolve()))
    sys.path.insert(0, str(ROOT / "python"))

SHARED = ROOT.parent / "shared"
WIKITEXT = SHARED / "data" / "wikitext-2-test.txt"


@pytest.fixture(scope="session")
def smollm2_path():
    """The real test model (SmolLM2-135M-Instruct Q4_1). EOQ_TEST_MODEL overrides the path;
    otherwise the default-model cache is used (fetched by .ci/run before the tests)."""
    p = os.environ.get("EOQ_TEST_MODEL")
    if p:
        return p
    from eoq.models import default_model_path

    return str(default_model_path(download=False))


@pytest.fixture(scope="session")
def wikitext():
    assert WIKITEXT.exists(), f"{WIKITEXT} is missing: ../shared must sit beside the checkout"
    return WIKITEXT.read_text(encoding="utf-8")
