import json
import csv
import math
import re

import pytest
import timm
import torch
from safetensors.torch import load_file

import dyn.training.loop
from dyn.errors import NonFiniteLoss
from dyn.training.distill import distill
from conftest import snapshots
from dyn.training.recipe import Recipe
from dyn.grid.runs import RunSpec

# A smaller training split (539 images) than the default's 1,437: the same code paths in fewer steps.
DIGITS = {"name": "digits", "val_fraction": 0.7}
RECIPE = dict(global_batch=128, lr_base=2e-3, lr_base_size=64, warmup_epochs=1, augment=False, num_workers=0,
              alpha=0.9, temperature=1.0, eval_batch_size=512, crop_pct=None)


def _run(teacher, out, spec, state=None, **recipe):
    return distill([spec], "cait_digits", teacher, "deit_digits", DIGITS, Recipe(**{**RECIPE, **recipe}), [out],
                   state_path=state, snapshots=snapshots(num_images=8, every=1))[0]


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Each tag's (step, value) pairs as TensorBoard reads them from a run's tensorboard/ folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_run_directory_contract(teacher, tmp_path, monkeypatch):
    import json
    import os

    import xarray as xr

    from dyn.training import loop

    # What each student is at each epoch's end, to hold the best-epoch files to.
    at_epoch, real_end = {}, loop.end_of_epoch

    def end_of_epoch(the_loop, active, epoch, *args):
        real_end(the_loop, active, epoch, *args)
        at_epoch[epoch + 1] = {k: v.clone() for k, v in active[0].task.get_eval_model().state_dict().items()}

    monkeypatch.setattr(loop, "end_of_epoch", end_of_epoch)
    previous = os.umask(0o022)
    try:
        summary = _run(teacher, tmp_path / "run", RunSpec("projector", "First1+Last1", 0.2, 2, 0))
    finally:
        os.umask(previous)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {
        "summary.json", "log.csv", "student.safetensors", "evolution.nc", "projector.safetensors",
        "student_best.safetensors", "projector_best.safetensors", "tensorboard"}
    # readable by others as the umask allows (safetensors writes its own 0600 temporary file)
    assert {p.name: p.stat().st_mode & 0o777 for p in run.iterdir() if p.is_file()} == {
        p.name: 0o644 for p in run.iterdir() if p.is_file()}
    # the best-epoch files hold the student of summary.json's best epoch (the first of equal top-1s)
    rows = list(csv.DictReader((run / "log.csv").open()))
    best_epoch = max(rows, key=lambda row: float(row["top1"]))["epoch"]
    assert summary["best_epoch"] == int(best_epoch) == json.loads((run / "summary.json").read_text())["best_epoch"]
    best = load_file(run / "student_best.safetensors")
    assert best.keys() == at_epoch[summary["best_epoch"]].keys()
    assert all(torch.equal(best[k], at_epoch[summary["best_epoch"]][k]) for k in best)
    assert load_file(run / "projector_best.safetensors").keys() == load_file(run / "projector.safetensors").keys()
    # TensorBoard: per epoch the loss parts, top-1/top-5, val loss, lr, images/s; per snapshot each layer
    scalars = tensorboard_scalars(run / "tensorboard")
    assert {"loss/loss", "loss/task_loss", "loss/kd_loss", "loss/feat_loss", "val/top1", "val/top5", "val/loss",
            "train/lr", "train/images_per_s"} <= set(scalars)
    assert [step for step, _ in scalars["val/top1"]] == [1, 2]
    assert [v for _, v in scalars["val/top1"]] == pytest.approx([float(row["top1"]) for row in rows])
    assert {f"entropy/block_{i:02d}" for i in range(8)} <= set(scalars)
    assert [step for step, _ in scalars["entropy/block_07"]] == [0, 1, 2]
    assert summary["pairs"] == [(0, 0), (7, 11)]
    assert 0 <= summary["top1"] <= summary["top5"] <= 100
    with xr.open_dataset(tmp_path / "run" / "evolution.nc") as ds:
        assert ds["entropy"].dims == ("epoch", "layer")
        assert list(ds["epoch"].values) == [0, 1, 2] and ds.sizes["layer"] == 8
        assert (ds["entropy"] > 0).all() and (ds["entropy"] <= math.log2(32)).all()
        assert [v for _, v in scalars["entropy/block_03"]] == pytest.approx(list(ds["entropy"].values[:, 3]))
    assert len((tmp_path / "run" / "log.csv").read_text().strip().splitlines()) == 3
    student = timm.create_model("deit_digits", pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(tmp_path / "run" / "student.safetensors")))
    assert student.num_classes == 10


def _interrupted_then_resumed(teacher, tmp_path, monkeypatch, spec, die_after=2, **recipe):
    """Run `spec` whole, then again killed right after epoch `die_after`'s state reached the disk (before
    that epoch's live files: log row, snapshot, best weights, TensorBoard) and rerun; returns both runs'
    directories and the state file as it was when the run died."""
    _run(teacher, tmp_path / "whole", spec, state=tmp_path / "whole.pt", **recipe)
    real_save = dyn.training.loop.save_state
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == die_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(dyn.training.loop, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(teacher, tmp_path / "broken", spec, state=tmp_path / "broken.pt", **recipe)
    assert not (tmp_path / "broken" / "summary.json").exists()
    state = torch.load(tmp_path / "broken.pt", weights_only=True)
    for name in ("log.csv", "evolution.nc"):  # Snakemake deletes a job's declared outputs before it reruns it
        (tmp_path / "broken" / name).unlink(missing_ok=True)
    monkeypatch.setattr(dyn.training.loop, "save_state", real_save)
    summary = _run(teacher, tmp_path / "broken", spec, state=tmp_path / "broken.pt", **recipe)
    assert summary["epochs"] == spec.epochs and not (tmp_path / "broken.pt").exists()
    return tmp_path / "whole", tmp_path / "broken", state


def _assert_same_run(a, b):
    whole, resumed = load_file(a / "student.safetensors"), load_file(b / "student.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert (a / "student_best.safetensors").read_bytes() == (b / "student_best.safetensors").read_bytes()
    assert (a / "log.csv").read_text().splitlines()[0] == (b / "log.csv").read_text().splitlines()[0]
    columns = (a / "log.csv").read_text().splitlines()[0].split(",")
    for row_a, row_b in zip((a / "log.csv").read_text().splitlines()[1:], (b / "log.csv").read_text().splitlines()[1:]):
        kept = [i for i, c in enumerate(columns) if c not in ("seconds", "images_per_s")]  # times differ
        assert [row_a.split(",")[i] for i in kept] == [row_b.split(",")[i] for i in kept]


def test_resume_after_interruption_is_bit_identical_with_repeated_augmentation(teacher, tmp_path, monkeypatch):
    spec = RunSpec("spectral", "First1+Last1", 0.2, 3, 1)
    # killed after epoch 2's state, before its live files: the resumed job writes them from the state
    whole, resumed, state = _interrupted_then_resumed(teacher, tmp_path, monkeypatch, spec, repeated_aug=3)
    assert state["members"][spec.run_id]["epoch"] == 2 and state["members"][spec.run_id]["best"]["weights"]
    _assert_same_run(whole, resumed)
    # the resumed run's curves have each epoch once, as the whole run's (times aside)
    a, b = tensorboard_scalars(whole / "tensorboard"), tensorboard_scalars(resumed / "tensorboard")
    assert [step for step, _ in b["val/top1"]] == [1, 2, 3] and [s for s, _ in b["entropy/block_00"]] == [0, 1, 2, 3]
    untimed = [tag for tag in a if tag not in ("train/epoch_seconds", "train/images_per_s")]
    assert set(a) == set(b) and [[v for _, v in a[tag]] for tag in untimed] == [[v for _, v in b[tag]] for tag in untimed]


def test_float16_autocast_with_a_gradient_scaler_resumes_with_its_scale(teacher, tmp_path, monkeypatch):
    # float16 autocast runs only on CUDA in a real run; here it is forced onto the CPU, scaler included.
    from dyn.training.precision import Precision

    class CpuFloat16(Precision):
        def new_scaler(self):
            return torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def cpu_float16(device, amp, dtype="bfloat16"):
        assert dtype == "float16"
        return CpuFloat16("cpu", torch.float16, True, True)

    monkeypatch.setattr(Precision, "of", staticmethod(cpu_float16))
    spec = RunSpec("spectral", "Last1", 0.2, 2, 0)  # float16 on the CPU is slow: two epochs, killed after one
    whole, resumed, state = _interrupted_then_resumed(teacher, tmp_path, monkeypatch, spec, die_after=1,
                                                      amp_dtype="float16")
    scaler = state["members"][spec.run_id]["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    _assert_same_run(whole, resumed)
    rows = (whole / "log.csv").read_text().splitlines()
    assert float(rows[-1].split(",")[rows[0].split(",").index("loss")]) < float(
        rows[1].split(",")[rows[0].split(",").index("loss")])


def test_state_of_another_configuration_is_not_resumed(teacher, tmp_path):
    spec = RunSpec("softkd", "none", 0.0, 1, 0)
    _run(teacher, tmp_path / "a", spec, state=tmp_path / "state.pt", alpha=0.5)
    # A finished run removes its state; a stale one from other settings must be ignored, not resumed.
    torch.save({"fingerprint": "other", "epoch": 1}, tmp_path / "state.pt")
    summary = _run(teacher, tmp_path / "b", spec, state=tmp_path / "state.pt", alpha=0.9)
    assert summary["recipe"]["alpha"] == 0.9


def test_teacher_cache_gives_the_same_run(teacher, tmp_path):
    spec = RunSpec("spectral", "Last1", 0.2, 2, 0)
    cached = _run(teacher, tmp_path / "cached", spec, teacher_cache=True)
    direct = _run(teacher, tmp_path / "direct", spec, teacher_cache=False)
    a = load_file(tmp_path / "cached" / "student.safetensors")
    b = load_file(tmp_path / "direct" / "student.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert cached["top1"] == pytest.approx(direct["top1"], abs=0.6)


def test_non_finite_loss_stops_without_summary(teacher, tmp_path):
    with pytest.raises(NonFiniteLoss, match="epoch 1"):
        _run(teacher, tmp_path / "nan", RunSpec("spectral", "Last1", 1e39, 2, 0), state=tmp_path / "s.pt")
    assert not (tmp_path / "nan" / "summary.json").exists()


COHORT = [RunSpec("softkd", "none", 0.0, 2, 0), RunSpec("spectral", "First1", 0.2, 2, 0),
          RunSpec("projector", "Last1", 0.2, 2, 0)]


def _cohort(teacher, root, specs, state=None, finished_dir=None, **recipe):
    return distill(specs, "cait_digits", teacher, "deit_digits", DIGITS, Recipe(**{**RECIPE, **recipe}),
                   [root / spec.run_id for spec in specs], state_path=state, snapshots=snapshots(num_images=8, every=1),
                   finished_dir=finished_dir)


def test_a_cohort_trains_each_student_exactly_as_it_would_alone(teacher, tmp_path, monkeypatch):
    # Random augmentation, drop path and the projector's initialisation all draw random numbers: each
    # student must draw its own, and the data its own, whatever else trains beside it. A student of
    # fewer epochs stops after its own; the others go on (distill.cohort_across_epochs).
    recipe = dict(augment=True, drop_path=0.1, teacher_cache=False)
    shorter = RunSpec("spectral", "Last1", 0.2, 1, 0)
    for spec in [*COHORT, shorter]:
        _cohort(teacher, tmp_path / "alone", [spec], **recipe)
    from dyn.training.task import SharedTeacher

    forwards = []
    real_forward = SharedTeacher.forward
    monkeypatch.setattr(SharedTeacher, "forward", lambda self, images: forwards.append(1) or real_forward(self, images))
    summaries = _cohort(teacher, tmp_path / "cohort", [*COHORT, shorter], **recipe)
    steps = math.ceil(539 / 128)  # the training split, global batch 128
    assert len(forwards) == 2 * steps, "one teacher forward per batch for the whole cohort"
    assert [s["cohort"] for s in summaries] == [[spec.run_id for spec in [*COHORT, shorter]]] * 4
    for spec in [*COHORT, shorter]:
        alone, together = tmp_path / "alone" / spec.run_id, tmp_path / "cohort" / spec.run_id
        _assert_same_run(alone, together)
        assert (alone / "evolution.nc").read_bytes() == (together / "evolution.nc").read_bytes()
    assert (tmp_path / "cohort" / COHORT[2].run_id / "projector.safetensors").read_bytes() == (
        tmp_path / "alone" / COHORT[2].run_id / "projector.safetensors").read_bytes()


def test_a_non_finite_loss_stops_one_student_and_a_rerun_does_not_retrain_the_others(teacher, tmp_path, caplog,
                                                                                      monkeypatch):
    caplog.set_level("INFO", logger="dyn")
    from dyn.training.task import SharedTeacher

    caches = []
    real_build = SharedTeacher.build_cache
    monkeypatch.setattr(SharedTeacher, "build_cache", lambda self, *a: caches.append(1) or real_build(self, *a))
    diverging = RunSpec("spectral", "Last1", 1e39, 2, 0)
    specs = [COHORT[0], diverging]
    state = tmp_path / "cohort.pt"
    with pytest.raises(NonFiniteLoss, match=re.escape(f"{diverging.run_id}: non-finite loss in epoch 1")) as stop:
        _cohort(teacher, tmp_path, specs, state=state)
    assert len(caches) == 1, "the teacher cache is built once per cohort"
    assert COHORT[0].run_id not in str(stop.value)
    assert (tmp_path / COHORT[0].run_id / "summary.json").is_file(), "the other student finishes"
    assert not (tmp_path / diverging.run_id / "summary.json").exists()
    assert f"{diverging.run_id}: stopped: non-finite loss in epoch 1" in caplog.text
    finished = (tmp_path / COHORT[0].run_id / "student.safetensors").read_bytes()
    # the failed job's progress.json stays beside its state, naming the stop (`dyn status` reads it)
    import json

    members = json.loads((tmp_path / "progress.json").read_text())["members"]
    assert members[diverging.run_id]["stopped"].startswith("non-finite loss in epoch 1 at step ")
    assert members[diverging.run_id]["done"] == 0 and members[COHORT[0].run_id]["done"] == 2

    # Snakemake deletes a failed job's outputs; the rerun writes the finished student from its state.
    (tmp_path / COHORT[0].run_id / "summary.json").unlink()
    (tmp_path / COHORT[0].run_id / "student.safetensors").unlink()
    caplog.clear()
    with pytest.raises(NonFiniteLoss, match=re.escape(diverging.run_id)):
        _cohort(teacher, tmp_path, specs, state=state)
    assert f"{COHORT[0].run_id}: resumed from {state} after epoch 2 of 2" in caplog.text
    assert f"{COHORT[0].run_id}: epoch" not in caplog.text, "not retrained"
    assert (tmp_path / COHORT[0].run_id / "student.safetensors").read_bytes() == finished
    assert state.is_file(), "the state stays while a student has not finished"


def test_a_run_added_to_a_finished_cohort_trains_alone_and_the_others_are_restored(teacher, tmp_path, caplog,
                                                                                     monkeypatch):
    import json
    import shutil

    import dyn.training.finished

    caplog.set_level("INFO", logger="dyn")
    store, first, added = tmp_path / "finished", COHORT[:2], COHORT[2]
    _cohort(teacher, tmp_path / "runs", first, finished_dir=store)
    before = {spec.run_id: {p.name: p.read_bytes() for p in (tmp_path / "runs" / spec.run_id).iterdir()
                            if p.is_file()} for spec in first}
    assert all({"student_best.safetensors", "log.csv"} <= set(files) for files in before.values())

    # Snakemake deletes the cohort job's outputs before it reruns it for the added run.
    shutil.rmtree(tmp_path / "runs")
    caplog.clear()
    summaries = _cohort(teacher, tmp_path / "runs", [*first, added], finished_dir=store)
    for spec in first:
        assert f"{spec.run_id}: reused from {store / spec.run_id}" in caplog.text
        assert f"{spec.run_id}: epoch" not in caplog.text, "not trained again"
        assert {p.name: p.read_bytes() for p in (tmp_path / "runs" / spec.run_id).iterdir()
                if p.is_file()} == before[spec.run_id]
    assert f"{added.run_id}: epoch 2/2" in caplog.text
    assert [s["run"] for s in summaries] == [spec.run_id for spec in COHORT]
    assert summaries[2]["cohort"] == [added.run_id] and summaries[0]["cohort"] == [s.run_id for s in first]
    assert (store / added.run_id / "key").is_file()
    parts = json.loads((store / added.run_id / "key.json").read_text())
    assert parts["key"] == (store / added.run_id / "key").read_text().strip()
    assert set(parts) == {"key", "fingerprint", "training_code", "torch", "timm", "numpy", "device"}
    assert parts["device"] == "cpu" and parts["torch"] == torch.__version__
    assert not (tmp_path / "runs" / first[0].run_id / "key.json").exists(), "not restored into the run directory"

    # Another configuration, or other code, is trained again: the kept run does not match its key.
    caplog.clear()
    _cohort(teacher, tmp_path / "other", first[:1], finished_dir=store, alpha=0.5)
    monkeypatch.setattr(dyn.training.finished, "training_code_digest", lambda: "other training code")
    _cohort(teacher, tmp_path / "changed", first[:1], finished_dir=store)
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "reused" in m]
    assert sum(m.startswith(f"{first[0].run_id}: epoch 2/2") for m in messages) == 2, "trained twice"


def test_the_reuse_key_stays_on_report_changes_and_changes_on_training_changes(tmp_path, monkeypatch):
    # A fix to a figure, the analysis, the CLI or `dyn status` must not retrain days of GPU work; a change
    # to what trains a student must. Edits to a copy of the package, which the digest is pointed at.
    import shutil

    from dyn.training import finished

    copy = tmp_path / "dyn"
    shutil.copytree(finished.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(finished, "PACKAGE", copy)
    key = finished.reuse_key("fingerprint", "cuda")
    assert key.parts == {"fingerprint": "fingerprint", "training_code": finished.training_code_digest(),
                         "torch": torch.__version__, "timm": timm.__version__, "numpy": __import__("numpy").__version__,
                         "device": "cuda"}
    for name in ["report/figures.py", "report/tables.py", "analysis/phases.py", "analysis/nulls.py",
                 "analysis/capture.py", "cli.py", "status.py", "training/finished.py", "training/fetch.py"]:
        (copy / name).write_text((copy / name).read_text() + "\n# a fix that does not touch training\n")
    assert finished.reuse_key("fingerprint", "cuda") == key
    (copy / "training" / "losses.py").write_text((copy / "training" / "losses.py").read_text() + "\n# changed\n")
    changed = finished.reuse_key("fingerprint", "cuda")
    assert changed != key and changed.parts["training_code"] != key.parts["training_code"]
    assert finished.reuse_key("other configuration", "cuda") != changed
    assert finished.reuse_key("fingerprint", "cpu") != changed
    monkeypatch.setattr(finished, "library_versions", lambda: {"torch": "0.0", "timm": "0.0", "numpy": "0.0"})
    assert finished.reuse_key("fingerprint", "cuda") != changed


def test_a_kept_run_is_restored_only_under_its_key_and_its_key_json_is_not_restored(tmp_path):
    import json

    from dyn.training import finished

    run, store = "softkd_none_b0_e2_s0", tmp_path / "finished"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"run": "softkd_none_b0_e2_s0"}')
    (tmp_path / "run" / "student.safetensors").write_bytes(b"weights")
    key = finished.reuse_key("fingerprint", "cpu")
    finished.keep(store, run, key, tmp_path / "run")
    assert json.loads((store / run / "key.json").read_text()) == {"key": key, **key.parts}
    assert finished.is_kept(store, run, key) and not finished.is_kept(store, run, finished.reuse_key("x", "cpu"))
    finished.restore(store, run, tmp_path / "again")
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["student.safetensors", "summary.json"]


def test_every_dyn_module_the_training_imports_is_in_the_reuse_key_or_says_why_not():
    # A module added to the training path (or one it newly imports) changes no key until it is listed:
    # this makes whoever adds it choose, in dyn.training.finished.
    import ast

    from dyn.training import finished

    def imported(name):
        """The dyn modules (paths relative to the package) that `name` imports, at its top or in a function."""
        package = (finished.PACKAGE / name).parent.relative_to(finished.PACKAGE).parts
        found = set()
        for node in ast.walk(ast.parse((finished.PACKAGE / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(package[:len(package) - node.level + 1]) + (node.module.split(".") if node.module else [])
                for alias in node.names:  # `from .a import b`: module a/b.py, else a.py (or package a)
                    for parts in (base + [alias.name], base):
                        module = "/".join(parts)
                        paths = [f"{module}.py", f"{module}/__init__.py"] if parts else ["__init__.py"]
                        path = next((p for p in paths if (finished.PACKAGE / p).is_file()), None)
                        if path is not None:
                            found.add(path)
                            break
        return found

    seen, todo = set(), ["training/distill.py"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(imported(name))
    seen = {name for name in seen if not name.endswith("/__init__.py")}  # packages' docstrings
    listed = set(finished.TRAINING_CODE) | set(finished.NOT_TRAINING_CODE)
    assert seen - listed == set(), "add these to TRAINING_CODE or NOT_TRAINING_CODE in dyn/training/finished.py"
    assert all((finished.PACKAGE / name).is_file() for name in listed)
    assert not set(finished.TRAINING_CODE) & set(finished.NOT_TRAINING_CODE)


def test_a_random_stream_draws_what_a_seeded_process_draws_and_leaves_the_global_state_alone():
    import random

    import numpy as np

    from dyn.training.rng import RngStream

    torch.manual_seed(123)
    random.seed(5)
    outside = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    stream = RngStream(7)
    with stream.active():
        first = (torch.rand(3), random.random(), np.random.rand())
    with stream.active():  # goes on where it stopped
        second = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outside[0]) and random.getstate() == outside[1]
    assert np.array_equal(np.random.get_state()[1], outside[2])
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    assert torch.equal(first[0], torch.rand(3)) and first[1] == random.random() and first[2] == np.random.rand()
    assert torch.equal(second, torch.rand(3))


@pytest.mark.parametrize("method", ["projector", "projector_trained"])
def test_one_optimiser_step_trains_the_projection_only_under_projector_trained(method):
    # `projector` is the authors' code: the projection and both BatchNorm affines are never in the
    # optimiser, yet the student learns through them; `projector_trained` trains the projection and
    # the student-side affine, never the teacher-side one (a trainable target would collapse the loss).
    from dyn.training.recipe import make_optimizer
    from dyn.training.task import LayerDistillationTask, SharedTeacher

    torch.manual_seed(0)
    teacher_model = timm.create_model("cait_digits").eval()
    task = LayerDistillationTask(timm.create_model("deit_digits"), teacher_model, [(0, 0), (7, 11)], method,
                                 beta=0.2, alpha=0.9, temperature=1.0, label_smoothing=0.0).train()
    optimizer = make_optimizer(task.trainable_module, Recipe(**RECIPE))
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    names = {id(p): name for name, p in task.trainable_module.named_parameters()}
    projector_names = {names[i] for i in in_optimizer if names[i].startswith("projector.")}
    before = {k: v.clone() for k, v in task.trainable_module.state_dict().items()}
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    out = task(x, y, SharedTeacher([task])(x))
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    after = task.trainable_module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trained = {f"projector.{part}.{i}.{kind}" for part in ("maps", "student_norms") for i in (0, 1)
               for kind in ("weight", "bias")}
    assert "student.blocks.0.attn.qkv.weight" in changed and out["feat_loss"] > 0
    # the batch statistics of both sides' BatchNorms move in either method
    assert {"projector.student_norms.0.running_mean", "projector.teacher_norms.1.running_var"} <= changed
    if method == "projector":
        assert projector_names == set() and not changed & trained
    else:
        # the biases' gradients vanish (a BatchNorm follows the projection; both sides are centred): weights only
        assert projector_names == trained and {k for k in trained if k.endswith("weight")} <= changed
    assert not any(k.startswith("projector.teacher_norms.") and k.endswith(("weight", "bias")) for k in changed)


def test_the_pca_estimate_uses_a_seeded_subset_of_the_training_images():
    from dyn.data import DigitsDataset, stack
    from dyn.training.translators import pca_subset

    student, recipe = timm.create_model("deit_digits"), Recipe(**{**RECIPE, "augment": True})
    subset = pca_subset(DIGITS, student, recipe, 256, seed=0)
    train, val = DigitsDataset("train", val_fraction=0.7), DigitsDataset("val", val_fraction=0.7)
    assert len(subset) == 256 and list(subset.indices) == sorted(set(subset.indices))
    source = subset.dataset.source_index[subset.indices]  # the images' indices in scikit-learn's digits
    assert set(source) <= set(train.source_index) and not set(source) & set(val.source_index)
    again, other = pca_subset(DIGITS, student, recipe, 256, seed=0), pca_subset(DIGITS, student, recipe, 256, seed=1)
    assert again.indices == subset.indices and other.indices != subset.indices
    # the evaluation transform even where the recipe augments: the same images every time
    assert torch.equal(stack(subset)[0], stack(again)[0])
    assert len(pca_subset(DIGITS, student, recipe, 10_000, seed=0)) == len(train), "all of them if fewer"


def test_a_pca_run_writes_its_translators_and_ends_as_it_would_alone_in_a_cohort(teacher, tmp_path, monkeypatch):
    import json

    from dyn.training.task import SharedTeacher

    alone = RunSpec("pca", "Last1", 0.2, 1, 0)
    summary = _run(teacher, tmp_path / "alone" / alone.run_id, alone)
    run = tmp_path / "alone" / alone.run_id
    assert {p.name for p in run.iterdir()} == {
        "summary.json", "log.csv", "student.safetensors", "evolution.nc", "pca.safetensors",
        "student_best.safetensors", "tensorboard"}
    assert summary["pairs"] == [(7, 11)] and summary["pca_keep"] == 0.25 and summary["pca_images"] == 256
    assert summary["pca_components"] == [16]  # ceil(0.25 x 64) of cait_digits' 64 channels
    pca = load_file(run / "pca.safetensors")
    assert set(pca) == {"layer11.mean", "layer11.components", "layer11.explained"}
    components = pca["layer11.components"].double()
    assert components.shape == (64, 16)
    torch.testing.assert_close(components.T @ components, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-5)
    assert summary["pca_explained"][0] == pytest.approx(pca["layer11.explained"].item())
    assert 0 < summary["pca_explained"][0] <= 1
    assert json.loads((run / "summary.json").read_text())["pca_explained"] == summary["pca_explained"]

    # In a cohort: one estimate per (teacher layer, keep), and the student ends exactly as alone.
    calls = []
    real = SharedTeacher.estimate_pca
    monkeypatch.setattr(SharedTeacher, "estimate_pca",
                        lambda self, images, requests, *a: calls.append(sorted(set(requests))) or real(
                            self, images, requests, *a))
    specs = [RunSpec("pca", "First1+Last1", 0.2, 1, 0), alone]
    summaries = _cohort(teacher, tmp_path / "cohort", specs)
    assert calls == [[(0, 0.25), (11, 0.25)]]
    together = tmp_path / "cohort" / alone.run_id
    _assert_same_run(run, together)
    assert (run / "pca.safetensors").read_bytes() == (together / "pca.safetensors").read_bytes()
    assert summaries[0]["pca_components"] == [16, 16]
    assert summaries[0]["pca_explained"][1] == summary["pca_explained"][0]


def test_dyn_distill_passes_each_runs_method_options(tmp_path, monkeypatch):
    import dyn.training.distill
    from conftest import rule_args, dyn_here

    seen = {}
    monkeypatch.setattr(dyn.training.distill, "distill", lambda specs, *a, **kw: seen.update(kw, specs=specs) or [])

    def args(options):
        runs = [{"method": "pca", "layers": "Last1", "beta": 0.2, "epochs": 1, **options},
                {"method": "lowpass", "layers": "Last1", "beta": 0.2, "epochs": 1}]
        return rule_args(["distill", "--runs", json.dumps(runs), "--teacher-arch", "cait_digits",
                          "--teacher-checkpoint", tmp_path / "t.safetensors", "--student-arch", "deit_digits",
                          "--runs-dir", tmp_path])

    assert dyn_here(args({"options": {"pca_keep": 0.5, "pca_images": 64}})).returncode == 0
    pca, lowpass = seen["specs"]
    assert (pca.run_id, pca.options, lowpass.options) == ("pca_Last1_b0.2_e1_s0", (("pca_images", 64), ("pca_keep", 0.5)),
                                                          (("lowpass_keep", 0.25),))
    assert dyn_here(args({})).returncode == 0 and seen["specs"][0].options == (("pca_images", 256), ("pca_keep", 0.25))
    for bad in ({"pca_keep": 0}, {"pca_keep": 1.5}, {"pca_images": 0}, {"pca_images": 2.5}):
        assert dyn_here(args({"options": bad})).returncode == 2