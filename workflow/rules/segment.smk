rule segment:
    input:
        preprocessed="results/{sample}/preprocessed/{chunk}",
        weights=WEIGHTS,
    output:
        probabilities=[
            directory(f"results/{{sample}}/probabilities/{name}/{{chunk}}")
            for name in CLASSES
        ],
        masks=[
            directory(f"results/{{sample}}/masks/{name}/{{chunk}}") for name in CLASSES
        ],
    log:
        "logs/{sample}/segment/{chunk}.log",
    benchmark:
        "results/benchmarks/{sample}/segment/{chunk}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: network_threads
    params:
        unet=unet_settings(),
        gpu_required=config["gpu"]["required"],
        settings=config["segment"],
    script:
        "../scripts/segment.py"
