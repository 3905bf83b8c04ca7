# Table 1 and the figures, each marked for the Snakemake report with a caption (workflow/report/*.rst).


rule table1:
    input:
        expand("results/runs/{run}/summary.json", run=RUNS),
    output:
        table=report("results/table1.csv", caption="../report/table1.rst", category="Table 1"),
        summary=report("results/table1_summary.csv", caption="../report/table1_summary.rst", category="Table 1"),
        markdown="results/table1.md",
    log:
        "results/logs/report/table1.log",
    conda:
        "../envs/dyn.yaml"
    shell:
        needs_distill("dyn report table {input} --out {output.table} > {log} 2>&1")


rule figure_profiles:
    input:
        entropy=expand("results/metrics/{model}/entropy.nc", model=ANALYSIS["models"]),
        magnitude=expand("results/metrics/{model}/magnitude.nc", model=ANALYSIS["models"]),
        spectrum=expand("results/metrics/{model}/spectrum.nc", model=ANALYSIS["models"]),
    output:
        reported("results/figures/profiles.{fmt}", "profiles", "Analysis", "../report/profiles.rst"),
    log:
        "results/logs/report/profiles.log",
    conda:
        "../envs/dyn.yaml"
    params:
        entropy=lambda wc, input: " ".join(f"--entropy {p}" for p in input.entropy),
        magnitude=lambda wc, input: " ".join(f"--magnitude {p}" for p in input.magnitude),
        spectrum=lambda wc, input: " ".join(f"--spectrum {p}" for p in input.spectrum),
        formats=",".join(FORMATS),
    shell:
        "dyn report profiles {params.entropy} {params.magnitude} {params.spectrum} --out results/figures/profiles"
        " --formats {params.formats} > {log} 2>&1"


rule figure_phases:
    input:
        expand("results/metrics/{model}/phases.nc", model=ANALYSIS["models"]),
    output:
        reported("results/figures/phases.{fmt}", "phases", "Analysis", "../report/phases.rst"),
    log:
        "results/logs/report/phases.log",
    conda:
        "../envs/dyn.yaml"
    params:
        formats=",".join(FORMATS),
        min_rise=ANALYSIS["u_min_rise"],  # for the caption: what the U test the rings stand for tested against
        alpha=ANALYSIS["u_alpha"],
    shell:
        "dyn report phases {input} --out results/figures/phases --formats {params.formats} > {log} 2>&1"


rule phases_summary:
    input:
        expand("results/metrics/{model}/phases.nc", model=ANALYSIS["models"]),
    output:
        report("results/phases.md", caption="../report/phases_summary.rst", category="Analysis",
               labels={"table": "phases summary"}),
    log:
        "results/logs/report/phases_summary.log",
    conda:
        "../envs/dyn.yaml"
    shell:
        "dyn report phases-summary {input} --out {output} > {log} 2>&1"


rule figure_spectrum:
    input:
        "results/metrics/{model}/spectrum.nc",
    output:
        reported("results/figures/spectrum_{{model}}.{fmt}", "spectrum {model}", "Analysis",
                 "../report/spectrum.rst"),
    log:
        "results/logs/report/spectrum_{model}.log",
    conda:
        "../envs/dyn.yaml"
    params:
        formats=",".join(FORMATS),
    shell:
        "dyn report spectrum --spectrum {input} --out results/figures/spectrum_{wildcards.model}"
        " --formats {params.formats} > {log} 2>&1"


rule figure_evolution:
    input:
        expand("results/runs/{run}/evolution.nc", run=FIRST_SEED_RUNS),
    output:
        reported("results/figures/evolution.{fmt}", "evolution", "Distillation", "../report/evolution.rst"),
    log:
        "results/logs/report/evolution.log",
    conda:
        "../envs/dyn.yaml"
    params:
        formats=",".join(FORMATS),
    shell:
        needs_distill("dyn report evolution {input} --out results/figures/evolution --formats {params.formats} > {log} 2>&1")


rule figure_curves:
    input:
        summaries=expand("results/runs/{run}/summary.json", run=RUNS),
        logs=expand("results/runs/{run}/log.csv", run=RUNS),  # read beside each summary
    output:
        reported("results/figures/curves.{fmt}", "curves", "Distillation", "../report/curves.rst"),
        reported("results/figures/curves_loss.{fmt}", "curves_loss", "Distillation", "../report/curves_loss.rst"),
    log:
        "results/logs/report/curves.log",
    conda:
        "../envs/dyn.yaml"
    params:
        formats=",".join(FORMATS),
    shell:
        needs_distill("(dyn report curves {input.summaries} --out results/figures/curves --formats {params.formats}"
                      " && dyn report curves {input.summaries} --metric loss --out results/figures/curves_loss"
                      " --formats {params.formats}) > {log} 2>&1")
