rule volume:
    input:
        get_volume_inputs,
    output:
        directory("results/{sample}/volume.zarr"),
    log:
        "logs/{sample}/volume.log",
    benchmark:
        "results/benchmarks/{sample}/volume.tsv"
    conda:
        "../../envs/imaging.yaml"
    # The one whole-volume step that mesh and statistics wait for: all cores clean blocks.
    threads: every_core
    params:
        voxel_size_nm=lambda wildcards: voxel_size_nm(wildcards.sample),
        clean_up=clean_up_settings,
        block_size=config["mesh"]["block_size"],
        memory_gib=config["mesh"]["memory_gib"],
        # Assembled masks and cleaned blocks of the last run, reused where slices did not change.
        cache_dir=lambda wildcards: f"results/{wildcards.sample}/volume_cache",
    script:
        "../scripts/volume.py"
