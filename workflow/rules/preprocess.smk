rule preprocess:
    input:
        get_chunk_slice_files,
    output:
        directory("results/{sample}/preprocessed/{chunk}"),
    log:
        "logs/{sample}/preprocess/{chunk}.log",
    benchmark:
        "results/benchmarks/{sample}/preprocess/{chunk}.tsv"
    # Every chunk before the first segment job: the segment jobs then run in step and
    # end together, where chunks preprocessed in between left a core idle at the end.
    priority: 1
    conda:
        "../../envs/imaging.yaml"
    params:
        source=lambda wildcards: samples.loc[wildcards.sample, "slices"],
        names=lambda wildcards: chunk_slice_names(wildcards.sample, wildcards.chunk),
        reference_name=lambda wildcards: SLICE_NAMES[wildcards.sample][0],
        settings=config["preprocess"],
    script:
        "../scripts/preprocess.py"
