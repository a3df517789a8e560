rule segment:
    input:
        preprocessed="results/{sample}/preprocessed/{chunk}",
        weights=WEIGHTS,
    output:
        probabilities=directory("results/{sample}/probabilities/{chunk}"),
        masks=directory("results/{sample}/masks/{chunk}"),
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
