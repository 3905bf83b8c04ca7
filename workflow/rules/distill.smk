# One student per grid point (method, layers, beta, epochs, seed); the run id is the wildcard.


rule distill:
    input:
        teacher=checkpoint_path(TEACHER),
        # `auto` runs align the teacher's compression phase: its phases (capturing the teacher if needed)
        phases=lambda wc: teacher_phases(RUNS[wc.run]),
    output:
        summary="results/runs/{run}/summary.json",
        student="results/runs/{run}/student.safetensors",
        log="results/runs/{run}/log.csv",
        evolution="results/runs/{run}/evolution.nc",
    log:
        "results/logs/distill/{run}.log",
    benchmark:
        "results/benchmarks/distill/{run}.tsv"
    conda:
        "../envs/dyn.yaml"
    params:
        spec=lambda wc: RUNS[wc.run],
        phases=lambda wc, input: f"--teacher-phases {input.phases}" if input.phases else "",
        keep=config["distill"]["lowpass_keep"],
        teacher_arch=MODELS[TEACHER]["arch"],
        student_arch=MODELS[STUDENT]["arch"],
        dataset=as_json(config["dataset"]),
        train=as_json(config["train"]),
        state=lambda wc: f"results/state/{wc.run}/last.pt",
        num_images=ANALYSIS["num_images"],
        sample=ANALYSIS["sample"],
        sample_seed=ANALYSIS["sample_seed"],
        bins=ANALYSIS["entropy_bins"],
        every=config["distill"]["evolution_every"],
        device=config["device"],
        launch=launcher(RUN_GPUS),
    threads: config["distill"]["threads"]
    resources:
        gpu=RUN_GPUS,
        cpus_per_gpu=RESOURCES["distill"]["cpus_per_gpu"],
        mem_mb=RESOURCES["distill"]["mem_mb"],
        runtime=RESOURCES["distill"]["runtime"],
    shell:
        "{params.launch} distill --method {params.spec.method} --layers {params.spec.layers:q} --beta {params.spec.beta}"
        " --epochs {params.spec.epochs} --seed {params.spec.seed} {params.phases} --lowpass-keep {params.keep}"
        " --teacher-arch {params.teacher_arch:q} --teacher-checkpoint {input.teacher}"
        " --student-arch {params.student_arch:q} --out-dir results/runs/{wildcards.run} --state {params.state}"
        " --num-images {params.num_images} --sample {params.sample} --sample-seed {params.sample_seed}"
        " --bins {params.bins} --evolution-every {params.every}"
        " --dataset {params.dataset:q} --train {params.train:q} --device {params.device}"
        " --threads {threads} > {log} 2>&1"
