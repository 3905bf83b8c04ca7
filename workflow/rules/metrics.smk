# The three per-layer lenses, each streamed over a capture file; grouped with the capture (capture.smk).


rule spectrum:
    input:
        "results/activations/{model}.nc",
    output:
        nc="results/metrics/{model}/spectrum.nc",
        csv="results/metrics/{model}/spectrum.csv",
    log:
        "results/logs/metrics/{model}/spectrum.log",
    group:
        "analysis"
    conda:
        "../envs/dyn.yaml"
    params:
        seed=ANALYSIS["control_seed"],
    threads: 1
    shell:
        "dyn metrics spectrum --capture {input} --out {output.nc} --seed {params.seed} --threads {threads}"
        " > {log} 2>&1"


rule entropy:
    input:
        "results/activations/{model}.nc",
    output:
        nc="results/metrics/{model}/entropy.nc",
        csv="results/metrics/{model}/entropy.csv",
    log:
        "results/logs/metrics/{model}/entropy.log",
    group:
        "analysis"
    conda:
        "../envs/dyn.yaml"
    params:
        bins=ANALYSIS["entropy_bins"],
        entropy_range=ANALYSIS["entropy_range"],
        seed=ANALYSIS["control_seed"],
    threads: 1
    shell:
        "dyn metrics entropy --capture {input} --out {output.nc} --bins {params.bins}"
        " --entropy-range {params.entropy_range} --seed {params.seed} --threads {threads} > {log} 2>&1"


rule magnitude:
    input:
        "results/activations/{model}.nc",
    output:
        nc="results/metrics/{model}/magnitude.nc",
        csv="results/metrics/{model}/magnitude.csv",
    log:
        "results/logs/metrics/{model}/magnitude.log",
    group:
        "analysis"
    conda:
        "../envs/dyn.yaml"
    threads: 1
    shell:
        "dyn metrics magnitude --capture {input} --out {output.nc} --threads {threads} > {log} 2>&1"


rule phases:
    input:
        entropy="results/metrics/{model}/entropy.nc",
        magnitude="results/metrics/{model}/magnitude.nc",
        spectrum="results/metrics/{model}/spectrum.nc",
    output:
        csv=report(
            "results/metrics/{model}/phases.csv",
            caption="../report/phases_table.rst",
            category="Analysis",
            labels={"table": "phases {model}"},
        ),
        nc="results/metrics/{model}/phases.nc",
    log:
        "results/logs/metrics/{model}/phases.log",
    benchmark:
        "results/benchmarks/phases/{model}.tsv"
    group:
        "analysis"
    conda:
        "../envs/dyn.yaml"
    params:
        min_rise=ANALYSIS["u_min_rise"],
        alpha=ANALYSIS["u_alpha"],
        seed=ANALYSIS["control_seed"],
    shell:
        "dyn metrics phases --entropy {input.entropy} --magnitude {input.magnitude} --spectrum {input.spectrum}"
        " --min-rise {params.min_rise} --alpha {params.alpha} --seed {params.seed} --out {output.csv} > {log} 2>&1"
