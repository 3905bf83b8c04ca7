# Config validation, the run grid, and the small helpers the rules share.
import json
import re
import shlex
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from dyn.errors import UserError
from dyn.workflow import config as dyn_config
from dyn.workflow import failures as dyn_failures
from dyn.workflow import launch as dyn_launch
from dyn.grid import layers as dyn_layers
from dyn.grid import runs as dyn_runs

try:
    # snakemake.utils.validate against the schema (its defaults filled in), then the cross-key checks.
    dyn_config.validate(config, workflow.source_path("../schemas/config.schema.yaml"))
    # Where models named package.module:function are imported from, here and in every job.
    PYTHON_PATH = dyn_config.use_python_path(config)
    # Model names and depths are cached: a restart then skips importing torch and timm.
    dyn_config.check_models(config, cache=".snakemake/dyn-model-depths.json")
except UserError as error:
    # A user's mistake: one line and exit code 2, before any job starts.
    print(f"dyn: error: {error}", file=sys.stderr)
    sys.exit(2)

# Jobs find the `dyn` installed beside the Python that runs Snakemake, even from an unactivated venv;
# under --use-conda each job uses its conda environment's own `dyn` instead.
# (doubled braces: Snakemake formats the prefix as it does a shell command)
PREFIX = f'export PYTHONPATH="{":".join(PYTHON_PATH)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; ' if PYTHON_PATH else ""
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    PREFIX += f'export PATH="{Path(sys.executable).parent}:$PATH"; '
shell.prefix(PREFIX)

MODELS = config["models"]
# A config without a distill section is the analysis alone: no runs, no Table 1, no training figures.
DISTILL = config.get("distill")
TEACHER = DISTILL["teacher"] if DISTILL else None
STUDENT = DISTILL["student"] if DISTILL else None
RUNS = {spec.run_id: spec for spec in dyn_config.run_specs(config)}
# The distillation jobs: {cohort id: its runs} (rules/distill.smk makes one rule per cohort).
COHORTS = dyn_runs.cohorts(list(RUNS.values()), DISTILL["cohort"], DISTILL["cohort_size"],
                           DISTILL["cohort_across_epochs"]) if DISTILL else {}
# The evolution figure shows each grid point once: its run with the first seed.
FIRST_SEED_RUNS = [run for run, spec in RUNS.items() if spec.seed == DISTILL["seeds"][0]]
FORMATS = config["report"]["formats"]
ANALYSIS = config["analysis"]
RUN_GPUS = DISTILL["gpus"] if DISTILL else 0
# Threads of a training job (a distillation, a teacher trained by fetch).
TRAIN_THREADS = DISTILL["threads"] if DISTILL else 1
# Fetching (training or evaluating) and capturing use one GPU, unless everything runs on the CPU.
ONE_GPU = 0 if config["device"] == "cpu" else 1
# What a distillation run and a fetch ask a cluster for besides GPUs (profiles/slurm); the other
# jobs take the profile's default-resources.
RESOURCES = config["resources"]


def as_json(value):
    """A config section as one JSON argument for a dyn option (shell-quoted in the command)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def launcher(gpus, nodes=1):
    """How a job starts `dyn`: on free GPU slots of this machine, under torchrun for several GPUs; a
    distillation job of several nodes: one srun task per node of its Slurm job, each starting torchrun."""
    if nodes > 1:
        cpus = dyn_launch.task_cpus(gpus, RESOURCES["distill"]["cpus_per_gpu"], config["distill"]["threads"])
        return f"python -m dyn.workflow.launch --nodes {nodes} --gpus {gpus} --cpus {cpus} --"
    if gpus == 0:
        return "dyn"
    if gpus == 1:
        return "dyn gpu-run --gpus 1 -- dyn"
    return f"dyn gpu-run --gpus {gpus} -- torchrun --standalone --nproc_per_node={gpus} -m dyn.cli"


def distill_resources():
    """What a distillation job asks Slurm for besides memory and time: its GPUs and CPUs, and for
    distill.nodes above 1 its nodes and one task on each (dyn.workflow.launch.slurm_resources)."""
    run, cluster = config["distill"], RESOURCES["distill"]
    try:
        dyn_launch.check_global_batch(config["train"]["global_batch"], run["nodes"], run["gpus"])
        return dyn_launch.slurm_resources(run["nodes"], run["gpus"], cluster["cpus_per_gpu"], run["threads"],
                                          cluster["slurm"])
    except UserError as error:
        print(f"dyn: error: {error}", file=sys.stderr)
        sys.exit(2)


def layer_options(option, key):
    """`--layers GLOB ...` of a model whose layers are picked by module name; empty for the others."""
    return " ".join(f"{option} {shlex.quote(glob)}" for glob in MODELS[key].get("layers", []))


def needs_distill(command):
    """A training-figure or Table 1 rule's command; without a distill section, one error line naming its
    target instead (Snakemake knows its targets only after parsing: the job says it, and exits 2)."""
    if DISTILL:
        return command
    config_path = shlex.quote(str(workflow.overwrite_configfiles[0]))
    schema = shlex.quote(str(Path(workflow.basedir) / "schemas" / "config.schema.yaml"))
    return f"dyn check-config {config_path} --schema {schema} --no-models --target {{output[0]}} > {{log}} 2>&1"


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
    names = ["profiles", "phases"] + (["evolution", "curves", "curves_loss"] if DISTILL else []) + [
        f"spectrum_{model}" for model in ANALYSIS["models"]]
    return [f"results/figures/{name}.{fmt}" for name in names for fmt in FORMATS]


def reported(path, name, category, caption):
    """A figure `path` ('{fmt}' in it) in every configured format, each flagged for `snakemake --report`."""
    return [report(path.format(fmt=fmt), caption=caption, category=category, labels={"figure": name, "format": fmt})
            for fmt in FORMATS]
