import contextlib
import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch

import dyn.models  # noqa: F401  (registers the embedded architectures with timm for every test)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "benchmarks"))  # `import bench`: the benchmark scripts are not in the package

from cli_defaults import rule_args, rule_options, schema_defaults  # noqa: E402,F401  (for the tests)


# The longest files first (Slurm's mostly waits on the scheduler): `make test` gives each file to one
# xdist worker in collection order, and a long file started last would be the whole suite's tail.
LONGEST_FIRST = ("test_slurm.py", "test_workflow.py", "test_walkthrough.py", "test_parallel.py", "test_train.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
               else len(LONGEST_FIRST))  # stable: each file keeps its own order


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests share two cores with each other's subprocesses; one torch thread keeps timings stable.
    torch.set_num_threads(1)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def env() -> dict:
    """Environment for subprocesses: the venv's `dyn` and `snakemake` first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def tool(name: str) -> str:
    return str(BIN / name) if (BIN / name).exists() else shutil.which(name) or name


@pytest.fixture(scope="session")
def teacher(tmp_path_factory) -> Path:
    """An untrained cait_digits checkpoint (fixed seed), as `dyn fetch` would write it."""
    from dyn.models import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "cait.safetensors"
    save_weights(timm.create_model("cait_digits"), path)
    path.with_suffix(".json").write_text(json.dumps({"num_classes": 10}))
    return path



@dataclass
class Ran:
    returncode: int
    stderr: str


def dyn_here(args) -> Ran:
    """`dyn ARGS` run in this process, as its console script calls `dyn.cli.main`: no interpreter start
    and torch import per call. Its exit code and what it wrote to stderr."""
    from dyn.cli import main

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code or 0
    return Ran(code, err.getvalue())


def snapshots(**given):
    """The students' entropy snapshots at the config's defaults (the analysis section's, evolution_every),
    with `given` instead where given."""
    from dyn.training.evolution import Snapshots

    config = schema_defaults()
    analysis = config["analysis"]
    return Snapshots(**{"num_images": analysis["num_images"], "bins": analysis["entropy_bins"],
                        "every": config["distill"]["evolution_every"],
                        "sample": analysis["sample"], "sample_seed": analysis["sample_seed"],
                        "entropy_range": analysis["entropy_range"], "transform": analysis["transform"], **given})
