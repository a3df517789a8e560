from vem3d.logs import workflow_job
from vem3d.provenance import write_provenance

with workflow_job(snakemake.log[0]):
    write_provenance(
        snakemake.output[0],
        snakemake.wildcards.sample,
        snakemake.config,
        snakemake.params.sample_row,
        {
            kind: list(snakemake.input[kind])
            for kind in ("slices", "labels", "ground_truth")
        },
        snakemake.input.weights,
        snakemake.params.benchmarks,
    )
