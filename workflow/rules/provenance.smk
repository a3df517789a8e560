rule provenance:
    input:
        slices=lambda wildcards: slice_files(
            wildcards.sample, SLICE_NAMES[wildcards.sample]
        ),
        labels=lambda wildcards: label_files(wildcards.sample),
        ground_truth=lambda wildcards: label_files(wildcards.sample, "ground_truth"),
        weights=WEIGHTS,
        results=lambda wildcards: sample_outputs(wildcards.sample),
    output:
        report(
            "results/{sample}/provenance.json",
            caption="../report/provenance.rst",
            category="Provenance",
            subcategory="{sample}",
        ),
    log:
        "logs/{sample}/provenance.log",
    benchmark:
        "results/benchmarks/{sample}/provenance.tsv"
    # The network steps' environment: it has every package the record lists (the
    # imaging one has no Keras or TensorFlow).
    conda:
        "../../envs/tensorflow.yaml"
    params:
        sample_row=lambda wildcards: samples.loc[wildcards.sample].to_dict(),
        benchmarks=lambda wildcards: sample_benchmarks(wildcards.sample),
    script:
        "../scripts/provenance.py"
