# Activations of N fixed validation images, every layer, into NetCDF (`<key>@train`: of training images).
# In the group `analysis` with the metric jobs of the same model: on a cluster the four run as one job
# (local runs ignore groups).


rule capture:
    input:
        checkpoint=lambda wc: checkpoint_path(model_key(wc.model)),
    output:
        "results/activations/{model}.nc",
    log:
        "results/logs/capture/{model}.log",
    benchmark:
        "results/benchmarks/capture/{model}.tsv"
    group:
        "analysis"
    conda:
        "../envs/dyn.yaml"
    params:
        name=lambda wc: model_key(wc.model),
        arch=lambda wc: MODELS[model_key(wc.model)]["arch"],
        layers=lambda wc: layer_options("--layers", model_key(wc.model)),
        split=lambda wc: split_of(wc.model),
        dataset=as_json(config["dataset"]),
        num_images=ANALYSIS["num_images"],
        sample=ANALYSIS["sample"],
        sample_seed=ANALYSIS["sample_seed"],
        transform=ANALYSIS["transform"],
        dtype=ANALYSIS["dtype"],
        chunk=ANALYSIS["samples_per_chunk"],
        level=ANALYSIS["compression_level"],
        device=config["device"],
        launch=launcher(ONE_GPU),
    threads: 1
    resources:
        gpu=ONE_GPU,
    shell:
        "{params.launch} capture --name {params.name} --arch {params.arch:q} --split {params.split} --checkpoint {input.checkpoint}"
        " {params.layers}"
        " --out {output} --num-images {params.num_images} --sample {params.sample} --sample-seed {params.sample_seed}"
        " --transform {params.transform} --dtype {params.dtype}"
        " --samples-per-chunk {params.chunk} --compression-level {params.level}"
        " --dataset {params.dataset:q} --device {params.device} --threads {threads} > {log} 2>&1"
