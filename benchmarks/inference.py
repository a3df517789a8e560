"""Inference speed of the U-Net against the machine's matrix-multiply rate.

For the default model (depth 3, 16 filters) and a 64-filter U-Net (depth 4) it prints
tiles per second, megapixels per second and achieved GFLOP/s (FLOPs counted from the
architecture, vem3d.unet.unet_gflop), beside the GFLOP/s of a large float32 matrix
product measured in the same run on the same backend; then the whole tiled
segmentation of a native-size 768 x 1024 slice (padding, tiling, blending included)
against the network alone. Runs on any Keras backend:

    python benchmarks/inference.py
    KERAS_BACKEND=jax python benchmarks/inference.py --batch-size 16
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from vem3d.segment import predict_tiled
from vem3d.unet import UNetConfig, build_unet, unet_gflop


def best_seconds(function, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls, after one warm-up call (compilation)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_gflops(size: int, repeats: int) -> float:
    """float32 GFLOP/s of a size x size matrix product on the Keras backend."""
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.random((size, size), dtype=np.float32))
    b = keras.ops.convert_to_tensor(rng.random((size, size), dtype=np.float32))
    seconds = best_seconds(lambda: keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[0, 0]), repeats)
    return 2 * size**3 / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    tile, batch_size = arguments.tile_size, arguments.batch_size

    reference = matmul_gflops(arguments.matmul_size, arguments.repeats)
    print(f"backend {keras.backend.backend()}; float32 matmul {arguments.matmul_size}^3: {reference:.0f} GFLOP/s")
    rng = np.random.default_rng(1)
    batch = rng.random((batch_size, tile, tile, 1), dtype=np.float32)
    for name, config in (
        ("default (depth 3, 16 filters)", UNetConfig(depth=3, base_filters=16)),
        ("64 filters (depth 4)", UNetConfig(depth=4, base_filters=64)),
    ):
        model = build_unet(config)
        seconds = best_seconds(lambda: model.predict_on_batch(batch), arguments.repeats)
        gflop = unet_gflop(config, tile, tile) * batch_size
        network_rate = gflop / seconds
        print(
            f"{name}: {gflop / batch_size:.1f} GFLOP per {tile}x{tile} tile; "
            f"{batch_size / seconds:.2f} tiles/s, {batch_size * tile * tile / seconds / 1e6:.2f} Mpx/s, "
            f"{network_rate:.0f} GFLOP/s = {100 * network_rate / reference:.0f} % of matmul"
        )
        slice_image = rng.random((768, 1024), dtype=np.float32)
        tiles_seen = []

        def counting_predict(tiles):
            tiles_seen.append(len(tiles))
            return model.predict_on_batch(tiles)

        slice_seconds = best_seconds(
            lambda: predict_tiled(counting_predict, slice_image, tile, tile // 8, batch_size), arguments.repeats
        )
        tiles_per_slice = sum(tiles_seen) // (arguments.repeats + 1)  # warm-up call included
        network_only = tiles_per_slice / (batch_size / seconds)
        print(
            f"  768x1024 slice tiled: {slice_seconds:.3f} s ({tiles_per_slice} tiles); network alone "
            f"{network_only:.3f} s: segment step at {100 * network_only / slice_seconds:.0f} % of the network-only rate"
        )


if __name__ == "__main__":
    main()
