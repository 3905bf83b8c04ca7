# Table 1 and the figures.


rule table1:
    input:
        expand("results/runs/{run}/summary.json", run=RUNS),
    output:
        "results/table1.csv",
    log:
        "results/logs/report/table1.log",
    conda:
        "../envs/dyn.yaml"
    shell:
        "dyn report table {input} --out {output} > {log} 2>&1"


rule figure_profiles:
    input:
        entropy=expand("results/metrics/{model}/entropy.nc", model=ANALYSIS["models"]),
        magnitude=expand("results/metrics/{model}/magnitude.nc", model=ANALYSIS["models"]),
    output:
        expand("results/figures/profiles.{fmt}", fmt=FORMATS),
    log:
        "results/logs/report/profiles.log",
    conda:
        "../envs/dyn.yaml"
    params:
        entropy=lambda wc, input: " ".join(f"--entropy {p}" for p in input.entropy),
        magnitude=lambda wc, input: " ".join(f"--magnitude {p}" for p in input.magnitude),
        formats=",".join(FORMATS),
    shell:
        "dyn report profiles {params.entropy} {params.magnitude} --out results/figures/profiles"
        " --formats {params.formats} > {log} 2>&1"


rule figure_spectrum:
    input:
        "results/metrics/{model}/spectrum.nc",
    output:
        expand("results/figures/spectrum_{{model}}.{fmt}", fmt=FORMATS),
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
        expand("results/runs/{run}/evolution.nc", run=RUNS),
    output:
        expand("results/figures/evolution.{fmt}", fmt=FORMATS),
    log:
        "results/logs/report/evolution.log",
    conda:
        "../envs/dyn.yaml"
    params:
        formats=",".join(FORMATS),
    shell:
        "dyn report evolution {input} --out results/figures/evolution --formats {params.formats} > {log} 2>&1"
