"""Inputs a user gets wrong, at every stage that reads one: each ends with exit code 2, one line
`dyn: error: ...` naming what was wrong and what would be valid, no traceback, and no output file.

The `dyn` command runs in this process (`dyn.cli.main`, as its console script calls it), which keeps
some thirty cases fast; `test_one_line_from_a_real_process` runs a few as separate processes too.
"""
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import torch

from dyn.models import save_weights

from conftest import dyn_here, rule_args

DIGITS = '{"name": "digits"}'
TRAIN = json.dumps(dict(global_batch=128, lr_base=2e-3, lr_base_size=64, warmup_epochs=1, augment=False,
                        num_workers=0, eval_batch_size=512, crop_pct=None))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good inputs of every stage, made once: a checkpoint, a capture, its metric files, a run."""
    d = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    save_weights(timm.create_model("resnet_digits"), d / "resnet.safetensors")
    (d / "resnet.json").write_text(json.dumps({"num_classes": 10}))
    assert _dyn(["capture", "--name", "r", "--arch", "resnet_digits", "--checkpoint", str(d / "resnet.safetensors"),
                 "--out", str(d / "capture.nc"), "--num-images", "4", "--dataset", DIGITS]) == (0, "")
    for name in ("spectrum", "entropy", "magnitude"):
        assert _dyn(["metrics", name, "--capture", str(d / "capture.nc"), "--out", str(d / f"{name}.nc")])[0] == 0
    return d


def _dyn(args: list) -> tuple[int, str]:
    """(exit code, last line on stderr) of `dyn ARGS` run in this process, after the options its rule always
    passes (at the config's defaults)."""
    ran = dyn_here(rule_args(args) if args[0] in ("capture", "fetch", "distill", "metrics") else args)
    lines = ran.stderr.strip().splitlines()
    return ran.returncode, lines[-1] if lines and ran.returncode else ""


def _garbage(path: Path, content: bytes = b"this is not a checkpoint\n" * 3) -> Path:
    path.write_bytes(content)
    return path


def _truncated(good: Path, path: Path) -> Path:
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    return path


def _five_class_teacher(path: Path) -> Path:
    save_weights(timm.create_model("cait_digits", num_classes=5), path)
    return path


def _list_pth(path: Path) -> Path:
    torch.save([torch.zeros(2), 3], path)  # loads with weights_only, but is no state dict
    return path


class Exploit:  # a pickle that would run a command when loaded
    def __reduce__(self):
        return (subprocess.call, (["touch", "/tmp/dyn-pickle-ran"],))


def _fetch(weights, tmp, arch="resnet_digits"):
    return ["fetch", "--name", "m", "--arch", arch, "--weights", weights, "--out", tmp / "out" / "m.safetensors",
            "--dataset", DIGITS, "--train", '{"num_workers": 0}']


def _capture(checkpoint, tmp, arch="resnet_digits", dataset=DIGITS, extra=()):
    return ["capture", "--name", "m", "--arch", arch, "--checkpoint", checkpoint, "--out", tmp / "out" / "m.nc",
            "--num-images", "4", "--dataset", dataset, *extra]


def _distill(teacher, tmp, extra=()):
    return _cohort(teacher, tmp, '[{"method": "spectral", "layers": "First1", "beta": 0.2, "epochs": 1}]', extra)


def _cohort(teacher, tmp, runs, extra=()):
    return ["distill", "--runs", runs, "--teacher-arch", "cait_digits", "--teacher-checkpoint",
            teacher, "--student-arch", "deit_digits", "--runs-dir", tmp / "out", "--num-images", "4", "--dataset",
            DIGITS, "--train", TRAIN, "--device", "cpu", *extra]


def _imagefolder(tmp: Path, layout: dict[str, dict[str, list[str]]]) -> str:
    """A dataset root: {split: {class: [file names]}}; .png files are real images, others text."""
    from PIL import Image

    (tmp / "data").mkdir(exist_ok=True)
    for split, classes in layout.items():
        for cls, names in classes.items():
            (tmp / "data" / split / cls).mkdir(parents=True)
            for name in names:
                if name.endswith(".png"):
                    Image.new("RGB", (8, 8)).save(tmp / "data" / split / cls / name)
                else:
                    (tmp / "data" / split / cls / name).write_text("not an image")
    return json.dumps({"name": "imagefolder", "root": str(tmp / "data")})


def _metric_file(files, tmp, name, content):
    path = tmp / f"{name}.nc"
    if content == "garbage":
        return _garbage(path)
    if content == "truncated":
        return _truncated(files / f"{name}.nc", path)
    return shutil.copy(files / content, path)  # another file in its place


# (case name, fragment of the one-line message, args from (files, tmp))
CASES = [
    # checkpoints
    ("fetch: empty .safetensors", "cannot read checkpoint", lambda f, t: _fetch(_garbage(t / "e.safetensors", b""), t)),
    ("fetch: truncated .safetensors", "cannot read checkpoint",
     lambda f, t: _fetch(_truncated(f / "resnet.safetensors", t / "t.safetensors"), t)),
    ("fetch: garbage .pth", "cannot read checkpoint", lambda f, t: _fetch(_garbage(t / "g.pth"), t)),
    ("fetch: empty .pth", "cannot read checkpoint", lambda f, t: _fetch(_garbage(t / "e.pth", b""), t)),
    ("fetch: a .pth whose pickle would run code", "its pickle would call",
     lambda f, t: _fetch(_garbage(t / "x.pth", pickle.dumps({"weight": Exploit()}, protocol=2)), t)),
    ("fetch: the same in a newer pickle protocol", "which could run code",
     lambda f, t: _fetch(_garbage(t / "x.pth", pickle.dumps({"weight": Exploit()}, protocol=5)), t)),
    ("fetch: a .pth of something else than weights", "holds no state dict",
     lambda f, t: _fetch(_list_pth(t / "l.pth"), t)),
    ("fetch: a checkpoint of another architecture", "does not fit deit_digits",
     lambda f, t: _fetch(f / "resnet.safetensors", t, arch="deit_digits")),
    ("fetch: a file with an unknown suffix", "not a checkpoint file",
     lambda f, t: _fetch(_garbage(t / "w.txt"), t)),
    ("capture: corrupt checkpoint", "cannot read checkpoint",
     lambda f, t: _capture(_garbage(t / "c.safetensors"), t)),
    ("capture: checkpoint of another architecture", "does not fit deit_digits",
     lambda f, t: _capture(f / "resnet.safetensors", t, arch="deit_digits")),
    ("distill: corrupt teacher checkpoint", "cannot read checkpoint",
     lambda f, t: _distill(_truncated(f / "resnet.safetensors", t / "t.safetensors"), t)),
    ("distill: teacher of another architecture", "does not fit cait_digits",
     lambda f, t: _distill(f / "resnet.safetensors", t)),
    ("distill: a teacher with another number of classes than the dataset", "has 5 classes but the dataset has 10",
     lambda f, t: _distill(_five_class_teacher(t / "cait5.safetensors"), t)),
    # capture files
    ("metrics: empty capture file", "cannot read capture file",
     lambda f, t: ["metrics", "entropy", "--capture", _garbage(t / "e.nc", b""), "--out", t / "out" / "e.nc"]),
    ("metrics: truncated capture file", "cannot read capture file",
     lambda f, t: ["metrics", "spectrum", "--capture", _truncated(f / "capture.nc", t / "c.nc"), "--out",
                   t / "out" / "s.nc"]),
    ("metrics: a text file as capture", "cannot read capture file",
     lambda f, t: ["metrics", "magnitude", "--capture", _garbage(t / "c.nc"), "--out", t / "out" / "m.nc"]),
    ("metrics: a metric file as capture", "has no variable 'activation'",
     lambda f, t: ["metrics", "entropy", "--capture", f / "entropy.nc", "--out", t / "out" / "e.nc"]),
    # metric files
    ("phases: corrupt entropy file", "cannot read entropy file",
     lambda f, t: ["metrics", "phases", "--entropy", _metric_file(f, t, "entropy", "garbage"), "--magnitude",
                   f / "magnitude.nc", "--spectrum", f / "spectrum.nc", "--out", t / "out" / "phases.csv"]),
    ("phases: a spectrum file as the entropy", "has no variable 'entropy'",
     lambda f, t: ["metrics", "phases", "--entropy", _metric_file(f, t, "entropy", "spectrum.nc"), "--magnitude",
                   f / "magnitude.nc", "--spectrum", f / "spectrum.nc", "--out", t / "out" / "phases.csv"]),
    ("report profiles: a capture as the entropy", "has no variable 'entropy'",
     lambda f, t: ["report", "profiles", "--entropy", f / "capture.nc", "--magnitude", f / "magnitude.nc", "--out",
                   t / "out" / "p", "--formats", "png"]),
    ("report spectrum: truncated spectrum file", "cannot read spectrum file",
     lambda f, t: ["report", "spectrum", "--spectrum", _metric_file(f, t, "spectrum", "truncated"), "--out",
                   t / "out" / "s", "--formats", "png"]),
    # run files
    ("report table: empty summary.json", "cannot read run summary",
     lambda f, t: ["report", "table", _garbage(t / "summary.json", b""), "--out", t / "out" / "table1.csv"]),
    ("report table: summary.json that is not JSON", "cannot read run summary",
     lambda f, t: ["report", "table", _garbage(t / "summary.json"), "--out", t / "out" / "table1.csv"]),
    ("report table: summary.json without the run's keys", "lacks",
     lambda f, t: ["report", "table", _garbage(t / "summary.json", b'{"run": "x"}'), "--out",
                   t / "out" / "table1.csv"]),
    ("report evolution: corrupt evolution.nc", "cannot read evolution file",
     lambda f, t: ["report", "evolution", _garbage(t / "evolution.nc"), "--out", t / "out" / "e", "--formats", "png"]),
    ("report evolution: a metric file as evolution.nc", "has no variable 'entropy' over (epoch, layer)",
     lambda f, t: ["report", "evolution", f / "magnitude.nc", "--out", t / "out" / "e", "--formats", "png"]),
    # dataset roots
    ("capture: dataset root missing", "dataset.root does not exist",
     lambda f, t: _capture(f / "resnet.safetensors", t, dataset=json.dumps({"name": "imagefolder",
                                                                            "root": str(t / "nowhere")}))),
    ("capture: dataset root empty", "expected",
     lambda f, t: _capture(f / "resnet.safetensors", t, dataset=_imagefolder(t, {"": {}}))),
    ("capture: dataset root without val/", "imagefolder split folder not found",
     lambda f, t: _capture(f / "resnet.safetensors", t,
                           dataset=_imagefolder(t, {"train": {"a": ["1.png"], "b": ["1.png"]}}))),
    ("capture: dataset of files that are not images", "no image files",
     lambda f, t: _capture(f / "resnet.safetensors", t, dataset=_imagefolder(t, {"val": {"a": ["1.txt"]}}))),
    ("capture: an image file that does not decode", "cannot read image",
     lambda f, t: _capture(f / "resnet.safetensors", t, dataset=_imagefolder(t, {"val": {"a": ["1.png", "2.jpg"],
                                                                                          "b": ["1.png", "2.png"]}}))),
    # values out of range
    ("distill: a cohort whose --runs is not JSON", "--runs is not valid JSON",
     lambda f, t: _cohort(f / "resnet.safetensors", t, "[{method: softkd}]")),
    ("distill: a cohort entry without a method", "needs 'method' and 'epochs'",
     lambda f, t: _cohort(f / "resnet.safetensors", t, '[{"layers": "First1", "beta": 0.2, "epochs": 1}]')),
    ("distill: a cohort entry with a negative beta", "beta must be a finite number >= 0, got -1",
     lambda f, t: _cohort(f / "resnet.safetensors", t,
                          '[{"method": "spectral", "layers": "Last1", "beta": -1, "epochs": 1}]')),
    ("distill: a cohort entry with a NaN beta", "beta must be a finite number >= 0, got nan",
     lambda f, t: _cohort(f / "resnet.safetensors", t,
                          '[{"method": "spectral", "layers": "Last1", "beta": NaN, "epochs": 1}]')),
    ("distill: a cohort entry with epochs that are not a whole number", "epochs must be an integer, got 1.5",
     lambda f, t: _cohort(f / "resnet.safetensors", t, '[{"method": "softkd", "epochs": 1.5}]')),
    ("distill: a cohort entry with an unknown field", "has no field lr; its fields are method, layers",
     lambda f, t: _cohort(f / "resnet.safetensors", t, '[{"method": "softkd", "epochs": 1, "lr": 0.1}]')),
    ("distill: an option of another method", "method 'lowpass' has no option pca_keep; its options are lowpass_keep",
     lambda f, t: _cohort(f / "resnet.safetensors", t, '[{"method": "lowpass", "layers": "Last1", "epochs": 1, '
                                                        '"options": {"pca_keep": 0.5}}]')),
    ("distill: a method option out of range", "lowpass_keep must be a number in (0, 1], got 0",
     lambda f, t: _cohort(f / "resnet.safetensors", t, '[{"method": "lowpass", "layers": "Last1", "epochs": 1, '
                                                        '"options": {"lowpass_keep": 0}}]')),
    ("distill: a cohort twice the same run", "must be distinct",
     lambda f, t: _cohort(f / "resnet.safetensors", t, '[{"method": "softkd", "epochs": 1}, '
                                                        '{"method": "softkd", "epochs": 1}]')),
    ("distill: runs of two seeds in one cohort", "share one seed",
     lambda f, t: _cohort(f / "resnet.safetensors", t, '[{"method": "softkd", "epochs": 1}, '
                                                        '{"method": "softkd", "epochs": 1, "seed": 1}]')),

    ("capture: more analysis images than the split has", "the validation split has 359",
     lambda f, t: _capture(f / "resnet.safetensors", t, extra=["--num-images", "1000"])),
    ("capture: a device that is not a device", "not a device",
     lambda f, t: _capture(f / "resnet.safetensors", t, extra=["--device", "gpu0"])),
    ("capture: a CUDA device on a machine without one", "no CUDA device",
     lambda f, t: _capture(f / "resnet.safetensors", t, extra=["--device", "cuda:3"])),
    ("fetch: a non-number in the recipe", "train.lr_base",
     lambda f, t: ["fetch", "--name", "m", "--arch", "deit_digits", "--weights", "train", "--epochs", "1", "--out",
                   t / "out" / "m.safetensors", "--dataset", DIGITS, "--train", '{"lr_base": "fast"}']),
    ("capture: a non-number in the dataset", "dataset.val_fraction",
     lambda f, t: _capture(f / "resnet.safetensors", t, dataset='{"name": "digits", "val_fraction": "a fifth"}')),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the protocol-5 pickle
@pytest.mark.parametrize("case, fragment, args", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_line_exit_2_and_no_output(files, tmp_path, case, fragment, args):
    marker = Path("/tmp/dyn-pickle-ran")
    marker.unlink(missing_ok=True)
    code, last = _dyn(args(files, tmp_path))
    assert code == 2, (case, last)
    assert last.startswith("dyn: error: ") and fragment in last, (case, last)
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], f"{case}: left {list(out.rglob('*'))}"
    assert not marker.exists(), "the pickle ran code"


def test_an_option_the_rules_always_pass_has_no_default(files, tmp_path):
    # Its default lives in the config schema only: left out, it is a one-line usage error.
    ran = dyn_here(["distill", "--runs", '[{"method": "softkd", "epochs": 1}]', "--teacher-arch", "cait_digits",
                    "--teacher-checkpoint", files / "resnet.safetensors", "--student-arch", "deit_digits",
                    "--runs-dir", tmp_path / "out"])
    assert ran.returncode == 2 and ran.stderr.strip().splitlines()[-1].startswith("dyn: error: Missing option")


def test_at_least_thirty_cases():
    assert len(CASES) >= 30
