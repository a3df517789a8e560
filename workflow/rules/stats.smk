rule object_statistics:
    input:
        volume="results/{sample}/volume.zarr",
    output:
        objects=report(
            "results/{sample}/objects.tsv",
            caption="../report/objects.rst",
            category="Objects",
            subcategory="{sample}",
        ),
        summary=report(
            "results/{sample}/objects_summary.tsv",
            caption="../report/objects_summary.rst",
            category="Objects",
            subcategory="{sample}",
        ),
    log:
        "logs/{sample}/object_statistics.log",
    benchmark:
        "results/benchmarks/{sample}/object_statistics.tsv"
    # Before the montage, which only provenance waits for: the pictures and tables wait for this.
    priority: 1
    conda:
        "../../envs/imaging.yaml"
    threads: surface_threads
    params:
        smoothing_sigma=config["mesh"]["smoothing_sigma"],
        block_size=config["mesh"]["block_size"],
        memory_gib=config["mesh"]["memory_gib"],
        # Mesh measures of the last run's objects, reused where an object did not change.
        cache_dir=lambda wildcards: f"results/{wildcards.sample}/object_cache",
    script:
        "../scripts/object_statistics.py"


rule study_objects:
    input:
        expand("results/{sample}/objects_summary.tsv", sample=samples.index),
    output:
        report(
            "results/study_objects.tsv",
            caption="../report/study_objects.rst",
            category="Objects",
        ),
    log:
        "logs/study_objects.log",
    conda:
        "../../envs/imaging.yaml"
    params:
        samples=list(samples.index),
    script:
        "../scripts/study_objects.py"


onerror:
    unfinished = [
        sample
        for sample in samples.index
        if not Path(f"results/{sample}/objects_summary.tsv").is_file()
    ]
    if unfinished:
        print(
            f"vem3d: no results yet for sample(s) {', '.join(unfinished)} (see logs/). "
            "results/study_objects.tsv covers every sample in the sheet and waits for "
            "them. With --keep-going the other samples carry on to their results (unless "
            "training failed, which every sample waits for); to "
            "tabulate those, fix the samples above or comment out their rows in the "
            "sample sheet with '#' and run again (README: 'Many samples').",
            file=sys.stderr,
        )
