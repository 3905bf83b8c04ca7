"""The `dyn` command: one subcommand per workflow step. Parsing only; the work is in the library."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .analysis.metrics import METRICS
from .cli_common import (bins_option, dataset_option, device_option, entropy_range_option, progress,
                         sample_options, setup, threads_option, train_option, with_options)
from .cli_report import report
from .errors import NonFiniteLoss, UserError

log = logging.getLogger("dyn")


@click.group()
@click.version_option(package_name="dyn")
def cli():
    """Distillation Dynamics: per-layer analysis and feature distillation of vision transformers."""


cli.add_command(report)  # `dyn report ...` (cli_report.py)


def _given(ctx, param, value):
    """A click callback: a flag pair (--x/--no-x) that must be given one way or the other."""
    if value is None:
        raise click.MissingParameter(param=param)
    return value


@cli.command()
@click.option("--name", required=True, help="Model key (as in the config).")
@click.option("--arch", required=True, help="timm model name.")
@click.option("--weights", required=True, help="train, hub, a local file or an http(s) URL.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .safetensors path.")
@click.option("--epochs", type=click.IntRange(min=0), required=True, help="Epochs when --weights train.")
@click.option("--seed", type=int, required=True)
@click.option("--evaluate/--no-evaluate", default=None, callback=_given,
              help="Measure validation accuracy, or not (one of them is needed).")
@click.option("--state", type=click.Path(dir_okay=False), default=None, help="Resumable training state file.")
@dataset_option
@train_option
@device_option
@threads_option
def fetch(name, arch, weights, out, epochs, seed, evaluate, state, dataset_cfg, train_cfg, device, threads):
    """Make resources/checkpoints/<model>.safetensors and its JSON (source, sha256, val accuracy)."""
    setup(threads)
    from .training.fetch import fetch as run_fetch
    from .training.recipe import Recipe

    run_fetch(name, arch, weights, out, dataset_cfg, Recipe.from_dict(train_cfg), epochs=epochs, seed=seed,
              device=device, evaluate_model=evaluate, state_path=Path(state) if state else None)


@cli.command()
@click.option("--name", required=True, help="Model key (as in the config).")
@click.option("--arch", required=True, help="timm model name, hf-hub: id or package.module:function.")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="Fetched .safetensors.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .nc path.")
@click.option("--num-images", type=click.IntRange(min=1), required=True)
@click.option("--dtype", type=click.Choice(["float32", "float16"]), required=True)
@click.option("--samples-per-chunk", type=click.IntRange(min=1), required=True)
@click.option("--compression-level", type=click.IntRange(0, 9), required=True,
              help="zlib level of the NetCDF file (0: uncompressed).")
@click.option("--split", type=click.Choice(["val", "train"]), required=True,
              help="The split the images come from: val (the analysis) or train (what `auto` layers are chosen on).")
@click.option("--layers", "layer_globs", multiple=True, help="Module-name glob of the layers (repeatable, e.g. "
              "'blocks.*'): forward hooks on the modules it selects; none: timm's forward_intermediates.")
@with_options(sample_options)
@dataset_option
@device_option
@threads_option
def capture(name, arch, checkpoint, out, num_images, dtype, samples_per_chunk, compression_level, split, layer_globs,
            sample, sample_seed, transform, dataset_cfg, device, threads):
    """Write the per-layer activations of N fixed images (of the validation split by default) to NetCDF."""
    setup(threads)
    from .analysis.capture import capture_checkpoint

    capture_checkpoint(name, arch, checkpoint, out, dataset_cfg, num_images, dtype, samples_per_chunk,
                       compression_level, device, sample, sample_seed, progress=progress(), transform=transform,
                       split=split, layers=list(layer_globs) or None)
    log.info("wrote %s", out)


@cli.group()
def metrics():
    """Per-layer metrics of a capture file, and the phases they show."""


seed_option = click.option("--seed", type=int, required=True,
                           help="Seed of the controls: the channel orders (spectrum, entropy) and the split of "
                                "the images (phases).")


def _metric_command(name: str):
    @click.option("--capture", "capture_path", required=True, type=click.Path(dir_okay=False), help="Capture .nc.")
    @click.option("--out", required=True, type=click.Path(dir_okay=False),
                  help="Output .nc (a .csv is written beside).")
    @click.option("--threads", type=click.IntRange(min=1), required=True, help="Threads of the spectrum's FFT.")
    def command(capture_path, out, threads, **controls):  # entropy: --bins, --entropy-range; --seed
        setup(None)  # no torch here
        from .analysis.metric_files import write_metric

        write_metric(capture_path, name, out, progress=progress(), workers=threads,
                     **{"permutation_seed" if key == "seed" else key: value for key, value in controls.items()})
        log.info("wrote %s", out)

    # The options each metric uses: the entropy's bins and range; the channel-order controls' seed.
    options = {"spectrum": [seed_option], "entropy": [bins_option, entropy_range_option, seed_option]}
    return metrics.command(name, help=f"The per-layer {name} of a capture file.")(
        with_options(options.get(name, []))(command))


for _name in METRICS:
    _metric_command(_name)


@metrics.command("phases")
@click.option("--entropy", "entropy_path", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--magnitude", "magnitude_path", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--spectrum", "spectrum_path", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .csv (a .nc is written beside).")
@click.option("--min-rise", type=click.FloatRange(min=0), required=True,
              help="Smallest rise (bits) of each end above the bottleneck that counts towards a U.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), required=True,
              help="Level of each one-sided rise test: the U's false-positive rate.")
@seed_option
def metrics_phases(entropy_path, magnitude_path, spectrum_path, out, min_rise, alpha, seed):
    """Whether the entropy profile is a U (split-sample test), its bottleneck, each layer's phase and the
    channel-order control of its low-pass score."""
    setup(None)
    from .analysis.phases import write_phases

    write_phases(entropy_path, magnitude_path, spectrum_path, out, min_rise, alpha, seed)
    log.info("wrote %s", out)


@cli.command()
@click.option("--runs", "runs_json", required=True,
              help='The students as a JSON list of run specs (dyn.grid.runs.RunSpec.to_dict), e.g. \'[{"method": '
                   '"softkd", "epochs": 30}, {"method": "spectral", "layers": "First1", "beta": 0.2, "epochs": 30}]\'; '
                   'also "seed" (one for all), and "options" (the method\'s: lowpass_keep; pca_keep, pca_images).')
@click.option("--teacher-phases", type=click.Path(dir_okay=False), default=None,
              help="The teacher's phases.csv, for the layer specs auto and autoK.")
@click.option("--teacher-arch", required=True)
@click.option("--teacher-checkpoint", required=True, type=click.Path(dir_okay=False))
@click.option("--student-arch", required=True)
@click.option("--teacher-layers", multiple=True, help="Module-name glob of the teacher's layers (repeatable).")
@click.option("--student-layers", multiple=True, help="Module-name glob of the student's layers (repeatable).")
@click.option("--runs-dir", required=True, type=click.Path(file_okay=False),
              help="Each run writes <runs-dir>/<run id>/.")
@click.option("--state", type=click.Path(dir_okay=False), default=None,
              help="Resumable training state file (of the whole cohort).")
@click.option("--finished-dir", type=click.Path(file_okay=False), default=None,
              help="Keep each finished run here, and restore instead of training a run kept under the same "
                   "configuration, code and library versions.")
@click.option("--num-images", type=click.IntRange(min=1), required=True,
              help="Fixed validation images for the entropy snapshots.")
@bins_option
@click.option("--evolution-every", type=click.IntRange(min=0), required=True)
@entropy_range_option
@with_options(sample_options)
@dataset_option
@train_option
@device_option
@threads_option
def distill(runs_json, teacher_phases, teacher_arch, teacher_checkpoint, student_arch, teacher_layers, student_layers,
            runs_dir, state, finished_dir, num_images, bins, evolution_every, entropy_range, sample, sample_seed,
            transform, dataset_cfg, train_cfg, device, threads):
    """Train a cohort of students (SoftKD, SpectralKD, ProjectorKD, low-pass or PCA SpectralKD) on one data
    stream and one teacher forward, or one student, and write each run's directory."""
    setup(threads)
    from .training.distill import Snapshots, distill as run_distill
    from .training.recipe import Recipe
    from .grid.runs import runs_from_json

    specs = runs_from_json(runs_json)
    snapshots = Snapshots(num_images, bins, evolution_every, sample, sample_seed, entropy_range, transform)
    summaries = run_distill(specs, teacher_arch, teacher_checkpoint, student_arch, dataset_cfg,
                            Recipe.from_dict(train_cfg), [Path(runs_dir) / spec.run_id for spec in specs],
                            state_path=state, snapshots=snapshots, device=device, teacher_phases=teacher_phases,
                            finished_dir=finished_dir, teacher_layers=teacher_layers, student_layers=student_layers)
    for summary in summaries or []:  # None on the other processes of a data-parallel run
        log.info("run %s: top1 %.2f top5 %.2f", summary["run"], summary["top1"], summary["top5"])


@cli.command("status")
@click.argument("results_dir", default="results", type=click.Path(file_okay=False))
@click.option("--watch", type=click.FloatRange(min=0.1), is_flag=False, flag_value=10.0, default=None,
              metavar="[SECONDS]", help="Print the table again every SECONDS (10 without a value) until Ctrl-C; "
                                        "give RESULTS_DIR before it.")
@click.option("--count", type=click.IntRange(min=1), default=None, hidden=True, help="Stop watching after N tables.")
def status_command(results_dir, watch, count):
    """Every run of RESULTS_DIR (default: results): epochs, top-1, images/s, finished, running, stopped or
    failed, the time left, and whether a rerun would restore a finished run or train it again, and why."""
    from .status import watch as show  # no torch: quick, and safe beside a running job

    try:
        show(results_dir, watch, count)
    except KeyboardInterrupt:  # the way out of --watch
        click.echo()


@cli.command("gpu-run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--gpus", type=click.IntRange(min=0), required=True, help="GPUs the command needs.")
@click.option("--pool", type=click.Path(file_okay=False), default=None,
              help="Folder of the per-GPU lock files (default: one per user in the temp folder).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def gpu_run(gpus, pool, command):
    """Run COMMAND on free GPUs of this machine: take slots, set CUDA_VISIBLE_DEVICES, hold them till it ends."""
    setup(None)
    from .workflow.gpu_slots import run_on_free_gpus

    sys.exit(run_on_free_gpus(gpus, command, Path(pool) if pool else None))


@cli.command("check-config")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--schema", type=click.Path(dir_okay=False), default="workflow/schemas/config.schema.yaml",
              show_default=True)
@click.option("--models/--no-models", default=True, help="Also check model names and layer specs against depths.")
@click.option("--target", "targets", multiple=True, help="A file to be built (results/table1.csv): the config must "
              "have the sections it needs.")
def check_config(config_file, schema, models, targets):
    """Validate a workflow config and list its distillation runs."""
    from .workflow.config import check_file

    for spec in check_file(config_file, schema, models, targets):
        click.echo(spec.run_id)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes end with one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except UserError as error:
        # One line, also for an error that a DataLoader worker raised (torch re-raises it with the
        # worker's traceback in the message: its last line is the original one).
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        click.echo(f"dyn: error: {message.removeprefix('dyn.errors.UserError: ')}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("dyn: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        # Usage mistakes (unknown option, bad value): the one-line message, not the usage block.
        click.echo(f"dyn: error: {error.format_message()}", err=True)
        sys.exit(2)
    except NonFiniteLoss as error:
        # Diverged runs: one line naming each with its epoch and step; their last good state is kept.
        click.echo(f"dyn: error: {error}", err=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
