"""The options the workflow's rules always pass to `dyn`, at the config schema's defaults: what the tests and
benchmarks put before their own when they call `dyn` as a rule would (the CLI has no defaults for them)."""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def schema_defaults(config: dict | None = None) -> dict:
    """`config` (by default the smallest with every section: one model, analysed, distilled into itself)
    with the schema's defaults filled in, as the workflow sees it."""
    from dyn.workflow.config import validate

    config = copy.deepcopy(config or {"models": {"m": {"arch": "cait_digits", "weights": "train", "epochs": 1}},
                                      "analysis": {"models": ["m"]},
                                      "distill": {"teacher": "m", "student": "m", "runs": [{"method": "softkd",
                                                                                            "epochs": 1}]}})
    return validate(config, REPO / "workflow" / "schemas" / "config.schema.yaml")


@functools.lru_cache(maxsize=1)
def _defaults_json() -> str:
    return json.dumps(schema_defaults())


def rule_options(command: str) -> list[str]:
    """The options a workflow rule always passes to `dyn COMMAND` (capture, fetch, distill, metrics entropy,
    metrics spectrum, metrics magnitude, metrics phases), at the schema's defaults. A test puts its own
    after them: click takes an option's last value."""
    config = json.loads(_defaults_json())
    analysis, dataset = config["analysis"], json.dumps(config["dataset"])
    common = ["--dataset", dataset, "--device", "auto", "--threads", "1"]
    sample = ["--sample", analysis["sample"], "--sample-seed", str(analysis["sample_seed"]),
              "--transform", analysis["transform"]]
    entropy = ["--bins", str(analysis["entropy_bins"]), "--entropy-range", analysis["entropy_range"]]
    seed = ["--seed", str(analysis["control_seed"])]
    options = {
        "capture": ["--num-images", str(analysis["num_images"]), "--dtype", analysis["dtype"],
                    "--samples-per-chunk", str(analysis["samples_per_chunk"]),
                    "--compression-level", str(analysis["compression_level"]), "--split", "val", *sample, *common],
        "fetch": ["--epochs", "0", "--seed", "0", "--evaluate", "--train", json.dumps(config["train"]), *common],
        "distill": ["--num-images", str(analysis["num_images"]), *entropy,
                    "--evolution-every", str(config["distill"]["evolution_every"]), *sample,
                    "--train", json.dumps(config["train"]), *common],
        "metrics entropy": [*entropy, *seed, "--threads", "1"],
        "metrics spectrum": [*seed, "--threads", "1"],
        "metrics magnitude": ["--threads", "1"],
        "metrics phases": ["--min-rise", str(analysis["u_min_rise"]), "--alpha", str(analysis["u_alpha"]), *seed],
    }
    return options[command]


def rule_args(args: list) -> list:
    """`args` of a `dyn` command with the options its rule always passes put first, at the schema's
    defaults (rule_options); the test's own come after and win."""
    args = [str(a) for a in args]
    words = 2 if args[0] == "metrics" else 1
    if args[0] not in ("capture", "fetch", "distill", "metrics"):
        return args
    return [*args[:words], *rule_options(" ".join(args[:words])), *args[words:]]
