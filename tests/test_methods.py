"""The method registry and the one source of each parameter's default: the schema's enum, the README's
table and the library's defaults follow them; a new method is one registry entry."""
import dataclasses
import inspect
import math

import pytest
import torch
import yaml

from dyn.analysis import metric_files, metrics, nulls
from dyn.errors import UserError
from dyn.grid.runs import RunSpec, runs_from_json
from dyn.training import evolution, methods
from dyn.training.recipe import Recipe

from conftest import REPO, schema_defaults

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
DISTILL = SCHEMA["properties"]["distill"]["properties"]
ROW = DISTILL["runs"]["items"]["properties"]


def test_the_schemas_method_enum_and_options_follow_the_registry():
    assert ROW["method"]["enum"] == list(methods.METHODS)
    for name, option in methods.OPTIONS.items():  # each option: grid-wide in distill, and per row
        kind = "integer" if option.kind is int else "number"
        assert DISTILL[name]["type"] == ROW[name]["type"] == kind, name
    assert set(ROW) - {"method", "layers", "beta", "epochs"} == set(methods.OPTIONS)


def test_config_readme_shows_the_registry_as_it_is():
    assert methods.markdown_table() in (REPO / "config" / "README.md").read_text()


def test_the_schemas_defaults_and_the_librarys_are_the_same():
    config = schema_defaults()
    analysis, distill = config["analysis"], config["distill"]
    row = distill["runs"][0]
    spec_defaults = {f.name: f.default for f in dataclasses.fields(RunSpec)}
    # RunSpec (a run given without a config, `dyn distill --runs`) against a row the schema filled in.
    assert (spec_defaults["layers"], spec_defaults["beta"], spec_defaults["seed"]) == (
        row["layers"], row["beta"], distill["seeds"][0])
    # The method options: the registry's defaults against the distill section's.
    assert {name: option.default for name, option in methods.OPTIONS.items()} == {
        name: distill[name] for name in methods.OPTIONS}
    # The training recipe: every train key; the dataset section's (a config given in code).
    assert dataclasses.asdict(Recipe()) == config["train"]
    from dyn.data import DATASET_DEFAULTS

    assert DATASET_DEFAULTS == {key: config["dataset"][key] for key in DATASET_DEFAULTS}
    # The metric functions' defaults, for library users, against the analysis section's.
    assert metrics.DEFAULT_BINS == analysis["entropy_bins"]
    for function in (metric_files.write_metric, metric_files.metric_dataset, metric_files.stream_metrics,
                     metrics.block_sums, metrics.channel_entropy, metrics.entropy_total, nulls.per_image_entropies,
                     evolution.layer_profile):
        parameters = inspect.signature(function).parameters
        for name, key in (("bins", "entropy_bins"), ("entropy_range", "entropy_range"),
                          ("permutation_seed", "control_seed")):
            if name in parameters and parameters[name].default is not inspect.Parameter.empty:
                assert parameters[name].default == analysis[key], (function.__name__, name)
    # The snapshots have none: the workflow passes the config's.
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(evolution.Snapshots))


def test_a_run_spec_crosses_to_the_cli_and_back_unchanged():
    spec = RunSpec("pca", "First1+Last1", 0.2, 30, 2, (("pca_keep", 0.5),))
    assert spec.options == (("pca_images", 256), ("pca_keep", 0.5)), "every option, the missing at its default"
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert RunSpec("softkd", epochs=30.0, seed=2.0) == RunSpec("softkd", epochs=30, seed=2), "a whole float is an int"
    import json

    assert runs_from_json(json.dumps([spec.to_dict(), RunSpec("softkd", epochs=30, seed=2).to_dict()])) == [
        spec, RunSpec("softkd", "none", 0.0, 30, 2)]


@pytest.mark.parametrize("fields, fragment", [
    (dict(method="spectral", layers="Last1", beta=math.nan, epochs=1), "beta must be a finite number >= 0"),
    (dict(method="spectral", layers="Last1", beta=-0.1, epochs=1), "beta must be a finite number >= 0"),
    (dict(method="spectral", layers="Last1", beta=math.inf, epochs=1), "beta must be a finite number >= 0"),
    (dict(method="spectral", layers="Last1", beta=True, epochs=1), "beta must be a finite number >= 0"),
    (dict(method="softkd", epochs=0), "epochs must be at least 1"),
    (dict(method="softkd", epochs=1, seed="0"), "seed must be an integer"),
    (dict(method="fitnet", epochs=1), "unknown method 'fitnet': valid methods are softkd, spectral"),
    (dict(method="pca", layers="Last1", epochs=1, options=(("pca_images", 1.5),)), "pca_images must be an integer"),
    (dict(method="spectral", layers="Last1", epochs=1, options=(("lowpass_keep", 0.5),)), "has no option lowpass_keep"),
])
def test_a_run_spec_checks_each_value_where_it_enters(fields, fragment):
    with pytest.raises(UserError, match=None) as error:
        RunSpec(**fields)
    assert fragment in str(error.value)


def _cosine(task, maps, teacher_maps):  # 1 - cosine similarity of the flattened maps, channels pooled
    from dyn.training.losses import pool_channels

    pairs = [(s.flatten(1), pool_channels(t, s.shape[1]).flatten(1)) for s, t in zip(maps, teacher_maps)]
    return torch.stack([1 - torch.nn.functional.cosine_similarity(s, t).mean() for s, t in pairs]).mean()


def test_a_new_method_is_one_registry_entry(monkeypatch):
    # An entry, and the run spec and the task take it: no branch elsewhere names a method.
    import timm

    from dyn.training.task import LayerDistillationTask, SharedTeacher

    monkeypatch.setitem(methods.METHODS, "cosine", methods.Method(
        "1 - cosine similarity", feature_loss=_cosine,
        options={"scale": methods.Option(1.0, low_open=True, help="unused")}))
    spec = RunSpec("cosine", "Last1", 0.5, 1)
    assert spec.run_id == "cosine_Last1_b0.5_e1_s0" and spec.options == (("scale", 1.0),)
    torch.manual_seed(0)
    task = LayerDistillationTask(timm.create_model("deit_digits"), timm.create_model("cait_digits").eval(), [(7, 11)],
                                 "cosine", beta=0.5, alpha=0.9, temperature=1.0, label_smoothing=0.0,
                                 options=dict(spec.options)).train()
    x = torch.randn(4, 1, 8, 8)
    teacher = SharedTeacher([task])(x)
    out = task(x, torch.arange(4), teacher)
    _, maps = task.trainable_module(x)
    assert torch.allclose(out["feat_loss"], _cosine(task, maps, [teacher.maps[11]]))
    assert torch.allclose(out["loss"], 0.1 * out["task_loss"] + 0.9 * out["kd_loss"] + 0.5 * out["feat_loss"])


def test_an_option_is_checked_with_its_range():
    keep = methods.METHODS["lowpass"].options["lowpass_keep"]
    assert keep.check("lowpass_keep", 1) == 1.0 and isinstance(keep.check("lowpass_keep", 1), float)
    for bad in (0, -0.5, 1.01, math.nan, "0.5", None, True):
        with pytest.raises(UserError, match=r"lowpass_keep must be a number in \(0, 1\]"):
            keep.check("lowpass_keep", bad)
    images = methods.METHODS["pca"].options["pca_images"]
    assert images.check("pca_images", 64.0) == 64 and isinstance(images.check("pca_images", 64.0), int)
    with pytest.raises(UserError, match="pca_images must be an integer >= 1"):
        images.check("pca_images", 0)


def test_the_lock_pins_every_dependency_within_its_range():
    from packaging.requirements import Requirement

    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]
              + project["optional-dependencies"]["slurm"]]
    for requirement in wanted:
        name = requirement.name.lower()
        assert name in pins, f"{name} is not in requirements.lock (make lock)"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"
