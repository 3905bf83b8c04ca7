# One job per cohort: the runs of one epoch count and one seed (distill.cohort_across_epochs: of one
# seed), trained together on one data stream and one teacher forward per batch (distill.cohort;
# false: one job per run). A rule per cohort, because a job's outputs are all its runs' files;
# asking for one run's files builds its cohort.

RUN_FILES = ["summary.json", "student.safetensors", "log.csv", "evolution.nc"]

for cohort_id, specs in COHORTS.items():

    rule:
        name:
            dyn_runs.rule_name(cohort_id)
        message:
            f"distill {cohort_id}: {len(specs)} student(s): {', '.join(spec.run_id for spec in specs)}"
        input:
            teacher=checkpoint_path(TEACHER),
            # `auto` runs align the teacher's compression phase: its phases (capturing the teacher if needed)
            phases=sorted({path for spec in specs for path in teacher_phases(spec)}),
        output:
            [f"results/runs/{spec.run_id}/{name}" for spec in specs for name in RUN_FILES],
        log:
            f"results/logs/distill/{cohort_id}.log",
        benchmark:
            f"results/benchmarks/distill/{cohort_id}.tsv"
        conda:
            "../envs/dyn.yaml"
        params:
            # every field of each run spec (method options included: each its own method's)
            runs=as_json([spec.to_dict() for spec in specs]),
            phases=lambda wc, input: f"--teacher-phases {input.phases}" if input.phases else "",
            teacher_arch=MODELS[TEACHER]["arch"],
            student_arch=MODELS[STUDENT]["arch"],
            layers=" ".join(filter(None, (layer_options("--teacher-layers", TEACHER),
                                          layer_options("--student-layers", STUDENT)))),
            dataset=as_json(config["dataset"]),
            train=as_json(config["train"]),
            state=f"results/state/{cohort_id}/last.pt",
            # finished runs are kept there and restored, not trained again, when the job reruns
            finished="--finished-dir results/state/finished" if config["distill"]["reuse_finished"] else "",
            num_images=ANALYSIS["num_images"],
            sample=ANALYSIS["sample"],
            sample_seed=ANALYSIS["sample_seed"],
            bins=ANALYSIS["entropy_bins"],
            entropy_range=ANALYSIS["entropy_range"],
            transform=ANALYSIS["transform"],
            every=config["distill"]["evolution_every"],
            device=config["device"],
            launch=launcher(RUN_GPUS, config["distill"]["nodes"]),
        # the longest jobs first (student-epochs), so that short ones fill the gaps instead of a long one
        # running alone at the end
        priority: sum(spec.epochs for spec in specs)
        threads: config["distill"]["threads"]
        resources:
            # mem_mb is per node (--mem)
            mem_mb=RESOURCES["distill"]["mem_mb"],
            # per job: a cohort cut off by it continues after its last epoch when retried
            runtime=RESOURCES["distill"]["runtime"],
            # GPUs and CPUs (distill.nodes above 1: nodes, one task per node, GPUs per node), then the site's
            # partition, GPU model, QOS... (resources.distill.slurm): set-resources cannot name rules made
            # in a loop
            **distill_resources(),
        shell:
            "{params.launch} distill --runs {params.runs:q} {params.phases}"
            " --teacher-arch {params.teacher_arch:q} --teacher-checkpoint {input.teacher}"
            " --student-arch {params.student_arch:q} {params.layers} --runs-dir results/runs --state {params.state}"
            " {params.finished}"
            " --num-images {params.num_images} --sample {params.sample} --sample-seed {params.sample_seed}"
            " --transform {params.transform} --bins {params.bins} --entropy-range {params.entropy_range}"
            " --evolution-every {params.every}"
            " --dataset {params.dataset:q} --train {params.train:q} --device {params.device}"
            " --threads {threads} > {log} 2>&1"
