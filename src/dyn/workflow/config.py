"""Workflow config: Snakemake's schema validation (defaults filled in), cross-key checks, the run grid.

Every mistake becomes a UserError whose message is one line naming the key and what is valid,
so the Snakefile and the CLI can end with that line and exit code 2.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import yaml

from ..errors import UserError
from ..files import first_line, weights_kind
from ..grid import layers
from ..grid.runs import FIELDS, RunSpec
from ..training.methods import METHODS, OPTIONS


def _where(error) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else (f".{part}" if parts else str(part)))
    return "".join(parts) or "(top level)"


def _one_line(error) -> str:
    """A jsonschema ValidationError as one line: where, and what would be valid."""
    where = _where(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"config error at {where}: unknown key(s) {', '.join(map(repr, extra))}; valid keys are {', '.join(allowed)}"
    if error.validator == "enum":
        return f"config error at {where}: {error.instance!r} is not one of {', '.join(map(repr, error.validator_value))}"
    if error.validator == "oneOf" and error.context:  # every alternative: a name, or a prefixed one
        reasons = "; nor ".join(dict.fromkeys(context.message for context in error.context))
        return f"config error at {where}: {error.instance!r} is not valid ({reasons})"
    if error.validator == "propertyNames":
        return f"config error at {where}: bad model key {error.instance!r}: use letters, digits, '_', '.', '-'"
    return f"config error at {where}: {error.message}"


def validate(config: dict, schema_path: str | Path) -> dict:
    """Check `config` against the schema with `snakemake.utils.validate`, which fills in the schema's
    defaults in place, then the keys that refer to each other; raises UserError with one line."""
    from jsonschema import ValidationError
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as snakemake_validate

    try:
        snakemake_validate(config, str(Path(schema_path).resolve()), set_default=True)
    except WorkflowError as error:
        cause = error.__context__  # snakemake raises it while handling jsonschema's error
        if not isinstance(cause, ValidationError):
            raise
        raise UserError(_one_line(cause)) from None
    _check_references(config)
    return config


def _check_references(config: dict) -> None:
    models = config["models"]
    keys = ", ".join(sorted(models))
    for role in ("teacher", "student") if "distill" in config else ():
        key = config["distill"][role]
        if key not in models:
            raise UserError(f"config error at distill.{role}: unknown model key '{key}'; defined models are {keys}")
    for key in config["analysis"]["models"]:
        if key not in models:
            raise UserError(f"config error at analysis.models: unknown model key '{key}'; defined models are {keys}")
    for key, model in models.items():
        if model["weights"] == "train" and model["epochs"] < 1:
            raise UserError(f"config error at models.{key}.epochs: weights is 'train', so epochs must be at least 1")
        if weights_kind(model["weights"]) == "path" and not Path(model["weights"]).is_file():
            raise UserError(f"config error at models.{key}.weights: file not found: {model['weights']} "
                            "(valid: train, hub, an existing file, or an http(s) URL)")
    _check_stream(config)
    for name in OPTIONS:  # the grid-wide method options; each run's are checked in its RunSpec
        if name in config.get("distill", {}):
            try:
                OPTIONS[name].check(name, config["distill"][name])
            except UserError as error:
                raise UserError(f"config error at distill.{name}: {error}") from None
    for i, row in enumerate(config.get("distill", {}).get("runs", [])):
        for spec in _as_list(row["layers"]):
            try:
                layers.check_syntax(spec)
            except UserError as error:
                raise UserError(f"config error at distill.runs[{i}].layers: {error}") from None
    run_specs(config)


def _check_stream(config: dict) -> None:
    """A stream dataset (wds/, tfds/: read in order, no sample by index) serves the analysis of fetched
    weights on its first images only: say so before any job starts, naming the key that asks for more."""
    name = config["dataset"]["name"]
    if "/" not in name:
        return
    from ..timm_datasets import is_stream  # imports torch: only for timm's prefixed names

    if not is_stream(config["dataset"]):
        return
    what = f"dataset.name '{name}' is a stream (read in order, no sample by index), which serves only"
    if config["analysis"].get("sample") != "first":
        raise UserError(f"config error at analysis.sample: {what} sample: first (the first num_images images)")
    for key, model in config["models"].items():
        if model["weights"] == "train" or model["evaluate"]:
            field = "weights" if model["weights"] == "train" else "evaluate"
            raise UserError(f"config error at models.{key}.{field}: {what} the analysis of given weights: no "
                            "training or evaluation on it (weights: a file, URL or hub; evaluate: false)")
    if "distill" in config:
        raise UserError(f"config error at distill: {what} the analysis; distillation needs folder or hfds/")


# What each goal needs besides dataset, models and analysis (config/README.md says the same).
NEEDS_DISTILL = ("results/table1", "results/runs/", "results/figures/evolution", "results/figures/curves")


def check_targets(config: dict, targets) -> None:
    """One line naming the first requested target that needs a section the config lacks."""
    if "distill" in config:
        return
    for target in targets:
        if str(target).startswith(NEEDS_DISTILL):
            raise UserError(f"config error: {target} needs a distill section (teacher, student, runs), which this "
                            "config has not; without one it builds the analysis only (metrics, phases, figures)")


def use_python_path(config: dict) -> list[str]:
    """Put the config's python_path folders first on sys.path (where `module:function` models are
    imported from); returns them as absolute paths for the jobs' PYTHONPATH."""
    import sys

    folders = [str(Path(folder).resolve()) for folder in config["python_path"]]
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    return folders


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run_specs(config: dict) -> list[RunSpec]:
    """Every point of the grid, in config order, without repeats. A row's method options (`lowpass_keep`;
    `pca_keep`, `pca_images`) are its own or the distill section's (the schema fills in defaults)."""
    distill = config.get("distill", {})
    specs: dict[str, RunSpec] = {}
    for i, row in enumerate(distill.get("runs", [])):
        known = METHODS.get(row["method"], METHODS["softkd"]).options  # an unknown method fails in RunSpec
        options = {**{name: distill[name] for name in known if name in distill},
                   **{name: row[name] for name in OPTIONS if name in row}}
        combos = itertools.product(_as_list(row["layers"]), _as_list(row["beta"]), _as_list(row["epochs"]),
                                   distill["seeds"])
        for spec_layers, beta, epochs, seed in combos:
            try:
                spec = RunSpec(row["method"], spec_layers, beta, epochs, seed, tuple(options.items()))
            except UserError as error:
                field = str(error).split(" ", 1)[0]  # "beta must be ...": name the row's key
                where = f"distill.runs[{i}]" + (f".{field}" if field in (*FIELDS, *OPTIONS) else "")
                raise UserError(f"config error at {where}: {error}") from None
            if specs.setdefault(spec.run_id, spec) != spec:  # run ids do not name the options
                raise UserError(f"config error at distill.runs[{i}]: run {spec.run_id} is already in the grid with "
                                f"other options ({dict(specs[spec.run_id].options)}); give the other value in a "
                                "config of its own")
    return list(specs.values())


def check_models(config: dict, cache: str | Path | None = None) -> None:
    """Every model can be made (a timm name, an hf-hub id, a user's function; its layer globs match), and
    every run's layer spec fits teacher and student depths.

    Depths are read from weightless copies built on the meta device. Importing timm (and torch)
    for that costs seconds, so timm models' depths are kept in `cache` (a JSON file, per timm
    version) and a later start with the same architectures imports neither. A user's function is
    imported each time: its code may have changed.
    """
    # timm names (not hf-hub:, not module:function) without layer globs: cached, read in one pass
    plain = [m["arch"] for m in config["models"].values() if not m.get("layers") and ":" not in m["arch"]]
    cached = _model_depths(plain, cache) if plain else {}
    depths = {key: cached.get(model["arch"]) or _depth(key, model) for key, model in config["models"].items()}
    if "distill" not in config:
        return
    teacher, student = (depths[config["distill"][role]] for role in ("teacher", "student"))
    for spec in run_specs(config):
        if spec.method != "softkd" and not layers.is_auto(spec.layers):  # auto: checked once the phases exist
            layers.parse(spec.layers, student, teacher)


def _depth(key: str, model: dict) -> int:
    """A model's number of feature layers, or one line naming models.<key>.arch or .layers."""
    from .. import models

    arch, globs = model["arch"], model.get("layers")
    try:
        models.check_model_name(arch)
        return models.depth_of(arch, globs)
    except UserError as error:
        field = "layers" if globs and "matches no module" in str(error) else "arch"
        raise UserError(f"config error at models.{key}.{field}: {error}") from None


def _model_depths(archs: list[str], cache: str | Path | None) -> dict[str, int | None]:
    """{arch: number of feature layers, or None for a name timm does not know} of timm models."""
    from importlib.metadata import version

    from .. import __version__

    key = f"timm {version('timm')}, dyn {__version__}"  # dyn registers the embedded architectures
    cache = Path(cache) if cache else None
    known: dict = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text()).get(key, {})
        except (OSError, ValueError):
            known = {}
    missing = [arch for arch in dict.fromkeys(archs) if arch not in known]
    if missing:
        from .. import models

        for arch in missing:
            known[arch] = models.depth_of(arch) if models.is_known(arch) else None
        if cache is not None:
            from ..atomic import write_text

            try:
                write_text(cache, json.dumps({key: known}, indent=1, sort_keys=True))
            except OSError:
                pass  # a read-only folder only costs the next start the same seconds
    return {arch: known[arch] for arch in archs}


def load(path: str | Path, schema_path: str | Path) -> dict:
    """Read a YAML config file and validate it (see `validate`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"config file {path} is not valid YAML: {first_line(error)}") from None
    if not isinstance(config, dict):
        raise UserError(f"config file {path} must hold a mapping of keys (device, dataset, models, ...)")
    return validate(config, schema_path)


def check_file(path: str | Path, schema_path: str | Path, models: bool = True, targets=()) -> list[RunSpec]:
    """`dyn check-config`: load and check a config file (and that it has what `targets` need); returns
    the runs its grid expands to."""
    config = load(path, schema_path)
    check_targets(config, targets)
    use_python_path(config)
    if models:
        check_models(config)
    return run_specs(config)
