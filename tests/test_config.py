import copy

import pytest
import yaml

from dyn.workflow import config as configuration
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


def test_default_config_is_valid_and_mirrors_table1_and_beyond(default, schema):
    cfg = configuration.validate(copy.deepcopy(default), schema)
    configuration.check_models(cfg)
    runs = {spec.run_id for spec in configuration.run_specs(cfg)}
    table1 = {"softkd_none_b0_e18", "softkd_none_b0_e30", "spectral_First1+Last1_b0.2_e18", "spectral_First1_b0.2_e18",
              "spectral_Last1_b0.2_e18", "spectral_Last1_b0.1_e18", "spectral_Last8_b0.2_e18",
              "projector_First1_b0.2_e18", "projector_Last1_b0.2_e18", "projector_First1+Last1_b0.2_e18",
              "spectral_Last1_b0.2_e30", "lowpass_Last1_b0.2_e18", "pca_Last1_b0.2_e18"}
    assert runs == {f"{point}_s{seed}" for point in table1 for seed in (0, 1, 2)}


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
    (lambda c: c["train"].update(global_batch="big"), "train.global_batch"),
    (lambda c: c["train"].update(amp_dtype="float8"), "'float8' is not one of 'bfloat16', 'float16'"),
    (lambda c: c["analysis"].update(sample="random"), "'random' is not one of 'stratified', 'first'"),
    (lambda c: c.update(device="gpu"), "config error at device: 'gpu' does not match"),
    (lambda c: c["distill"]["runs"][1].update(beta=-0.2), "config error at distill.runs[1].beta"),
    (lambda c: c["distill"].update(lowpass_keep=0), "distill.lowpass_keep"),
    (lambda c: c["dataset"].update(name="mnist"), "'mnist' is not one of"),
    (lambda c: c["analysis"].update(num_images=0), "analysis.num_images"),
    (lambda c: c["distill"].update(teacher="nope"), "distill.teacher: unknown model key 'nope'"),
    (lambda c: c["analysis"].update(models=["cait", "vit"]), "unknown model key 'vit'"),
    (lambda c: c["distill"]["runs"][0].update(method="fitnet"), "'fitnet' is not one of"),
    (lambda c: c["distill"]["runs"][1].update(layers="Middle2"), "distill.runs[1].layers: bad layer spec 'Middle2'"),
    (lambda c: c["distill"]["runs"][1].update(epochs=0), "distill.runs[1].epochs"),
    (lambda c: c["models"]["cait"].update(epochs=0), "models.cait.epochs"),
    (lambda c: c["distill"]["runs"][1].update(layers="none"), "needs aligned layers"),
    (lambda c: c["models"]["cait"].update(weights="ckpt/missing.pth"), "models.cait.weights: file not found"),
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


def test_paper_config_is_the_papers_code(repo, schema):
    # Each value against the paper's code (config/README.md holds the table and where each is set).
    from dyn.training.recipe import Recipe

    cfg = configuration.load(repo / "config" / "paper.yaml", schema)
    configuration.check_models(cfg)
    recipe = Recipe.from_dict(cfg["train"])
    assert (recipe.opt, recipe.weight_decay, recipe.sched) == ("adamw", 0.05, "cosine")
    assert (recipe.warmup_epochs, recipe.warmup_lr, recipe.min_lr, recipe.label_smoothing) == (5, 1e-6, 1e-5, 0.1)
    assert (recipe.auto_augment, recipe.color_jitter, recipe.random_erasing) == ("rand-m9-mstd0.5-inc1", 0.4, 0.25)
    assert (recipe.interpolation, recipe.crop_pct, recipe.drop_path) == ("bicubic", 0.875, 0.0)
    assert (recipe.alpha, recipe.temperature, recipe.repeated_aug) == (0.9, 1.0, 3)
    # The README's 2 GPUs x 256; at the peak learning rate of the authors' logs.
    assert recipe.global_batch == 512 and recipe.lr() == pytest.approx(2e-3)
    assert cfg["distill"]["gpus"] == 4 and recipe.batch_per_process(4) == 128
    specs = configuration.run_specs(cfg)
    assert {(s.epochs, s.seed) for s in specs} >= {(300, 0), (500, 0)}
    assert cfg["distill"]["evolution_every"] == 30
    assert {m["arch"] for m in cfg["models"].values()} == {
        "cait_s24_224", "deit_tiny_patch16_224", "resnet50", "vit_small_patch16_224", "vit_base_patch16_224.mae"}


def test_recipe_defaults_are_deits():
    from dyn.training.recipe import Recipe

    recipe = Recipe()
    assert (recipe.lr_base, recipe.lr_base_size, recipe.weight_decay, recipe.warmup_epochs) == (5e-4, 512, 0.05, 5)
    assert (recipe.global_batch, recipe.alpha, recipe.temperature, recipe.crop_pct) == (512, 0.9, 1.0, 0.875)
    assert recipe.augment and recipe.amp and not recipe.compile and not recipe.ema
    assert (recipe.amp_dtype, recipe.repeated_aug) == ("bfloat16", 1)


def test_global_batch_must_divide_among_the_processes():
    from dyn.training.recipe import Recipe

    assert Recipe(global_batch=512).batch_per_process(4) == 128
    with pytest.raises(UserError, match="train.global_batch 512 does not divide among 3 processes"):
        Recipe(global_batch=512).batch_per_process(3)


def test_recipe_defaults_are_stated_once_the_schema_holds_the_same(schema):
    # The recipe's defaults live in dyn.training.recipe.Recipe; the schema, which fills a config's
    # missing train keys, must give the same value for every key, and know no other key.
    import dataclasses

    from dyn.training.recipe import Recipe

    properties = yaml.safe_load(schema.read_text())["properties"]["train"]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(Recipe)}
    assert set(properties) == set(fields)
    assert {name: spec.get("default") for name, spec in properties.items()} == fields


def test_a_config_without_distill_is_the_analysis_alone_and_a_target_that_needs_it_is_one_line(repo, capsys):
    # what the Table 1, run and training-figure rules run instead of their command without a distill section
    # (common.smk's needs_distill); the job's line then ends Snakemake, as test_workflow's job mistake shows
    from dyn.cli import main

    config = repo / "examples" / "own_model" / "analyse.yaml"
    assert configuration.check_file(config, repo / "workflow" / "schemas" / "config.schema.yaml", models=False) == []
    with pytest.raises(SystemExit) as ended:
        main(["check-config", str(config), "--schema", str(repo / "workflow" / "schemas" / "config.schema.yaml"),
              "--no-models", "--target", "results/table1.csv"])
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "dyn: error: config error: results/table1.csv needs a distill section (teacher, student, runs), which this "
        "config has not; without one it builds the analysis only (metrics, phases, figures)")
