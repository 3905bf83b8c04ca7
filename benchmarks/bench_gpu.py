"""GPU training-step benchmark: cait_s24_224 -> deit_tiny_patch16_224, SpectralKD First1+Last1, batch 128.

    python benchmarks/bench_gpu.py [--steps 20] [--compile] [--cohort 9]     (make bench-gpu)

Random weights and synthetic images (nothing is downloaded); under 5 minutes on one H100. Our step
(bf16 autocast with the FFT in float32; also float16 with a gradient scaler, and float32; teacher under inference_mode, fused AdamW, no host sync per
step) against a reference-style step (float32, teacher under no_grad with every block's output
kept, unfused AdamW, .item() on each loss part every step), same models, batch and data. Prints the
speed-up and writes results/bench_gpu.json.

Cohorts (`--cohort N`, default 9: Table 1's nine students of 300 epochs): one cohort step (one
teacher forward with the union of the aligned layers, then each student's step) against the N
students' single-run steps one after another (each with its own teacher forward); images per
second per student, the cohort's speed-up in student-images per second, and peak GPU memory.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, x, y, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step(x, y)
    _sync(x.device)
    started = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    _sync(x.device)
    return (time.perf_counter() - started) / steps


def _measured(step, x, y, warmup: int, steps: int) -> dict:
    """Seconds per step, images per second and peak GPU memory of `step` on one batch."""
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = _timed(step, x, y, warmup, steps)
    return {"seconds_per_step": seconds, "images_per_s": x.shape[0] / seconds,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if x.device.type == "cuda" else 0.0}


def ours_step(teacher, pairs, device, compiled: bool = False, amp: bool = True, dtype: str = "bfloat16"):
    """Our training step of one SpectralKD student, as the loop takes it."""
    import timm

    from dyn.training.precision import Precision, backward_and_step
    from dyn.training.recipe import Recipe, make_optimizer
    from dyn.training.task import LayerDistillationTask, SharedTeacher

    torch.manual_seed(0)
    task = LayerDistillationTask(timm.create_model("deit_tiny_patch16_224"), teacher, pairs, "spectral",
                                 alpha=0.9, temperature=1.0, beta=0.2, label_smoothing=0.1,
                                 device=device).to(device).train()
    teacher_forward = SharedTeacher([task])
    if compiled:
        task.compile()
        teacher_forward.compile()
    optimizer = make_optimizer(task.trainable_module, Recipe())
    precision = Precision.of(device, amp, dtype)
    scaler = precision.new_scaler()

    def step(inputs, labels):
        with precision.autocast():
            out = task(inputs, labels, teacher_forward(inputs))
        optimizer.zero_grad(set_to_none=True)
        backward_and_step(out["loss"], optimizer, scaler)
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/bench_gpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="also time our step with torch.compile")
    parser.add_argument("--cohort", type=int, default=9, help="students of the cohort benchmark (0: skip it)")
    parser.add_argument("--out", default="results/bench_gpu.json")
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test of this script)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: error: no CUDA device visible", file=sys.stderr)
        return 2

    import timm

    from bench import reference_step_fn
    from dyn.atomic import write_json

    device = torch.device(args.device)
    pairs = [(0, 0), (11, 23)]  # First1+Last1 of a 12-block student and a 24-block teacher
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    teacher = timm.create_model("cait_s24_224").to(device).eval()
    results = {}

    torch.manual_seed(0)
    reference = reference_step_fn(timm.create_model("deit_tiny_patch16_224").to(device).train(), teacher, pairs,
                                  0.9, 1.0, 0.2, 0.1)
    # ours_float32 separates what bf16 gives from what the rest of the step (no per-step host syncs,
    # inference_mode teacher computing only the aligned blocks, fused AdamW) gives.
    variants = {"reference": reference, "ours": ours_step(teacher, pairs, device),
                "ours_float16": ours_step(teacher, pairs, device, dtype="float16"),
                "ours_float32": ours_step(teacher, pairs, device, amp=False)}
    if args.compile:
        variants["ours_compiled"] = ours_step(teacher, pairs, device, compiled=True)
    for name, step in variants.items():
        results[name] = _measured(step, x, y, args.warmup, args.steps)
        print(f"{name:>14}: {results[name]['seconds_per_step'] * 1000:8.1f} ms/step  "
              f"{results[name]['images_per_s']:8.0f} img/s  peak {results[name]['peak_memory_gib']:.1f} GiB")
    for name in variants:
        if name != "reference":
            ratio = results["reference"]["seconds_per_step"] / results[name]["seconds_per_step"]
            results[name]["speedup_vs_reference"] = ratio
            goal = "" if name in ("ours_float32", "ours_float16") else f" (goal >= 1.5x: {'met' if ratio >= 1.5 else 'MISSED'})"
            print(f"{name} speed-up vs reference: {ratio:.2f}x{goal}")
    if args.cohort:
        results.update(bench_cohort(teacher, x, y, args.cohort, args.warmup, args.steps))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    write_json(args.out, {"device": device_name, "torch": torch.__version__,
                          "timm": timm.__version__, "batch": args.batch, "steps": args.steps, "results": results})
    return 0


# Table 1's students of 300 epochs: (method, layer spec, beta).
GRID = [("softkd", "none", 0.0), ("spectral", "First1+Last1", 0.2), ("spectral", "First1", 0.2),
        ("spectral", "Last1", 0.2), ("spectral", "Last8", 0.2), ("spectral", "Last1", 0.1),
        ("projector", "First1", 0.2), ("projector", "Last1", 0.2), ("projector", "First1+Last1", 0.2)]


def bench_cohort(teacher, x, y, n: int, warmup: int, steps: int) -> dict:
    """A cohort step of `n` students against their single-run steps, bf16 autocast, fused AdamW."""
    import timm
    from timm.task import DistillationTeacher

    from dyn.training.precision import Precision, backward_and_step
    from dyn.training.recipe import Recipe, make_optimizer
    from dyn.training.rng import RngStream
    from dyn.training.task import LayerDistillationTask, SharedTeacher
    from dyn.grid import layers

    device, grid = x.device, [GRID[i % len(GRID)] for i in range(n)]
    shared_teacher = DistillationTeacher(teacher, device=device)
    precision = Precision.of(device, True, "bfloat16")
    students = []
    for method, spec, beta in grid:
        stream = RngStream(0, device)
        with stream.active():
            task = LayerDistillationTask(timm.create_model("deit_tiny_patch16_224"), shared_teacher,
                                         layers.parse(spec, 12, 24) if method != "softkd" else [], method, alpha=0.9, temperature=1.0,
                                         beta=beta, label_smoothing=0.1, device=device).to(device).train()
        students.append((task, make_optimizer(task.trainable_module, Recipe()), stream, SharedTeacher([task])))
    cohort_teacher = SharedTeacher([task for task, *_ in students])

    def student_step(task, optimizer, stream, inputs, labels, teacher_out):
        with stream.active():
            with precision.autocast():
                out = task(inputs, labels, teacher_out)
            optimizer.zero_grad(set_to_none=True)
            backward_and_step(out["loss"], optimizer, None)

    def singles(inputs, labels):  # each student as its own run: its own teacher forward
        for task, optimizer, stream, own_teacher in students:
            with precision.autocast():
                teacher_out = own_teacher(inputs)
            student_step(task, optimizer, stream, inputs, labels, teacher_out)

    def cohort(inputs, labels):  # one teacher forward (the union of the layers) for all students
        with precision.autocast():
            teacher_out = cohort_teacher(inputs)
        for task, optimizer, stream, _ in students:
            student_step(task, optimizer, stream, inputs, labels, teacher_out)

    results = {}
    for name, step in {"singles": singles, "cohort": cohort}.items():
        r = _measured(step, x, y, warmup, steps)
        results[f"{name}_{n}"] = {**r, "images_per_s_per_student": r["images_per_s"],
                                  "student_images_per_s": n * r["images_per_s"]}
    speedup = results[f"singles_{n}"]["seconds_per_step"] / results[f"cohort_{n}"]["seconds_per_step"]
    results[f"cohort_{n}"]["speedup_vs_singles"] = speedup
    for name, r in results.items():
        print(f"{name:>14}: {r['seconds_per_step'] * 1000:8.1f} ms for one batch of each of {n} students  "
              f"{r['images_per_s_per_student']:8.0f} img/s per student  peak {r['peak_memory_gib']:.1f} GiB")
    print(f"cohort of {n} speed-up vs {n} single runs: {speedup:.2f}x (goal >= 2.2x: "
          f"{'met' if speedup >= 2.2 else 'MISSED'})")
    return results


if __name__ == "__main__":
    sys.exit(main())
