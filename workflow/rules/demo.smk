rule synthesise_demo:
    output:
        slices=demo_files("slices", DEMO_SLICE_NAMES),
        labels=demo_files("labels", DEMO_LABEL_NAMES),
        ground_truth=demo_files("ground_truth", DEMO_SLICE_NAMES),
    log:
        "logs/synthesise_demo.log",
    conda:
        "../../envs/imaging.yaml"
    params:
        out_dir=lambda wildcards, output: str(Path(output.slices[0]).parents[1]),
        n_slices=config["demo"]["n_slices"],
        size=config["demo"]["size"],
        seed=config["demo"]["seed"],
        label_every=config["demo"]["label_every"],
    script:
        "../scripts/synthesise_demo.py"
