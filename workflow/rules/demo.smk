rule synthesise_demo:
    output:
        slices=demo_files("slices", DEMO_SLICE_NAMES),
        labels=demo_files("labels", DEMO_LABEL_NAMES),
        ground_truth=demo_files("ground_truth", DEMO_SLICE_NAMES),
    params:
        out_dir=config["demo"]["path"],
        n_slices=config["demo"]["n_slices"],
        size=config["demo"]["size"],
        seed=config["demo"]["seed"],
        label_every=config["demo"]["label_every"],
    log:
        "logs/synthesise_demo.log",
    conda:
        "../../envs/imaging.yaml"
    script:
        "../scripts/synthesise_demo.py"
