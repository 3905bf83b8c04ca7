"""What the `dyn` subcommands share: their logging, and the options several of them take."""
from __future__ import annotations

import json
import logging
import sys

import click


def json_object(ctx, param, value):
    """A click callback: the option's JSON object (an empty one when absent), or a one-line usage error."""
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not valid JSON ({error.msg})") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object")
    return parsed


def setup(threads: int | None) -> None:
    """Log lines to stderr (each job's log file); torch's CPU threads where given."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if threads:
        import torch

        torch.set_num_threads(threads)


def progress() -> bool:
    """A progress bar only on a terminal: a job's log file gets progress lines instead."""
    return sys.stderr.isatty()


# The options the workflow's rules always pass are required and have no default here: each value's default
# lives once, in the config schema (workflow/schemas/config.schema.yaml), which names the same keys.
dataset_option = click.option("--dataset", "dataset_cfg", callback=json_object, required=True,
                              help='The config\'s dataset section as JSON, e.g. \'{"name": "digits"}\' '
                                   '(the schema fills in the rest).')
train_option = click.option("--train", "train_cfg", callback=json_object, required=True,
                            help="The config's train section as JSON, every key (as the schema fills it in).")
threads_option = click.option("--threads", type=click.IntRange(min=1), required=True, help="CPU threads for torch.")
sample_options = [
    click.option("--sample", type=click.Choice(["stratified", "first"]), required=True,
                 help="How the fixed validation images are chosen: round-robin over classes, or the first N."),
    click.option("--sample-seed", type=int, required=True, help="Seed of the stratified choice."),
    click.option("--transform", type=click.Choice(["model", "imagenet"]), required=True,
                 help="The images' transform: each model's own timm evaluation transform, or the authors' "
                      "(Resize 256 bilinear, CenterCrop 224, ImageNet mean and std)."),
]
entropy_range_option = click.option(
    "--entropy-range", type=click.Choice(["global", "vector"]), required=True,
    help="The entropy's bins span the min..max of all layers and images (global: the authors' code) or each "
         "channel vector's own.")
bins_option = click.option("--bins", type=click.IntRange(min=1), required=True, help="Entropy histogram bins.")


def with_options(options):
    """A decorator applying several click options in their order."""
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function
    return decorate
device_option = click.option("--device", required=True, help="auto, cpu, cuda or cuda:N.")
