rule train:
    input:
        preprocessed=[
            f"results/{sample}/preprocessed/{chunk}"
            for sample, chunk in TRAINING_CHUNKS
        ],
        labels=[path for sample in TRAINING_SAMPLES for path in label_files(sample)],
        # An input, not a parameter: new weights at the same path train again.
        initial_weights=config["train"]["initial_weights"] or [],
    output:
        weights="results/model/unet.weights.h5",
        provenance="results/model/unet.weights.h5.json",
        history=report(
            "results/model/training_history.tsv",
            caption="../report/training_history.rst",
            category="Training",
        ),
        curves=report(
            "results/model/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
    log:
        "logs/train.log",
    benchmark:
        "results/benchmarks/train.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: every_core
    params:
        label_dirs=[samples.loc[sample, "labels"] for sample, _ in TRAINING_CHUNKS],
        checkpoint_dir="results/model/checkpoints",
        unet=unet_settings(),
        classes=CLASSES,
        label_values=config["model"]["label_values"],
        gpu_required=config["gpu"]["required"],
        training={
            key: value
            for key, value in config["train"].items()
            if key not in ("enabled", "initial_weights")
        },
    script:
        "../scripts/train.py"
