"""Any model: timm names, hf-hub ids, a user's package.module:function; layers picked by module-name globs."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dyn.errors import UserError
from dyn.hooks import as_map, matches, select
from dyn.models import create_model, depth_of, features, layer_kind, num_layers

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model"


@pytest.fixture()
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


@pytest.mark.parametrize("name, glob, expected", [
    ("blocks.0", "blocks.*", True), ("blocks.0.attn", "blocks.*", False), ("blocks", "blocks.*", False),
    ("layer3", "layer[1-4]", True), ("layer5", "layer[1-4]", False), ("layer1.0", "layer[1-4]", False),
    ("encoder.layers.7.mlp", "encoder.layers.*.mlp", True),
    ("encoder.layers.7.attn.mlp", "encoder.layers.*.mlp", False),
    ("encoder.layers.7.attn.mlp", "**.mlp", True), ("mlp", "**.mlp", True), ("a.b.c", "a.**", True),
    ("a", "a.**", True), ("b.a", "a.**", False),
])
def test_globs_match_one_dotted_component_per_star_and_any_number_per_double_star(name, glob, expected):
    assert matches(name, glob) is expected


def test_selected_modules_come_in_model_order_and_a_glob_matching_nothing_is_one_line():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)), nn.Linear(2, 2))
    assert select(model, ["2", "*"]) == ["0", "1", "2"]  # model order, each once
    assert select(model, ["1.*"]) == ["1.0", "1.1"]
    with pytest.raises(UserError, match=r"^layers: 'blocks\.\*' matches no module of the model \(its top-level "
                                        r"modules: 0, 1, 2\)$"):
        select(model, ["blocks.*"])


@pytest.mark.parametrize("arch, globs, skip", [("deit_digits", ["blocks.*"], 0), ("cait_digits", ["blocks.*"], 0),
                                               ("resnet_digits", ["layer[1-4]"], 1)])
def test_hooked_layers_give_exactly_the_maps_of_forward_intermediates(arch, globs, skip):
    torch.manual_seed(0)
    hooked = create_model(arch, layers=globs).eval()
    plain = create_model(arch).eval()
    plain.load_state_dict(hooked.state_dict())
    x = torch.randn(3, 1, 8, 8)
    assert num_layers(hooked) == num_layers(plain) - skip and layer_kind(hooked) == "module"
    logits, maps = features(hooked, x, with_logits=True)
    plain_logits, plain_maps = features(plain, x, with_logits=True)
    assert torch.equal(logits, plain_logits)
    assert len(maps) == len(plain_maps[skip:]) and all(torch.equal(a, b) for a, b in zip(maps, plain_maps[skip:]))
    assert not hooked._forward_hooks and not any(m._forward_hooks for m in hooked.modules())  # removed after


def test_outputs_of_every_shape_become_maps():
    plain = nn.Module()
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # (B, N, C), no grid
    assert torch.equal(as_map(tokens, plain), tokens.transpose(1, 2)[..., None])
    assert as_map((torch.ones(2, 7), "extra"), plain).shape == (2, 7, 1, 1)
    vit = create_model("deit_digits")  # 16 patches on a 4x4 grid after 1 class token
    with_class = torch.randn(2, 17, 32)
    grid = as_map(with_class, vit)
    assert grid.shape == (2, 32, 4, 4) and torch.equal(grid[:, :, 1, 2], with_class[:, 1 + 1 * 4 + 2])


def test_a_users_function_by_import_path(example_on_path):
    model = create_model("tinynet:teacher", num_classes=7, layers=["blocks.*"])
    assert model.head.out_features == 7 and depth_of("tinynet:student", ["blocks.*"]) == 4
    maps = features(model, torch.randn(2, 3, 8, 8))
    assert len(maps) == 6 and maps[0].shape == (2, 32, 16, 1)  # tokens without a grid: (C, N, 1)


@pytest.mark.parametrize("arch, layers, message", [
    ("tinynet:teacher", None, "TinyTransformer has no forward_intermediates: pick its layers by module name"),
    ("tinynet:nothing", ["blocks.*"], "model 'tinynet:nothing': tinynet has no function nothing"),
    ("no_such_module_here:f", ["blocks.*"], "cannot import no_such_module_here for model 'no_such_module_here:f'"),
    ("tinynet:TinyTransformer", ["blocks.*"], "model 'tinynet:TinyTransformer' failed to build: TypeError"),
])
def test_a_users_model_that_cannot_be_made_is_one_line(example_on_path, arch, layers, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as error:
        depth_of(arch, layers)
    assert "\n" not in str(error.value)


def test_an_hf_hub_id_offline_is_one_line_saying_the_hub_cannot_be_reached(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="^cannot make 'hf-hub:timm/not_here': the Hugging Face hub cannot be reached"):
        create_model("hf-hub:timm/not_here")


def test_the_config_names_the_key_of_a_model_that_cannot_be_made(example_on_path):
    from dyn.workflow.config import check_models

    config = {"models": {"mine": {"arch": "tinynet:teacher", "weights": "train", "layers": ["block.*"]}}}
    with pytest.raises(UserError, match=r"^config error at models\.mine\.layers: layers: 'block\.\*' matches no"):
        check_models(config)
    config["models"]["mine"]["arch"] = "tinynet:nothing"
    with pytest.raises(UserError, match=r"^config error at models\.mine\.arch: model 'tinynet:nothing'"):
        check_models(config)
    config["models"]["mine"] = {"arch": "tinynet:teacher", "weights": "train", "layers": ["blocks.*"]}
    check_models(config)  # analysis alone: no distill section
    assert sys.modules["tinynet"].__file__.startswith(str(EXAMPLE))


def test_projectorkd_between_models_whose_layers_are_picked_by_name(example_on_path):
    from dyn.models import layer_channels
    from dyn.training.task import LayerDistillationTask

    teacher = create_model("tinynet:teacher", num_classes=10, layers=["blocks.*"]).eval()
    student = create_model("tinynet:student", num_classes=10, layers=["blocks.*"])
    assert layer_channels(teacher, [0, 5]) == [32, 32] and layer_channels(student, [3]) == [16]
    assert student.training  # its mode is kept
    task = LayerDistillationTask(student, teacher, [(3, 5)], "projector", beta=0.2, alpha=0.9, temperature=1.0,
                                 label_smoothing=0.0)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        logits, maps = features(teacher, x, [5], with_logits=True)
    out = task(x, torch.arange(4), type("TeacherOutputs", (), {"logits": logits, "maps": {5: maps[0]}})())
    assert torch.isfinite(out["loss"]) and out["feat_loss"] > 0


def test_a_plain_model_without_a_data_config_gets_timms_defaults(tmp_path, monkeypatch):
    from dyn.training.task import LayerDistillationTask

    (tmp_path / "plainnet.py").write_text(
        "from torch import nn\n\n"
        "def make(num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(8, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    teacher, student = (create_model("plainnet:make", num_classes=3, layers=["[01]"]) for _ in range(2))
    assert teacher.pretrained_cfg["input_size"] == (3, 224, 224) and teacher.pretrained_cfg["mean"][0] == 0.485
    task = LayerDistillationTask(student, teacher, [(1, 1)], "projector_trained", beta=0.2, alpha=0.9,
                                 temperature=1.0, label_smoothing=0.0)  # timm's teacher wrapper
    assert task.trainable_module.projector is not None
