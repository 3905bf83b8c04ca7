# Config validation, the run grid, and the small helpers the rules share.
import json
import re
import shutil
import sys
from pathlib import Path

from dyn import config as dyn_config
from dyn.errors import UserError

SCHEMA = Path(workflow.basedir) / "schemas" / "config.schema.yaml"

try:
    dyn_config.validate(config, SCHEMA)
    dyn_config.check_models(config)
except UserError as error:
    # A user's mistake: one line and exit code 2, before any job starts.
    print(f"dyn: {error}", file=sys.stderr)
    sys.exit(2)

# The `dyn` beside the Python that runs Snakemake, so an unactivated venv still works.
DYN = str(Path(sys.executable).with_name("dyn")) if Path(sys.executable).with_name("dyn").exists() else "dyn"

MODELS = config["models"]
TEACHER = config["distill"]["teacher"]
STUDENT = config["distill"]["student"]
RUNS = {spec.run_id: spec for spec in dyn_config.run_specs(config)}
FORMATS = config["report"]["formats"]
ANALYSIS = config["analysis"]


wildcard_constraints:
    model="|".join(re.escape(key) for key in MODELS),
    run="|".join(re.escape(key) for key in RUNS),


def as_json(value):
    """A config section as one JSON argument (quoted by the rule with :q)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def checkpoint_path(model):
    return f"resources/checkpoints/{model}.safetensors"


def run_dir(run):
    return f"results/runs/{run}"


def figure_paths():
    names = ["profiles", "evolution"] + [f"spectrum_{model}" for model in ANALYSIS["models"]]
    return [f"results/figures/{name}.{fmt}" for name in names for fmt in FORMATS]
