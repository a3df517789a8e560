"""Inference speed of the U-Net against the machine's matrix-multiply rate.

For the model of config/config.yaml and a 64-filter U-Net (depth 4) it prints

- the network alone on batches of 512 x 512 tiles: tiles/s, megapixels/s and achieved
  GFLOP/s (FLOPs counted from the layers, vem3d.unet.unet_gflop), beside the GFLOP/s
  of a large matrix product in the network's compute precision, measured in the same
  run just before, on the same backend (and, in float32, with numpy's BLAS: the better
  of the two is the reference);
- the whole segment step (vem3d.segment.segment_folder: read each preprocessed
  slice, tile, predict, blend, write the probability and mask PNGs) on native-size
  768 x 1024 slices (Lucchi++'s size), as slices/s and megapixels/s, against the
  network alone on the same tiles. Its time per slice is the difference between
  segmenting 1 + n slices and 1 slice, so building the model, loading weights and
  compiling are left out.

Targets on a CPU: the network reaches at least 60 % of the matrix-multiply rate, and
the whole segment step at least 80 % of the network-only rate. Runs on any Keras
backend and precision:

    python benchmarks/inference.py
    KERAS_BACKEND=jax python benchmarks/inference.py --precision mixed_bfloat16
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import yaml

from vem3d.preprocess import preprocess_stack, read_preprocessed
from vem3d.segment import Tiling, automatic_batch_size, load_model, segment_folder
from vem3d.slices import write_image
from vem3d.synth import synthesise_stack
from vem3d.train import save_weights
from vem3d.unet import PRECISIONS, UNetConfig, build_unet, unet_gflop

ROOT = Path(__file__).resolve().parents[1]
SLICE_SHAPE = (768, 1024)


def best_seconds(function, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls, after one warm-up call (compilation)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_gflops(size: int, repeats: int, dtype: str) -> dict[str, float]:
    """GFLOP/s of a size x size matrix product in ``dtype``: on the Keras backend and, in float32, numpy's BLAS.

    The better of the two is the machine's rate: a backend's own product can be the
    slower one (TensorFlow's without oneDNN reaches half of OpenBLAS's on AVX2 CPUs).
    """
    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype=np.float32) for _ in range(2))
    tensors = [keras.ops.convert_to_tensor(array, dtype=dtype) for array in (a, b)]
    rates = {
        keras.backend.backend(): best_seconds(
            lambda: keras.ops.convert_to_numpy(keras.ops.matmul(*tensors)[0, 0]), repeats
        )
    }
    if dtype == "float32":
        rates["numpy"] = best_seconds(lambda: a @ b, repeats)
    return {name: 2 * size**3 / seconds / 1e9 for name, seconds in rates.items()}


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


def segment_step_seconds(folders, weights, config, tile, overlap, batch_size, precision, repeats) -> float:
    """Seconds per slice of segment_folder: all slices minus the first alone, per extra slice (best of ``repeats``)."""
    seconds = [[], []]
    for _ in range(repeats):
        for index, folder in enumerate(folders):
            out = folder.parent / f"out{index}"
            started = time.perf_counter()
            segment_folder(
                folder, weights, [out / "probabilities"], [out / "masks"], config, tile, overlap, batch_size,
                precision=precision,
            )
            seconds[index].append(time.perf_counter() - started)
    extra_slices = len(list(read_preprocessed(folders[1]))) - 1
    return (min(seconds[1]) - min(seconds[0])) / extra_slices


def report_model(name, config, tile, batch_size, precision, matmul_size, folders, repeats) -> None:
    """Print the network's rate on tiles and the whole segment step's on native-size slices."""
    overlap = tile // 8
    weights = folders[0].parent / f"{name}.weights.h5"
    save_weights(build_unet(config), weights)
    model = load_model(weights, config, precision)  # as segment_folder prepares it

    # The matrix product is timed right before the network, so that both see the same
    # machine (other processes on a shared one come and go).
    compute_dtype = keras.DTypePolicy(precision).compute_dtype
    matmul_rates = matmul_gflops(matmul_size, repeats, compute_dtype)
    reference = max(matmul_rates.values())
    batch = np.random.default_rng(1).random((batch_size, tile, tile, 1), dtype=np.float32)
    seconds = best_seconds(lambda: model.predict_on_batch(batch), repeats)
    gflop = unet_gflop(config, tile, tile)
    rate = gflop * batch_size / seconds
    matmuls = ", ".join(f"{gflops:.0f} GFLOP/s ({library})" for library, gflops in matmul_rates.items())
    print(
        f"\n{name} model (depth {config.depth}, {config.base_filters} filters), batch {batch_size}:\n"
        f"  {compute_dtype} matmul {matmul_size}^3: {matmuls}\n"
        f"  network, {tile}x{tile} tiles: {gflop:.1f} GFLOP per tile; {batch_size / seconds:.2f} tiles/s, "
        f"{batch_size * tile * tile / seconds / 1e6:.2f} Mpx/s, {rate:.0f} GFLOP/s = {100 * rate / reference:.0f} % of matmul"
    )

    slice_image = next(read_preprocessed(folders[0]))[1]
    batches = Tiling(slice_image, tile, overlap).batches(batch_size)
    network_seconds = best_seconds(lambda: [model.predict_on_batch(tiles) for tiles in batches], repeats)
    step_seconds = segment_step_seconds(folders, weights, config, tile, overlap, batch_size, precision, repeats)
    megapixels = SLICE_SHAPE[0] * SLICE_SHAPE[1] / 1e6
    print(
        f"  {SLICE_SHAPE[0]}x{SLICE_SHAPE[1]} slices ({sum(map(len, batches))} tiles each): network alone "
        f"{1 / network_seconds:.3f} slices/s ({megapixels / network_seconds:.2f} Mpx/s); whole segment step "
        f"{1 / step_seconds:.3f} slices/s ({megapixels / step_seconds:.2f} Mpx/s) = "
        f"{100 * network_seconds / step_seconds:.0f} % of the network-only rate"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass (default: automatic, as segment.batch_size: null)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each measurement; the best counts")
    parser.add_argument("--slices", type=int, default=3, help="native-size slices timed in the whole segment step")
    parser.add_argument("--models", nargs="+", choices=("default", "wide"), default=["default", "wide"])
    arguments = parser.parse_args()

    print(
        f"backend {keras.backend.backend()}, {arguments.precision}, {os.cpu_count()} CPUs; "
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
