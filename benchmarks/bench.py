"""Benchmarks: each stage as the workflow runs it, against a baseline timed in the same run, as ratios.

    python benchmarks/bench.py                       # everything (a few minutes on 2 CPU cores)  (make bench)
    python benchmarks/bench.py --only metrics,train

Prints a table and merges it into results/bench.json (`make docs` writes the docs' tables from it).
Absolute times depend on the machine and its load; the ratios are the numbers to compare. The GPU training-step benchmark is benchmarks/bench_gpu.py.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_cohort import bench_cohort, measured_process
from cli_defaults import rule_args

OUT = Path("results/bench")
SECTIONS = ("metrics", "memory", "calibration", "capture", "train", "cohort", "live", "dag")
REPO = Path(__file__).resolve().parents[1]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def row(what, baseline, ours_s, baseline_s, ratio, ratio_means, goal, met, **extra) -> dict:
    return {"what": what, "baseline": baseline, "ours_s": round(ours_s, 4), "baseline_s": round(baseline_s, 4),
            "ratio": round(ratio, 3), "ratio_means": ratio_means, "goal": goal, "met": met, **extra}


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


# -- metrics ---------------------------------------------------------------------------------------
CAIT_S24 = dict(layers=24, samples=64, channels=384, height=14, width=14)


def synthetic_capture(path: Path, layers: int, samples: int, channels: int, height: int, width: int,
                      compression_level: int = 0, seed: int = 0) -> Path:
    """A capture file of random activations in the project's own layout, written afresh each run."""
    from dyn.analysis.capture import CaptureWriter

    rng = np.random.default_rng(seed)
    chunk = 16
    with CaptureWriter(path, [(channels, height, width)] * layers, range(samples), {"model": "synthetic"},
                       samples_per_chunk=chunk, compression_level=compression_level) as writer:
        for layer in range(layers):
            for start in range(0, samples, chunk):
                n = min(chunk, samples - start)
                writer.write(layer, start, rng.standard_normal((n, channels, height, width), dtype=np.float32))
    return path


def loop_metrics(vectors: np.ndarray, bins: int = 100) -> None:
    """The obvious implementation: one channel vector at a time."""
    for v in vectors:
        counts, _ = np.histogram(v, bins=bins)
        p = counts[counts > 0] / len(v)
        -(p * np.log2(p)).sum()
        np.abs(np.fft.fft(v)) / len(v)
        np.abs(v).mean()


XARRAY_READ = """
import sys
import xarray as xr
with xr.open_dataset(sys.argv[1], cache=False) as ds:
    activation = ds["activation"]
    chunk = activation.encoding["chunksizes"][1]
    for layer in range(activation.sizes["layer"]):
        for start in range(0, activation.sizes["sample"], chunk):
            activation[layer, start:start + chunk].values
"""


def bench_metrics(repeats: int) -> list[dict]:
    from dyn.analysis import metrics
    from dyn.analysis.capture import iter_layer_blocks

    path = synthetic_capture(OUT / "cait_s24_64.nc", **CAIT_S24)
    dyn = str(Path(sys.executable).with_name("dyn"))
    read_s = median_time(lambda: run(sys.executable, "-c", XARRAY_READ, str(path)), repeats)
    rule_s = {name: median_time(lambda n=name: run(dyn, *rule_args(["metrics", n, "--capture", path, "--out",
                                                                      OUT / f"{n}.nc"])), repeats)
              for name in metrics.METRICS}
    rules_s = sum(rule_s.values())

    # The per-position loop on 1,000 positions, scaled to the file's 24 x 64 x 14 x 14 positions.
    _, block = next(iter(iter_layer_blocks(path)))
    vectors = np.moveaxis(block, 1, -1).reshape(-1, block.shape[1])[:1000]
    per_position = median_time(lambda: loop_metrics(vectors), 1) / len(vectors)
    positions = CAIT_S24["layers"] * CAIT_S24["samples"] * CAIT_S24["height"] * CAIT_S24["width"]
    loop_s = read_s + per_position * positions
    shape = f"24 layers x 64 samples x 384 ch x 14 x 14, float32, uncompressed ({path.stat().st_size / 2**20:.0f} MiB)"
    rows = [row("metrics: the three rules as the workflow runs them (3 `dyn metrics` processes, start-up "
                "included)", "per-position loop (np.histogram, np.fft.fft) after an xarray read; loop timed on "
                "1,000 positions and scaled", rules_s, loop_s, loop_s / rules_s, "speed-up (baseline / ours)",
                ">= 3x", loop_s / rules_s >= 3, file=shape)]
    for name, seconds in rule_s.items():
        rows.append(row(f"metrics: `dyn metrics {name}` (one process, start-up included"
                        + (", global range kept at capture)" if name == "entropy" else ")"),
                        "one process reading every value of the file once with xarray (start-up included)",
                        seconds, read_s, seconds / read_s, "time ratio (ours / read)", "<= 3x", seconds / read_s <= 3,
                        file=shape))
    # The other ways to the entropy: each vector's own range, and a capture without its range (two passes).
    vector_s = median_time(lambda: run(dyn, *rule_args(["metrics", "entropy", "--capture", path, "--out",
                                                          OUT / "entropy_vector.nc", "--entropy-range", "vector"])),
                         repeats)
    unkept = synthetic_capture(OUT / "cait_s24_64_unkept.nc", **CAIT_S24)
    import netCDF4

    with netCDF4.Dataset(unkept, "a") as root:  # as a capture of an older dyn: no value_min / value_max
        root.delncattr("value_min")
        root.delncattr("value_max")
    two_pass_s = median_time(lambda: run(dyn, *rule_args(["metrics", "entropy", "--capture", unkept, "--out",
                                                            OUT / "entropy_two_pass.nc"])), repeats)
    phases_s = median_time(lambda: run(dyn, *rule_args(["metrics", "phases", "--entropy", OUT / "entropy.nc",
                                                          "--magnitude", OUT / "magnitude.nc", "--spectrum",
                                                          OUT / "spectrum.nc", "--out", OUT / "phases.csv"])), repeats)
    rows.append(row("metrics: `dyn metrics phases` of that capture's three metric files (one process, start-up "
                    "included)", "a 30 s budget", phases_s, 30.0, phases_s / 30.0, "time ratio (ours / budget)",
                    "< 1", phases_s < 30, file=shape))
    for what, seconds in (("`dyn metrics entropy --entropy-range vector`", vector_s),
                          ("`dyn metrics entropy` of a capture without its kept range (a first pass finds it)",
                           two_pass_s)):
        rows.append(row(f"metrics: {what}", "the same xarray read", seconds, read_s, seconds / read_s,
                        "time ratio (ours / read)", "-", None, file=shape))
    return rows


# -- calibration -----------------------------------------------------------------------------------
def bench_calibration(runs: int = 2000) -> list[dict]:
    """How often the U test calls a U on each synthetic null and on a U of the paper's size."""
    from dyn.analysis import nulls

    return nulls.calibration(runs)


# -- memory ----------------------------------------------------------------------------------------
# Peak resident memory from /proc's VmHWM, read by the metric process itself as it ends.
MEMORY_CHILD = """
import sys
from dyn.cli import main
try:
    main(sys.argv[1:])
finally:
    with open("/proc/self/status") as status:
        print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")))
"""


def bench_memory(budget_mb: int = 512) -> list[dict]:
    from dyn.analysis import metrics

    # 4x the budget: 24 x 300 x 384 x 14 x 14 float32 = 2.02 GiB.
    path = synthetic_capture(OUT / "memory_2gb.nc", layers=24, samples=300, channels=384, height=14, width=14)
    size_mb = path.stat().st_size / 2**20
    rows = []
    for name in metrics.METRICS:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, *rule_args(["metrics", name, "--capture", path,
                                                                             "--out", OUT / f"memory_{name}.nc"])],
                             capture_output=True, text=True, check=True).stdout
        seconds = time.perf_counter() - started
        peak_mb = int(out.split()[-1]) / 1024
        rows.append(row(f"`dyn metrics {name}` over a {size_mb:.0f} MiB capture: peak resident memory (MiB)",
                        f"budget {budget_mb} MiB (the file is {size_mb / budget_mb:.1f}x the budget)", peak_mb,
                        budget_mb, peak_mb / budget_mb, "peak / budget", "< 1", peak_mb < budget_mb,
                        seconds=round(seconds, 2)))
    path.unlink()
    return rows


# -- capture ---------------------------------------------------------------------------------------
def bench_capture(repeats: int, arch: str = "deit_tiny_patch16_224", n: int = 64, device: str = "cpu") -> list[dict]:
    import timm
    import torch
    from torch.utils.data import TensorDataset

    from dyn.analysis.capture import capture

    torch.manual_seed(0)
    device = torch.device(device)
    model = timm.create_model(arch).eval().to(device)
    images = torch.randn(n, 3, 224, 224)
    dataset = TensorDataset(images, torch.zeros(n, dtype=torch.long))

    def bare():  # the images start on the host, as capture's do
        with torch.inference_mode():
            for start in range(0, n, 16):
                model(images[start:start + 16].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ours(level: int):
        capture(model, dataset, OUT / "capture_bench.nc", {"model": arch}, samples_per_chunk=16,
                compression_level=level, device=device)
        return (OUT / "capture_bench.nc").stat().st_size

    bare()  # warm-up
    rows = []
    for level, goal in ((0, ">= 0.8"), (1, "(informational)")):  # the default, then zlib 1 + shuffle
        bare_s = median_time(bare, repeats)
        ours_s = median_time(lambda: ours(level), repeats)
        size_mb = ours(level) / 2**20
        rows.append(row(f"capture: {arch} on {device.type}, {n} images, compression_level {level} "
                        f"({size_mb:.0f} MiB file)",
                        "bare forward of the same model and images, no features kept", ours_s, bare_s,
                        bare_s / ours_s, "throughput ratio (ours / bare)", goal,
                        bare_s / ours_s >= 0.8 if level == 0 else None,
                        images_per_s=round(n / ours_s, 1), bare_images_per_s=round(n / bare_s, 1),
                        file_mib=round(size_mb, 1)))
    (OUT / "capture_bench.nc").unlink(missing_ok=True)
    return rows


# -- training step ---------------------------------------------------------------------------------
def reference_step_fn(student, teacher, pairs, alpha, temperature, beta, smoothing):
    """What the paper's public code does per step: float32, teacher under no_grad with every block's
    output kept, unfused AdamW, and .item() on each loss part every step."""
    import torch
    import torch.nn.functional as F

    from dyn.models import features
    from dyn.training.losses import spectral_loss

    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.05, foreach=False, fused=False)
    s_layers = [s for s, _ in pairs]

    def step(x, y):
        with torch.no_grad():
            t_logits, t_all = features(teacher, x, None, with_logits=True)
        t_maps = [t_all[t] for _, t in pairs]
        s_logits, s_maps = features(student, x, s_layers, with_logits=True)
        ce = F.cross_entropy(s_logits, y, label_smoothing=smoothing)
        kd = F.kl_div(F.log_softmax(s_logits / temperature, -1), F.softmax(t_logits / temperature, -1),
                      reduction="batchmean") * temperature ** 2
        feat = spectral_loss(s_maps, t_maps)
        loss = (1 - alpha) * ce + alpha * kd + beta * feat
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return [ce.item(), kd.item(), feat.item(), loss.item()]

    return step


def bench_train(repeats: int) -> list[dict]:
    import timm
    import torch

    from dyn.data import build_dataset, build_transform, stack
    from dyn.training.recipe import Recipe, make_optimizer
    from dyn.training.task import LayerDistillationTask, SharedTeacher

    torch.manual_seed(0)
    teacher = timm.create_model("cait_digits").eval()
    recipe = Recipe(global_batch=64, augment=False, num_workers=0, crop_pct=None, alpha=0.9, temperature=1.0)
    pairs = [(0, 0), (7, 11)]  # First1+Last1
    images, labels = stack(build_dataset({"name": "digits"}, "train",
                                         build_transform(timm.create_model("deit_digits"), False, recipe.to_dict())))
    batches = [(images[i:i + 64], labels[i:i + 64], torch.arange(i, min(i + 64, len(images))))
               for i in range(0, len(images) - 63, 64)]

    def make_ours(cache: bool):
        torch.manual_seed(1)
        task = LayerDistillationTask(timm.create_model("deit_digits"), teacher, pairs, "spectral", alpha=0.9,
                                     temperature=1.0, beta=0.2, label_smoothing=0.1)
        shared = SharedTeacher([task])
        if cache:
            shared.build_cache(images, 512, torch.device("cpu"))
        optimizer = make_optimizer(task.trainable_module, recipe)
        task.train()

        def epoch():
            for x, y, index in batches:
                out = task(x, y, shared(x, index if cache else None))
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                optimizer.step()
        return epoch

    def make_reference():
        torch.manual_seed(1)
        step = reference_step_fn(timm.create_model("deit_digits").train(), teacher, pairs, 0.9, 1.0, 0.2, 0.1)

        def epoch():
            for x, y, _ in batches:
                step(x, y)
        return epoch

    runs = {"ours": make_ours(True), "ours_nocache": make_ours(False), "reference": make_reference()}
    for fn in runs.values():  # warm-up
        fn()
    seconds = {name: median_time(fn, repeats) / len(batches) for name, fn in runs.items()}
    what = "train step: SpectralKD First1+Last1, cait_digits -> deit_digits, batch 64, CPU"
    base = "reference-style step: fp32, teacher no_grad with all intermediates, unfused AdamW, .item() per part"
    return [
        row(what + " (teacher cache on: the embedded default)", base, seconds["ours"], seconds["reference"],
            seconds["reference"] / seconds["ours"], "speed-up (baseline / ours)", ">= 1.25x",
            seconds["reference"] / seconds["ours"] >= 1.25),
        row(what + " (teacher cache off)", base, seconds["ours_nocache"], seconds["reference"],
            seconds["reference"] / seconds["ours_nocache"], "speed-up (baseline / ours)", "(informational)", None),
    ]


# -- live: watching a job ------------------------------------------------------------------------
LIVE_COHORT = [{"method": "softkd"}, {"method": "spectral", "layers": "First1+Last1", "beta": 0.2},
               {"method": "projector", "layers": "Last1", "beta": 0.2}]


def bench_live(repeats: int, epochs: int = 18) -> list[dict]:
    """What watching a job costs: the same small digits cohort job (3 students for 18 epochs, as the
    default grid's shorter runs; `dyn distill` processes as the workflow starts them: a state file, one
    thread, the digits config's recipe and snapshots every 2 epochs) with the live run files, progress
    lines, progress.json and TensorBoard on (the defaults) and off (DYN_LIVE=0, train.tensorboard: false).

    The two run side by side, one core each: this machine's speed moves a job's time by up to 11 % from
    one run to the next (measured), five times the 2 % looked for, and a change of speed then hits both
    alike. Also checks that the students come out the same either way."""
    import json

    import timm
    import torch
    import yaml

    import dyn.models  # noqa: F401  (the embedded architectures)
    from bench_cohort import same_weights
    from dyn.models import save_weights

    dyn = str(Path(sys.executable).with_name("dyn"))
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        teacher = Path(tmp) / "cait.safetensors"
        save_weights(timm.create_model("cait_digits"), teacher)  # untrained: the timing is the same

        def command(on: bool, out: str) -> list[str]:
            train = {**config["train"], "tensorboard": on}
            runs = [{**run, "epochs": epochs} for run in LIVE_COHORT]
            return ["env", f"DYN_LIVE={int(on)}", dyn, *rule_args([
                    "distill", "--runs", json.dumps(runs), "--teacher-arch", "cait_digits", "--teacher-checkpoint", teacher,
                    "--student-arch", "deit_digits", "--runs-dir", str(Path(tmp) / out), "--state",
                    str(Path(tmp) / "state" / out / "last.pt"), "--evolution-every", "2", "--dataset",
                    json.dumps(config["dataset"]), "--train", json.dumps(train), "--device", "cpu", "--threads", "1"])]

        measured_pair([command(True, "warm_on"), command(False, "warm_off")])  # page cache, the venv's bytecode
        times: dict[bool, list[float]] = {False: [], True: []}
        watched_s = []  # what the "on" jobs say they spent watching themselves
        for i in range(repeats):
            arms = (True, False) if i % 2 == 0 else (False, True)  # neither arm always started first
            for on, (wall, log) in zip(arms, measured_pair([command(on, f"{'on' if on else 'off'}{i}")
                                                            for on in arms])):
                times[on].append(wall)
                if on:
                    found = re.search(r"watching it \(.*\) took ([\d.]+) s", log)
                    watched_s.append(float(found.group(1)) / wall if found else float("nan"))
        runs = sorted(p.parent.name for p in (Path(tmp) / "on0").glob("*/summary.json"))
        same = len(runs) == len(LIVE_COHORT) and all(
            same_weights(Path(tmp) / "off0" / run / "student.safetensors",
                         Path(tmp) / "on0" / run / "student.safetensors") for run in runs)
        watched = all((Path(tmp) / "on0" / run / "tensorboard").is_dir() and not (
            Path(tmp) / "off0" / run / "tensorboard").exists() for run in runs)
    ratios = [on / off for on, off in zip(times[True], times[False])]  # each pair ran at the same time
    ratio = statistics.median(ratios)
    what = (f"distill: digits cohort, {len(LIVE_COHORT)} students x {epochs} epochs, CPU, 1 thread: live files, "
            "progress lines, TensorBoard on")
    return [row(what, "the same job with them off (DYN_LIVE=0, train.tensorboard: false), run beside it",
                statistics.median(times[True]), statistics.median(times[False]), ratio,
                "time ratio (on / off), median of side-by-side pairs", "<= 1.02", ratio <= 1.02,
                students_bit_identical=same, pair_ratios=[round(r, 4) for r in ratios],
                accounted_share=round(statistics.median(watched_s), 4), tensorboard_only_when_on=watched,
                seconds_on=[round(t, 2) for t in times[True]], seconds_off=[round(t, 2) for t in times[False]])]


def measured_pair(commands: list[list[str]]) -> list[tuple[float, str]]:
    """Run processes side by side: each one's wall seconds (start-up included) and its log."""
    import threading

    results: list = [None] * len(commands)

    def one(i: int) -> None:
        seconds, _, log = measured_process(commands[i])
        results[i] = (seconds, log)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(commands))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if any(result is None for result in results):
        raise RuntimeError("a benchmarked process failed (its log is above)")
    return results


# -- workflow --------------------------------------------------------------------------------------
def bench_dag(repeats: int) -> list[dict]:
    import yaml

    snakemake = str(Path(sys.executable).with_name("snakemake"))
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    times: dict[int, list[float]] = {1: [], 5: []}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {}
        for seeds in times:
            config["distill"]["seeds"] = list(range(seeds))
            path = Path(tmp) / f"paper_{seeds}.yaml"
            path.write_text(yaml.safe_dump(config))
            commands[seeds] = [snakemake, "-n", "-q", "--cores", "4", "--configfile", str(path), "-d", tmp, "-s",
                               str(REPO / "workflow" / "Snakefile")]
        run(*commands[1])  # fills the model-depth cache, as any first run
        for _ in range(repeats):  # interleaved, so a change in machine load hits both alike
            for seeds, command in commands.items():
                times[seeds].append(median_time(lambda: run(*command), 1))
    one, five = statistics.median(times[1]), statistics.median(times[5])
    return [row("snakemake -n, config/paper.yaml with 5 seeds", "the same with 1 seed",
                five, one, five / one, "time ratio (5 seeds / 1 seed)", "< 5 s for 5 seeds", five < 5.0)]


# -- main ------------------------------------------------------------------------------------------
def print_table(rows: list[dict]) -> None:
    print(f"{'what':<78} {'ours s':>9} {'base s':>9} {'ratio':>8}  goal        met")
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        print(f"{r['what'][:78]:<78} {r['ours_s']:>9.3f} {r['baseline_s']:>9.3f} {r['ratio']:>8.3f}  "
              f"{r['goal']:<11} {met}")
        print(f"{'   vs ' + r['baseline']:.110}   [{r['ratio_means']}]")
        if "peak_mib_ours" in r:
            print(f"   peak memory: ours {r['peak_mib_ours']} MiB, baseline {r['peak_mib_baseline']} MiB (largest "
                  f"process); students bit-identical: {r['students_bit_identical']}")
        if "seconds_on" in r:
            print(f"   wall s on {r['seconds_on']}, off {r['seconds_off']} (side by side, ratios {r['pair_ratios']}); "
                  f"the jobs' own account: {r['accounted_share']:.2%} of their wall time watching; students "
                  f"bit-identical: {r['students_bit_identical']}; tensorboard/ only when on: "
                  f"{r['tensorboard_only_when_on']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/bench.json")
    parser.add_argument("--capture-arch", default="deit_tiny_patch16_224", help="timm model of the capture section")
    parser.add_argument("--capture-device", default="cpu", help="where the capture section runs its model")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        print(f"bench: error: unknown section(s) {', '.join(unknown)}: valid are {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    calibration = []
    sections = {"metrics": lambda: bench_metrics(args.repeats), "memory": bench_memory,
                "calibration": lambda: calibration.extend(bench_calibration()) or [],
                "capture": lambda: bench_capture(args.repeats, args.capture_arch, device=args.capture_device),
                "train": lambda: bench_train(args.repeats), "cohort": lambda: bench_cohort(row),
                "live": lambda: bench_live(min(args.repeats, 3)), "dag": lambda: bench_dag(args.repeats)}
    rows: list[dict] = []
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    for section in chosen:
        t0 = time.perf_counter()
        for r in sections[section]():
            rows.append({**r, "section": section})
        seconds[section] = time.perf_counter() - t0
        print(f"[{section}: {seconds[section]:.0f} s]", file=sys.stderr)
    print_table(rows)
    for r in calibration:
        print(f"U test: {r['u_rate']:6.1%} U on {r['runs']} draws of {r['what']} (min_rise {r['min_rise']:g})")
    from dyn.atomic import write_json

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
               "numpy": np.__version__, "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                                            / 2**30, 1),
               "load_average_at_end": os.getloadavg()}
    # The sections run now replace theirs in the file; the others keep theirs, each with when and where.
    kept = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    write_json(args.out, {
        "machine": machine,
        "rows": [r for r in kept.get("rows", []) if r["section"] not in chosen] + rows,
        "calibration": calibration if "calibration" in chosen else kept.get("calibration", []),
        "sections": {**kept.get("sections", {}),
                     **{name: {"date": today, "seconds": round(t, 1), "machine": machine}
                        for name, t in seconds.items()}}})
    print(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
