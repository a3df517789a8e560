from vem3d.logs import workflow_job
from vem3d.render import montage_from_folders

with workflow_job(snakemake.log[0]):
    montage_from_folders(
        snakemake.params.source,
        snakemake.input.masks,
        snakemake.output[0],
        reference_dir=snakemake.params.reference["folder"],
        reference_name=snakemake.params.reference["name"],
        n_panels=snakemake.params.n_panels,
        classes=snakemake.params.classes,
        class_name=snakemake.wildcards.class_name,
        label_values=snakemake.params.label_values,
    )
