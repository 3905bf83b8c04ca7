import copy

import pytest
import yaml

from dyn import config as configuration
from dyn.errors import UserError


@pytest.fixture
def default(repo):
    return yaml.safe_load((repo / "config" / "config.yaml").read_text())


@pytest.fixture
def schema(repo):
    return repo / "workflow" / "schemas" / "config.schema.yaml"


def _error(cfg, schema, check_models=False):
    with pytest.raises(UserError) as error:
        configuration.validate(cfg, schema)
        if check_models:
            configuration.check_models(cfg)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_default_config_is_valid_and_mirrors_table1(default, schema):
    cfg = configuration.validate(copy.deepcopy(default), schema)
    configuration.check_models(cfg)
    runs = {spec.run_id for spec in configuration.run_specs(cfg)}
    assert runs == {
        "softkd_none_b0_e20_s0", "softkd_none_b0_e40_s0",
        "spectral_First1+Last1_b0.2_e20_s0", "spectral_First1_b0.2_e20_s0", "spectral_Last1_b0.2_e20_s0",
        "spectral_Last1_b0.1_e20_s0", "spectral_Last8_b0.2_e20_s0",
        "projector_First1_b0.2_e20_s0", "projector_Last1_b0.2_e20_s0", "projector_First1+Last1_b0.2_e20_s0",
        "spectral_Last1_b0.2_e40_s0"}


def test_defaults_are_filled(default, schema):
    del default["train"]["label_smoothing"]
    del default["report"]
    cfg = configuration.validate(default, schema)
    assert cfg["train"]["label_smoothing"] == 0.1 and cfg["report"]["formats"] == ["png", "pdf"]
    assert cfg["models"]["cait"]["seed"] == 0


def test_grid_expands_lists_and_seeds(default, schema):
    default["distill"]["seeds"] = [0, 1]
    default["distill"]["runs"] = [{"method": "spectral", "layers": ["First1", "Last1"], "beta": [0.1, 0.2],
                                   "epochs": 3}]
    cfg = configuration.validate(default, schema)
    assert len(configuration.run_specs(cfg)) == 8


@pytest.mark.parametrize("mutate, fragment", [
    (lambda c: c.update(bogus=1), "unknown key(s) 'bogus'"),
    (lambda c: c["train"].update(lrr=1), "config error at train: unknown key(s) 'lrr'"),
    (lambda c: c["train"].update(batch_size="big"), "train.batch_size"),
    (lambda c: c["dataset"].update(name="mnist"), "'mnist' is not one of"),
    (lambda c: c["analysis"].update(num_images=0), "analysis.num_images"),
    (lambda c: c["distill"].update(teacher="nope"), "distill.teacher: unknown model key 'nope'"),
    (lambda c: c["analysis"].update(models=["cait", "vit"]), "unknown model key 'vit'"),
    (lambda c: c["distill"]["runs"][0].update(method="fitnet"), "'fitnet' is not one of"),
    (lambda c: c["distill"]["runs"][1].update(layers="Middle2"), "distill.runs[1].layers: bad layer spec 'Middle2'"),
    (lambda c: c["distill"]["runs"][1].update(epochs=0), "distill.runs[1].epochs"),
    (lambda c: c["models"]["cait"].update(epochs=0), "models.cait.epochs"),
    (lambda c: c["distill"]["runs"][1].update(layers="none"), "needs aligned layers"),
])
def test_mistakes_end_in_one_line(default, schema, mutate, fragment):
    mutate(default)
    assert fragment in _error(default, schema)


def test_unknown_model_name(default, schema):
    default["models"]["cait"]["arch"] = "cait_s24_2244"
    assert "models.cait.arch: unknown model 'cait_s24_2244'" in _error(default, schema, check_models=True)


def test_layer_spec_too_deep_for_the_student(default, schema):
    default["distill"]["runs"][1]["layers"] = "Last9"
    message = _error(default, schema, check_models=True)
    assert "Last9" in message and "student has 8 blocks, teacher has 12" in message
