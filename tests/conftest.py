import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _cuda_device() -> str | None:
    """Why there is no usable CUDA device (None: there is one)."""
    from dmc.engines.trt_api import compute_capability
    from dmc.errors import DmcError

    try:
        compute_capability()
    except DmcError as e:
        return str(e)
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    reason = _cuda_device() if gpu_items else None
    for item in gpu_items if reason else []:
        item.add_marker(pytest.mark.skip(reason=f"needs a CUDA device: {reason}"))


@pytest.fixture(scope="session")
def demo_artifact(tmp_path_factory):
    """The demo UNet compiled once per session: FP32, DDIM 10 steps, guidance 2."""
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    out = tmp_path_factory.mktemp("artifacts") / "demo.dmc"
    return compile_model("demo", out, CompileOptions(recipe=Recipe(steps=10, guidance=2.0)))


@pytest.fixture(scope="session")
def demo_dit_artifact(tmp_path_factory):
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    out = tmp_path_factory.mktemp("artifacts") / "demo-dit.dmc"
    return compile_model("demo-dit", out, CompileOptions(recipe=Recipe(steps=10, guidance=2.0)))


@pytest.fixture
def run_cli(capsys):
    """Run the real console entry point in-process; returns (exit_code, stdout, stderr)."""
    from dmc.cli import main

    def run(*args):
        code = 0
        try:
            main(list(map(str, args)))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
