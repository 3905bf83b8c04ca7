# A model's weights: trained here, from the timm hub, a local file or a URL -> safetensors + JSON.


rule fetch:
    output:
        checkpoint="resources/checkpoints/{model}.safetensors",
        info="resources/checkpoints/{model}.json",
    log:
        "results/logs/fetch/{model}.log",
    benchmark:
        "results/benchmarks/fetch/{model}.tsv"
    conda:
        "../envs/dyn.yaml"
    params:
        arch=lambda wc: MODELS[wc.model]["arch"],
        weights=lambda wc: MODELS[wc.model]["weights"],
        epochs=lambda wc: MODELS[wc.model]["epochs"],
        seed=lambda wc: MODELS[wc.model]["seed"],
        evaluate=lambda wc: "--evaluate" if MODELS[wc.model]["evaluate"] else "--no-evaluate",
        dataset=as_json(config["dataset"]),
        train=as_json(config["train"]),
        state=lambda wc: f"results/state/fetch/{wc.model}/last.pt",
        device=config["device"],
        launch=launcher(ONE_GPU),
    # the teacher first: every distillation job waits for it
    priority: lambda wc: 1000 if wc.model == TEACHER else 0
    threads: lambda wc: TRAIN_THREADS if MODELS[wc.model]["weights"] == "train" else 1
    resources:
        gpu=ONE_GPU,
        cpus_per_gpu=RESOURCES["fetch"]["cpus_per_gpu"],
        mem_mb=RESOURCES["fetch"]["mem_mb"],
        runtime=RESOURCES["fetch"]["runtime"],
    shell:
        "{params.launch} fetch --name {wildcards.model} --arch {params.arch:q} --weights {params.weights:q}"
        " --epochs {params.epochs} --seed {params.seed} {params.evaluate} --out {output.checkpoint}"
        " --state {params.state} --dataset {params.dataset:q} --train {params.train:q}"
        " --device {params.device} --threads {threads} > {log} 2>&1"
