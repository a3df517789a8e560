rule preprocess:
    input:
        get_chunk_slice_files,
    output:
        directory("results/{sample}/preprocessed/{chunk}"),
    log:
        "logs/{sample}/preprocess/{chunk}.log",
    benchmark:
        "results/benchmarks/{sample}/preprocess/{chunk}.tsv"
    conda:
        "../../envs/imaging.yaml"
    params:
        source=lambda wildcards: samples.loc[wildcards.sample, "slices"],
        names=lambda wildcards: chunk_slice_names(wildcards.sample, wildcards.chunk),
        reference_name=lambda wildcards: SLICE_NAMES[wildcards.sample][0],
        settings=config["preprocess"],
    script:
        "../scripts/preprocess.py"
