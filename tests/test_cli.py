"""The `dyn` command's parsing and its one-line errors, run in this process (test_faults runs real
processes)."""
import json

import timm
import torch

from conftest import dyn_here, rule_args


def _dyn(args, env=None):
    """`dyn ARGS` with the options its rule always passes (at the config's defaults) before ARGS."""
    return dyn_here(rule_args(args))


def _one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("dyn: error: ") and fragment in lines[-1]


DISTILL = ["distill", "--teacher-arch", "cait_digits", "--student-arch", "deit_digits"]


def _spectral(layers: str) -> list[str]:
    return ["--runs", json.dumps([{"method": "spectral", "layers": layers, "beta": 0.2, "epochs": 1}])]


def test_unknown_model_name(env, tmp_path):
    result = _dyn(["fetch", "--name", "x", "--arch", "vit_tinyy_patch16_224", "--weights", "train", "--epochs", "1",
                   "--out", str(tmp_path / "x.safetensors"), "--dataset", '{"name": "digits"}'], env)
    _one_line_error(result, "unknown model 'vit_tinyy_patch16_224'")


def test_bad_layer_spec(env, tmp_path, teacher):
    result = _dyn(DISTILL + _spectral("Lst1") + ["--teacher-checkpoint", str(teacher), "--runs-dir", str(tmp_path)], env)
    _one_line_error(result, "bad layer spec 'Lst1'")


def test_layer_spec_that_does_not_fit(env, tmp_path, teacher):
    result = _dyn(DISTILL + _spectral("Last10") + ["--teacher-checkpoint", str(teacher), "--runs-dir", str(tmp_path)],
                  env)
    _one_line_error(result, "layer spec 'Last10' does not fit")
    assert "student has 8 blocks, teacher has 12" in result.stderr


def test_missing_checkpoint(env, tmp_path):
    result = _dyn(DISTILL + _spectral("Last1") + ["--teacher-checkpoint", str(tmp_path / "none.safetensors"),
                             "--runs-dir", str(tmp_path)], env)
    _one_line_error(result, "checkpoint file not found")


def test_missing_capture_file(env, tmp_path):
    result = _dyn(["metrics", "entropy", "--capture", str(tmp_path / "none.nc"), "--out", str(tmp_path / "e.nc")], env)
    _one_line_error(result, "capture file not found")


def test_bad_json_option(env, tmp_path):
    result = _dyn(["fetch", "--name", "x", "--arch", "deit_digits", "--weights", "train", "--out",
                   str(tmp_path / "x.safetensors"), "--dataset", "{name: digits"], env)
    _one_line_error(result, "--dataset")


def test_unknown_train_key(env, tmp_path):
    result = _dyn(["fetch", "--name", "x", "--arch", "deit_digits", "--weights", "train", "--epochs", "1", "--out",
                   str(tmp_path / "x.safetensors"), "--train", '{"lrr": 1}'], env)
    _one_line_error(result, "unknown train key(s) lrr")


def test_missing_imagenet_folder(env, tmp_path):
    result = _dyn(["fetch", "--name", "cait_s24", "--arch", "cait_s24_224", "--weights", "hub", "--out",
                   str(tmp_path / "c.safetensors"), "--dataset", '{"name": "imagefolder", "root": "/path/to/imagenet"}'],
                  env)
    _one_line_error(result, "dataset.root does not exist: /path/to/imagenet")


def test_unknown_option(env):
    _one_line_error(_dyn(["metrics", "entropy", "--bogus"], env), "--bogus")


def test_fetch_from_local_file(env, tmp_path):
    # A local checkpoint (as a user's .pth) goes through timm's loader and comes out as safetensors + JSON.
    torch.manual_seed(3)
    model = timm.create_model("resnet_digits")
    torch.save(model.state_dict(), tmp_path / "mine.pth")
    out = tmp_path / "ck" / "resnet.safetensors"
    result = _dyn(["fetch", "--name", "resnet", "--arch", "resnet_digits", "--weights", str(tmp_path / "mine.pth"),
                   "--out", str(out), "--dataset", '{"name": "digits"}', "--train", '{"num_workers": 0}'], env)
    assert result.returncode == 0, result.stderr
    from safetensors.torch import load_file

    from dyn.models import sha256_of

    info = json.loads(out.with_suffix(".json").read_text())
    assert info["source"] == str(tmp_path / "mine.pth") and info["sha256"] == sha256_of(out)
    assert 0 <= info["val_top1"] <= 100 and info["num_classes"] == 10
    loaded = load_file(out)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_weights_kinds():
    from dyn.files import weights_kind

    assert [weights_kind(w) for w in ("train", "hub", "https://x/y.pth", "ckpt/a.safetensors")] == [
        "train", "hub", "url", "path"]
