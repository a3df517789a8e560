"""Inference speed of the U-Net against the machine's matrix-multiply rate.

For the model of config/config.yaml and a 64-filter U-Net (depth 4) it prints

- the network alone on batches of 512 x 512 tiles: tiles/s, megapixels/s and achieved
  GFLOP/s (FLOPs counted from the layers, vem3d.unet.unet_gflop), beside the GFLOP/s
  of a large matrix product in the network's compute precision, timed in turns with
  the network in the same run, on the same backend (and, in float32, with numpy's
  BLAS: the faster of the two is the reference);
- the whole segment step (vem3d.segment.segment_folder: read each preprocessed
  slice, tile, predict, blend, write the probability and mask PNGs) on native-size
  768 x 1024 slices (Lucchi++'s size), as slices/s and megapixels/s, against the
  network alone on the same tiles. Its time per slice is the difference between
  segmenting 1 + n slices and 1 slice, so building the model, loading weights and
  compiling are left out. CPU seconds are printed beside: on a machine shared with
  other work they show the step's extra work when wall-clock times scatter.

Targets on a CPU: the network reaches at least 60 % of the matrix-multiply rate, and
the whole segment step at least 80 % of the network-only rate. Runs on any Keras
backend and precision, with the CPU threads the workflow's segment jobs get (all
cores; on a machine without a GPU two jobs run at once with half each, ``--threads``):

    python benchmarks/inference.py
    python benchmarks/inference.py --threads 1 --models default
    KERAS_BACKEND=jax python benchmarks/inference.py --precision mixed_bfloat16
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from vem3d.threads import limit_cpu_threads


def threads_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)),
        help="CPU threads of the framework and of numpy's BLAS, set as the workflow's segment jobs set "
             "them (default: every core; the workflow's two jobs at once on a CPU have half each)",
    )
    return parser


# As in the workflow's segment script: the limits must be set before the framework
# (and numpy's BLAS, which reads OMP_NUM_THREADS) is imported. Left unset, oneDNN's
# kernels kept one of 2 cores busy.
limit_cpu_threads(threads_parser().parse_known_args()[0].threads)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from vem3d.preprocess import preprocess_stack, read_preprocessed  # noqa: E402
from vem3d.segment import Tiling, automatic_batch_size, batch_tiles, load_model, segment_folder  # noqa: E402
from vem3d.slices import write_image  # noqa: E402
from vem3d.synth import synthesise_stack  # noqa: E402
from vem3d.train import save_weights  # noqa: E402
from vem3d.unet import PRECISIONS, UNetConfig, build_unet, unet_gflop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SLICE_SHAPE = (768, 1024)


def timed(function) -> np.ndarray:
    """Wall-clock and CPU seconds (all threads of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return np.array([time.perf_counter() - wall, time.process_time() - cpu])


def best_seconds(functions: dict, repeats: int, warm_up: bool = True) -> dict[str, np.ndarray]:
    """Fastest wall-clock and CPU seconds of each function over ``repeats`` rounds that call each in turn.

    A warm-up round (compilation) comes first if asked. Taking turns lets every function
    see the same machine, where other processes come and go; CPU seconds (all threads
    of this process) hardly depend on them.
    """
    for function in functions.values() if warm_up else ():
        function()
    best = {name: np.full(2, np.inf) for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            time.sleep(0.5)  # BLAS and framework worker threads spin a while after a call
            best[name] = np.minimum(best[name], timed(function))
    return best


def matrix_products(size: int, dtype: str) -> dict:
    """A size x size matrix product in ``dtype`` on the Keras backend and, in float32, with numpy's BLAS.

    The faster of the two gives the machine's rate: a backend's own product can be the
    slower one (TensorFlow's without oneDNN reaches half of OpenBLAS's on AVX2 CPUs).
    """
    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype=np.float32) for _ in range(2))
    tensors = [keras.ops.convert_to_tensor(array, dtype=dtype) for array in (a, b)]
    # One element back to the host, as float32: numpy has no bfloat16 of its own.
    products = {
        f"{keras.backend.backend()} matmul": lambda: keras.ops.convert_to_numpy(
            keras.ops.cast(keras.ops.matmul(*tensors)[0, 0], "float32")
        )
    }
    if dtype == "float32":
        products["numpy matmul"] = lambda: a @ b
    return products


def write_preprocessed_slices(directory: Path, count: int) -> list[Path]:
    """EM-like 768 x 1024 slices, preprocessed as the workflow does: folders of the first 1 and all ``count``."""
    images, _ = synthesise_stack(n_slices=count, size=SLICE_SHAPE[1], seed=0)
    names = [f"{index:03d}" for index in range(count)]
    for name, image in zip(names, images):
        write_image(directory / "raw" / f"{name}.png", image[: SLICE_SHAPE[0]])
    folders = [directory / "first", directory / "all"]
    for folder, selected in zip(folders, (names[:1], names)):
        preprocess_stack(directory / "raw", selected, folder)
    return folders


def step_and_network_seconds(model, folders, weights, config, tile, batch_size, precision, repeats) -> tuple:
    """Wall-clock and CPU seconds per slice of the whole segment step and of the network alone.

    The step's are those of segment_folder on all slices minus the first alone, per
    extra slice; the network's, of its forward passes on the extra slices' tiles, timed
    in turns with them (:func:`best_seconds`).
    """
    overlap = tile // 8
    extra = list(read_preprocessed(folders[1]))[1:]
    tilings = [(name, Tiling(image, tile, overlap, 2**config.depth)) for name, image, _ in extra]
    batches = [batch for batch, _ in batch_tiles(tilings, batch_size)]  # as segment_slices batches them
    segment = [
        lambda folder=folder: segment_folder(
            folder, weights, [folder.parent / "out/probabilities"], [folder.parent / "out/masks"], config,
            tile, overlap, batch_size, precision=precision,
        )
        for folder in folders
    ]
    seconds = best_seconds(
        {**dict(enumerate(segment)), "network": lambda: [model.predict_on_batch(tiles) for tiles in batches]},
        repeats,
        warm_up=False,  # segment_folder compiles afresh each time, and the difference leaves that out
    )
    step = (seconds[1] - seconds[0]) / len(extra)
    return step, seconds["network"] / len(extra), len(tilings[0][1].positions)


def report_model(name, config, tile, batch_size, precision, matmul_size, folders, repeats) -> None:
    """Print the network's rate on tiles and the whole segment step's on native-size slices."""
    weights = folders[0].parent / f"{name}.weights.h5"
    save_weights(build_unet(config), weights)
    model = load_model(weights, config, precision)  # as segment_folder prepares it

    compute_dtype = keras.DTypePolicy(precision).compute_dtype
    batch = np.random.default_rng(1).random((batch_size, tile, tile, 1), dtype=np.float32)
    seconds = best_seconds(
        {**matrix_products(matmul_size, compute_dtype), "network": lambda: model.predict_on_batch(batch)}, repeats
    )
    network_seconds = seconds.pop("network")
    # GFLOP/s, and GFLOP per CPU second: the second shows the efficiency on a busy machine.
    matmul_rates = {product: 2 * matmul_size**3 / 1e9 / product_seconds for product, product_seconds in seconds.items()}
    reference = np.max(list(matmul_rates.values()), axis=0)
    gflop = unet_gflop(config, tile, tile)
    rate = gflop * batch_size / network_seconds
    matmuls = ", ".join(
        f"{wall:.0f} GFLOP/s, {cpu:.0f} GFLOP/CPU-s ({product})" for product, (wall, cpu) in matmul_rates.items()
    )
    print(
        f"\n{name} model (depth {config.depth}, {config.base_filters} filters), batch {batch_size}:\n"
        f"  {compute_dtype} {matmul_size}^3 matrix product: {matmuls}\n"
        f"  network, {tile}x{tile} tiles: {gflop:.1f} GFLOP per tile; {batch_size / network_seconds[0]:.2f} tiles/s, "
        f"{batch_size * tile * tile / network_seconds[0] / 1e6:.2f} Mpx/s, {rate[0]:.0f} GFLOP/s = "
        f"{100 * rate[0] / reference[0]:.0f} % of the faster matrix product "
        f"({rate[1]:.0f} GFLOP/CPU-s = {100 * rate[1] / reference[1]:.0f} %)"
    )

    step, network, tiles = step_and_network_seconds(model, folders, weights, config, tile, batch_size, precision, repeats)
    megapixels = SLICE_SHAPE[0] * SLICE_SHAPE[1] / 1e6
    print(
        f"  {SLICE_SHAPE[0]}x{SLICE_SHAPE[1]} slices ({tiles} tiles each): network alone {1 / network[0]:.3f} slices/s "
        f"({megapixels / network[0]:.2f} Mpx/s); whole segment step {1 / step[0]:.3f} slices/s "
        f"({megapixels / step[0]:.2f} Mpx/s) = {100 * network[0] / step[0]:.0f} % of the network-only rate "
        f"(CPU seconds per slice: network {network[1]:.2f}, step {step[1]:.2f}, {100 * network[1] / step[1]:.0f} %)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[threads_parser()]
    )
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass (default: automatic, as segment.batch_size: null)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each measurement; the best counts")
    parser.add_argument("--slices", type=int, default=3, help="native-size slices timed in the whole segment step")
    parser.add_argument("--models", nargs="+", choices=("default", "wide"), default=["default", "wide"])
    arguments = parser.parse_args()

    print(
        f"backend {keras.backend.backend()}, {arguments.precision}, {os.cpu_count()} CPUs, "
        f"{arguments.threads} thread(s); "
        f"load average {os.getloadavg()[0]:.1f} (other processes slow every figure); "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}"
    )
    settings = yaml.safe_load((ROOT / "config/config.yaml").read_text())["model"]
    models = {
        "default": UNetConfig(**{key: settings[key] for key in ("depth", "base_filters", "batch_norm", "dropout")}),
        "wide": UNetConfig(depth=4, base_filters=64),
    }
    with tempfile.TemporaryDirectory(prefix="vem3d-inference-") as directory:
        folders = write_preprocessed_slices(Path(directory), 1 + arguments.slices)
        for name in arguments.models:
            config = models[name]
            batch_size = arguments.batch_size or automatic_batch_size(config, arguments.tile_size)
            report_model(
                name, config, arguments.tile_size, batch_size, arguments.precision, arguments.matmul_size, folders, arguments.repeats
            )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
