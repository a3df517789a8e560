from vem3d.logs import workflow_job
from vem3d.synth import write_demo_stack

with workflow_job(snakemake.log[0]):
    write_demo_stack(
        snakemake.params.out_dir,
        n_slices=snakemake.params.n_slices,
        size=snakemake.params.size,
        seed=snakemake.params.seed,
        label_every=snakemake.params.label_every,
    )
