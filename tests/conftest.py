"""Test-wide setup.

Without a GPU, the Triton kernels run under Triton's interpreter, which must be switched on
before ``triton`` is first imported, hence here, at collection time.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Subprocesses (`python -m mplfast`, `python -c`, torchrun) must import the *installed* mplfast.
# Run from the repository root, Python would put the current directory first on sys.path and
# pick up the source tree instead, which has no compiled _C (Python >= 3.11 honours this).
os.environ["PYTHONSAFEPATH"] = "1"

import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """pytest-benchmark creates its storage folder (default ``./.benchmarks``) at start-up, even
    when no test benchmarks anything: tests must leave the work tree as they found it, so unless
    ``--benchmark-storage`` was given it goes to a temporary folder, removed at exit. (The
    benchmark plugin configures itself last, after this hook.)"""
    if not hasattr(config.option, "benchmark_storage"):  # pytest-benchmark not installed
        return
    if any(str(a).startswith("--benchmark-storage") for a in config.invocation_params.args):
        return
    import atexit
    import shutil
    import tempfile

    home = tempfile.mkdtemp(prefix="mplfast-benchmarks-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    config.option.benchmark_storage = f"file://{home}"


@pytest.fixture
def seeded():
    """A fresh, seeded torch generator per test, so failures reproduce."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="module")
def single_torch_thread():
    """torch on one thread for a whole test module, restored afterwards: the MPLStep tests use
    tiny models, where threading only adds overhead (and the CPU is shared). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
