"""The benchmark's baselines compute what they claim to, so its ratios compare like with like."""
import numpy as np
import pytest
import timm
import torch

import bench
from dyn.analysis import metric_files, metrics
from dyn.training.task import LayerDistillationTask, SharedTeacher


def test_reference_step_computes_the_same_loss_as_ours():
    torch.manual_seed(0)
    teacher = timm.create_model("cait_digits").eval()
    torch.manual_seed(1)
    student_a = timm.create_model("deit_digits")
    student_b = timm.create_model("deit_digits")
    student_b.load_state_dict(student_a.state_dict())
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    pairs = [(0, 0), (7, 11)]
    task = LayerDistillationTask(student_a, teacher, pairs, "spectral", alpha=0.9, temperature=2.0, beta=0.2,
                                 label_smoothing=0.1).train()
    ours = task(x, y, SharedTeacher([task])(x))
    reference = bench.reference_step_fn(student_b.train(), teacher, pairs, 0.9, 2.0, 0.2, 0.1)(x, y)
    got = [ours["task_loss"].item(), ours["kd_loss"].item(), ours["feat_loss"].item(), ours["loss"].item()]
    assert got == pytest.approx(reference, rel=1e-4, abs=1e-6)  # float32: two ways to write the same KL


def test_synthetic_capture_has_the_asked_shape(tmp_path):
    path = bench.synthetic_capture(tmp_path / "s.nc", layers=2, samples=5, channels=7, height=3, width=2)
    values = metric_files.stream_metrics(path, metrics.METRICS)
    assert len(values["spectrum"]) == 2 and values["spectrum"][0].shape == (7,)
    assert np.all(values["entropy"] > 0)


def test_loop_baseline_runs_and_unknown_section_is_one_line(capsys):
    bench.loop_metrics(np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32))
    assert bench.main(["--only", "metrics,speed"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "bench: error: unknown section(s) speed: valid are metrics, memory, calibration, capture, train, cohort, live, dag"]
