"""`dyn report ...`: Table 1, the phases summary and the figures, from the files the other steps wrote."""
from __future__ import annotations

import logging

import click

from .cli_common import setup
from .errors import UserError

log = logging.getLogger("dyn")


@click.group()
def report():
    """Assemble Table 1 and the figures."""


@report.command("table")
@click.argument("summaries", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def report_table(summaries, out):
    """Table 1 (CSV) from run summary.json files."""
    setup(None)
    from .report.tables import write_table1

    rows = write_table1(summaries, out)
    log.info("wrote %s (%d runs)", out, len(rows))


formats_option = click.option("--formats", required=True,
                              help="Comma-separated figure formats (png, pdf, svg).")


def _formats(value: str) -> list[str]:
    formats = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise UserError(f"bad figure format(s) {', '.join(bad) or '(none)'}: valid formats are png, pdf, svg")
    return formats


@report.command("profiles")
@click.option("--entropy", "entropy_files", multiple=True, required=True, type=click.Path(exists=True))
@click.option("--magnitude", "magnitude_files", multiple=True, required=True, type=click.Path(exists=True))
@click.option("--spectrum", "spectrum_files", multiple=True, type=click.Path(exists=True),
              help="Spectrum .nc files: adds a panel of each model's average frequency intensity.")
@click.option("--out", required=True, help="Output path without extension.")
@formats_option
def report_profiles(entropy_files, magnitude_files, spectrum_files, out, formats):
    """Per-layer entropy, magnitude (and frequency intensity) curves of several models."""
    from .report.figures import profiles

    profiles(entropy_files, magnitude_files, out, _formats(formats), spectrum_files=spectrum_files)


@report.command("phases")
@click.argument("phases_files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, help="Output path without extension.")
@formats_option
def report_phases(phases_files, out, formats):
    """Low-pass score and entropy against relative depth of several models (their phases.nc)."""
    from .report.figures import phases

    phases(phases_files, out, _formats(formats))


@report.command("phases-summary")
@click.argument("phases_files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Markdown file to write.")
def report_phases_summary(phases_files, out):
    """Each model's phases in words (Markdown), read only from its phases.nc."""
    setup(None)
    from .report.summary import write_phases_summary

    write_phases_summary(phases_files, out)
    log.info("wrote %s (%d models)", out, len(phases_files))


@report.command("spectrum")
@click.option("--spectrum", "spectrum_file", required=True, type=click.Path(exists=True))
@click.option("--out", required=True, help="Output path without extension.")
@formats_option
def report_spectrum(spectrum_file, out, formats):
    """Layer x frequency heatmap of one model's channel spectrum."""
    from .report.figures import spectrum_heatmap

    spectrum_heatmap(spectrum_file, out, _formats(formats))


@report.command("evolution")
@click.argument("evolution_files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, help="Output path without extension.")
@formats_option
def report_evolution(evolution_files, out, formats):
    """The student's entropy profile over training, one panel per run."""
    from .report.figures import evolution

    evolution(evolution_files, out, _formats(formats))


@report.command("curves")
@click.argument("summaries", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, help="Output path without extension.")
@click.option("--metric", type=click.Choice(["top1", "loss"]), default="top1", show_default=True,
              help="Validation top-1 or the training loss.")
@formats_option
def report_curves(summaries, out, metric, formats):
    """Top-1 (or the training loss) against epoch of each grid point, from run summary.json files (and the
    log.csv beside each), with the authors' curve where the setup is the paper's."""
    from .report.figures import curves

    curves(summaries, out, _formats(formats), metric)
