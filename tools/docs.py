"""Write the measured tables of the docs anew from the files the commands write: `make docs` (after
`make run`), and `make bench` at its end.

A generated block in a markdown file is

    <!-- make docs: GENERATOR -->
    ...
    <!-- end make docs -->

with GENERATOR one of GENERATORS: `bench SECTIONS` (rows of results/bench.json, `benchmarks/bench.py`),
`calibration` (the U test's rates, the same file), `table1` (results/table1.md, `dyn report table-md`),
`phases` (each model's results/metrics/<model>/phases.nc, `dyn metrics phases`). A block whose file is
missing stays as it is, and the command says so.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- make docs: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end make docs -->)", re.S)


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.3g} s" if value < 100 else f"{value:.0f} s"


def _machine(machine: dict) -> str:
    return (f"{machine.get('cpus')} CPUs ({machine.get('processor')}), {machine.get('memory_gib')} GiB, "
            f"torch {machine.get('torch')}, numpy {machine.get('numpy')}")


def bench(results: Path, sections: str) -> str | None:
    """One row per measurement of the given sections, then when and where each section was measured."""
    path = results / "bench.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    wanted = sections.split(",")
    rows = sorted((r for r in data["rows"] if r["section"] in wanted), key=lambda r: wanted.index(r["section"]))
    lines = ["| what (as the workflow runs it) | baseline, timed in the same run | ours | baseline | ratio | goal "
             "| met |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        unit = (lambda v: f"{v:,.0f} MiB") if r["section"] == "memory" else _seconds
        ratio = f"{r['ratio']:.3g}, {r['ratio_means']}"
        if "pair_ratios" in r:
            ratio += (f"; side-by-side pairs {', '.join(f'{p:.3f}' for p in r['pair_ratios'])}; the jobs' own "
                      f"account of watching: {r['accounted_share']:.1%} of their wall time")
        if "peak_mib_ours" in r:
            ratio += f"; peak memory {r['peak_mib_ours']:,} MiB against {r['peak_mib_baseline']:,} MiB"
        met = {True: "yes", False: "no", None: "-"}[r["met"]]
        lines.append(f"| {r['what']} | {r['baseline']} | {unit(r['ours_s'])} | {unit(r['baseline_s'])} | {ratio} | "
                     f"{r['goal']} | {met} |")
    measured = data.get("sections", {})
    for section in wanted:
        if section in measured:
            m = measured[section]
            lines.append(f"\n`{section}`: measured {m['date']} in {m['seconds']:.0f} s on {_machine(m['machine'])}.")
    return "\n".join(lines) + "\n"


def calibration(results: Path) -> str | None:
    path = results / "bench.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    if not data.get("calibration"):
        return None
    rises = sorted({r["min_rise"] for r in data["calibration"]})
    rates: dict[str, dict] = {}
    for r in data["calibration"]:  # one row per profile, one column per u_min_rise
        rates.setdefault(r["what"], {})[r["min_rise"]] = f"{r['u_rate']:.1%} of {r['runs']:,}"
    lines = ["| profile | " + " | ".join(f"called a U at `u_min_rise` {rise:g}" for rise in rises) + " |",
             "| --- |" + " --- |" * len(rises)]
    lines += [f"| {what} | " + " | ".join(row.get(rise, "") for rise in rises) + " |" for what, row in rates.items()]
    m = data.get("sections", {}).get("calibration")
    if m:
        lines.append(f"\nMeasured {m['date']} in {m['seconds']:.0f} s (`benchmarks/bench.py --only calibration`).")
    return "\n".join(lines) + "\n"


def table1(results: Path) -> str | None:
    """The table of results/table1.md as `dyn report` wrote it, and its note."""
    path = results / "table1.md"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    return "\n".join(lines) + "\n"


def phases(results: Path) -> str | None:
    """Each analysed model's verdict and low-pass scores, from its phases.nc."""
    import xarray as xr

    files = sorted((results / "metrics").glob("*/phases.nc"))
    files = [f for f in files if "@" not in f.parent.name]  # the training-image copies of `auto` teachers
    if not files:
        return None
    lines = ["| model | verdict (`dyn metrics phases`) | low-pass score | its permuted control |",
             "| --- | --- | --- | --- |"]
    for path in files:
        with xr.open_dataset(path) as ds:
            low, perm = ds["lowpass"].values, ds["lowpass_perm"].values
            scale = "" if ds.attrs["entropy_scale"] == "bits" else f"; entropy in {ds.attrs['entropy_scale']}"
            lines.append(f"| `{ds.attrs['arch']}` ({ds.sizes['layer']} {ds.attrs['layer_kind']}s, "
                         f"{ds.attrs['n_images']} images{scale}) | {ds.attrs['verdict']} | {low.min():.3f} to "
                         f"{low.max():.3f} | {perm.min():.3f} to {perm.max():.3f} |")
    return "\n".join(lines) + "\n"


GENERATORS = {"bench": bench, "calibration": calibration, "table1": table1, "phases": phases}


def render(text: str, results: Path, missing: list[str]) -> str:
    """`text` with each generated block written anew (or left, named in `missing`, without its file)."""
    def replace(match):
        name, *args = match["spec"].split()
        if name not in GENERATORS:
            raise SystemExit(f"docs: unknown generator '{name}' in '<!-- make docs: {match['spec']} -->': valid are "
                             f"{', '.join(GENERATORS)}")
        body = GENERATORS[name](results, *args)
        if body is None:
            missing.append(match["spec"])
            return match[0]
        return f"{match[1]}\n{body}\n{match[4]}"

    return BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/docs.py", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(REPO / "results"), type=Path)
    parser.add_argument("files", nargs="*", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    missing: list[str] = []
    for path in args.files:
        text = path.read_text()
        new = render(text, args.results, missing)
        if new != text:
            path.write_text(new)
            print(f"docs: wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    for spec in dict.fromkeys(missing):
        print(f"docs: left '{spec}' as it was: its file is not in {args.results} yet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
