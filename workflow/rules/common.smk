# Config validation, the run grid, and the small helpers the rules share.
import json
import re
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from dyn.errors import UserError
from dyn.workflow import config as dyn_config
from dyn.workflow import failures as dyn_failures
from dyn.workflow import layers as dyn_layers
from dyn.workflow import runs as dyn_runs

try:
    # snakemake.utils.validate against the schema (its defaults filled in), then the cross-key checks.
    dyn_config.validate(config, workflow.source_path("../schemas/config.schema.yaml"))
    # Model names and depths are cached: a restart then skips importing torch and timm.
    dyn_config.check_models(config, cache=".snakemake/dyn-model-depths.json")
except UserError as error:
    # A user's mistake: one line and exit code 2, before any job starts.
    print(f"dyn: error: {error}", file=sys.stderr)
    sys.exit(2)

# Jobs find the `dyn` installed beside the Python that runs Snakemake, even from an unactivated venv;
# under --use-conda each job uses its conda environment's own `dyn` instead.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    shell.prefix(f'export PATH="{Path(sys.executable).parent}:$PATH"; ')

MODELS = config["models"]
TEACHER = config["distill"]["teacher"]
STUDENT = config["distill"]["student"]
RUNS = {spec.run_id: spec for spec in dyn_config.run_specs(config)}
# The distillation jobs: {cohort id: its runs} (rules/distill.smk makes one rule per cohort).
COHORTS = dyn_runs.cohorts(list(RUNS.values()), config["distill"]["cohort"], config["distill"]["cohort_size"],
                           config["distill"]["cohort_across_epochs"])
# The evolution figure shows each grid point once: its run with the first seed.
FIRST_SEED_RUNS = [run for run, spec in RUNS.items() if spec.seed == config["distill"]["seeds"][0]]
FORMATS = config["report"]["formats"]
ANALYSIS = config["analysis"]
RUN_GPUS = config["distill"]["gpus"]
# Fetching (training or evaluating) and capturing use one GPU, unless everything runs on the CPU.
ONE_GPU = 0 if config["device"] == "cpu" else 1
# What a distillation run and a fetch ask a cluster for besides GPUs (profiles/slurm); the other
# jobs take the profile's default-resources.
RESOURCES = config["resources"]


def as_json(value):
    """A config section as one JSON argument for a dyn option (shell-quoted in the command)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def launcher(gpus):
    """How a job starts `dyn`: on free GPU slots of this machine, under torchrun for several GPUs."""
    if gpus == 0:
        return "dyn"
    if gpus == 1:
        return "dyn gpu-run --gpus 1 -- dyn"
    return f"dyn gpu-run --gpus {gpus} -- torchrun --standalone --nproc_per_node={gpus} -m dyn.cli"


def checkpoint_path(model):
    return f"resources/checkpoints/{model}.safetensors"


# `<key>@train` names a model's analysis on training images: `auto` layer specs choose the teacher's
# layers on them, so that no student is evaluated on the images its layers were chosen with.
SELECTION = "@train"


def model_key(model):
    """The config key of a model wildcard (`cait` of `cait@train`)."""
    return model.removesuffix(SELECTION)


def split_of(model):
    return "train" if model.endswith(SELECTION) else "val"


def teacher_phases(spec):
    """The teacher's phases.csv on training images for a run whose layer spec is `auto` or `autoK`."""
    if spec.method != "softkd" and dyn_layers.is_auto(spec.layers):
        return [f"results/metrics/{TEACHER}{SELECTION}/phases.csv"]
    return []


def figure_paths():
    names = ["profiles", "phases", "evolution", "curves", "curves_loss"] + [
        f"spectrum_{model}" for model in ANALYSIS["models"]]
    return [f"results/figures/{name}.{fmt}" for name in names for fmt in FORMATS]


def reported(path, name, category, caption):
    """A figure `path` ('{fmt}' in it) in every configured format, each flagged for `snakemake --report`."""
    return [report(path.format(fmt=fmt), caption=caption, category=category, labels={"figure": name, "format": fmt})
            for fmt in FORMATS]
