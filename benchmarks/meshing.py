"""Block-wise meshing of a volume larger than memory, against one whole-volume marching cubes.

A synthetic binary volume (default 2000 x 2048 x 2048 = 8.4 G voxels) of spheres,
some of them hollow, and specks is generated slab by slab straight into a zarr store
(never whole in memory). A separate process then cleans it (objects under 64 voxels
removed, cavities filled) and meshes it block by block into an STL
(vem3d.volume.clean_blockwise + vem3d.mesh.write_mesh_blockwise, both in --workers processes,
by default one per core), and reports its time, voxels per second, faces and
peak resident memory (getrusage, of the process and of its largest worker; target: at
most 4 GiB). Another process then measures the cleaned volume's objects as the
statistics step does (vem3d.stats.object_statistics_blockwise), with its time and
peak memory (--skip-statistics leaves it out).

For comparison, the first slices of the same volume, as many as the in-memory path
fits in --memory-gib, are meshed by one vem3d.mesh.volume_to_mesh call (Gaussian
smoothing and one skimage.measure.marching_cubes) and block by block
(vem3d.mesh.mesh_blockwise), each in its own process; the two meshes are checked
to be the same up to vertex and face order.

    python benchmarks/meshing.py                         # full size (tens of minutes)
    python benchmarks/meshing.py --shape 256 1024 1024   # smaller
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy.spatial import cKDTree

from vem3d.blockwise import DEFAULT_BLOCK_SIZE
from vem3d.mesh import mesh_blockwise, volume_to_mesh, write_mesh_blockwise
from vem3d.stats import object_statistics_blockwise
from vem3d.volume import CHUNK_EDGE, IN_MEMORY_BYTES_PER_VOXEL, clean_blockwise

VOXEL_NM = (30.0, 8.0, 8.0)
MIN_OBJECT_VOXELS = 64


def peak_rss_gib(who=resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or of its largest child process) so far (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss / 2**20


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its ended child processes so far: the work, whatever
    else shares the cores."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def synthetic_objects(shape, seed: int):
    """Spheres (centre z, y, x; radius; hollow) and specks (corner z, y, x; side) spread over ``shape``."""
    rng = np.random.default_rng(seed)
    n_voxels = math.prod(shape)
    n_spheres = max(1, round(n_voxels / 1.4e7))  # ~600 at full size, ~6 % foreground
    spheres = [
        (
            rng.uniform(0, shape[0]),
            rng.uniform(0, shape[1]),
            rng.uniform(0, shape[2]),
            rng.uniform(20, 90),
            rng.random() < 0.1,
        )
        for _ in range(n_spheres)
    ]
    n_specks = max(1, round(n_voxels / 4e5))  # removed by the clean-up
    specks = np.stack([rng.integers(0, n - 2, n_specks) for n in shape] + [rng.integers(1, 3, n_specks)], axis=1)
    return spheres, specks


def synthetic_slab(shape, z_start: int, z_stop: int, spheres, specks) -> np.ndarray:
    """Slices z_start..z_stop - 1 of the synthetic volume."""
    slab = np.zeros((z_stop - z_start, *shape[1:]), bool)
    for cz, cy, cx, radius, hollow in spheres:
        box = [
            (max(int(c - radius), lo), min(int(c + radius) + 2, hi))
            for c, lo, hi in ((cz, z_start, z_stop), (cy, 0, shape[1]), (cx, 0, shape[2]))
        ]
        if any(hi <= lo for lo, hi in box):
            continue
        z, y, x = np.ogrid[tuple(slice(lo, hi) for lo, hi in box)]
        distance = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2
        inside = distance <= radius**2
        if hollow:
            inside &= distance > (0.6 * radius) ** 2
        slab[box[0][0] - z_start : box[0][1] - z_start, box[1][0] : box[1][1], box[2][0] : box[2][1]] |= inside
    for z, y, x, side in specks:
        if z_start <= z < z_stop:
            slab[z - z_start : z - z_start + side, y : y + side, x : x + side] = True
    return slab


def generate(path: Path, shape, seed: int) -> None:
    """Write the synthetic volume into a zarr store, CHUNK_EDGE slices at a time."""
    volume = zarr.create_array(
        path, shape=shape, chunks=(CHUNK_EDGE,) * 3, dtype=bool, fill_value=False, overwrite=True
    )
    spheres, specks = synthetic_objects(shape, seed)
    for z_start in range(0, shape[0], CHUNK_EDGE):
        z_stop = min(z_start + CHUNK_EDGE, shape[0])
        volume[z_start:z_stop] = synthetic_slab(shape, z_start, z_stop, spheres, specks)


def run_blockwise(volume_path: Path, work: Path, block_size: int, workers: int) -> dict:
    volume = zarr.open_array(volume_path, mode="r")
    started, started_cpu = time.perf_counter(), cpu_seconds()
    cleaned = clean_blockwise(volume, work / "cleaned.zarr", MIN_OBJECT_VOXELS, True, block_size, workers)
    cleaned_at, cleaned_cpu = time.perf_counter(), cpu_seconds()
    summary = write_mesh_blockwise(cleaned, VOXEL_NM, work / "mesh.stl", block_size, workers=workers)
    finished = time.perf_counter()
    return {
        "clean_s": cleaned_at - started,
        "mesh_s": finished - cleaned_at,
        "clean_cpu_s": cleaned_cpu - started_cpu,
        "mesh_cpu_s": cpu_seconds() - cleaned_cpu,
        "faces": summary["faces"],
        "objects": summary["objects"],
        "stl_gib": (work / "mesh.stl").stat().st_size / 2**30 if summary["faces"] else 0.0,
        "peak_gib": peak_rss_gib(),
        "worker_peak_gib": peak_rss_gib(resource.RUSAGE_CHILDREN),
    }


def run_statistics(work: Path, block_size: int, workers: int) -> dict:
    """The statistics step's block-wise table of the volume the block-wise run cleaned."""
    cleaned = zarr.open_array(work / "cleaned.zarr", mode="r")
    started, started_cpu = time.perf_counter(), cpu_seconds()
    table = object_statistics_blockwise(cleaned, VOXEL_NM, work, block_size=block_size, workers=workers)
    return {
        "statistics_s": time.perf_counter() - started,
        "statistics_cpu_s": cpu_seconds() - started_cpu,
        "objects": len(table),
        "surface_area_um2": float(table["surface_area_um2"].sum()),
        "peak_gib": peak_rss_gib(),
        "worker_peak_gib": peak_rss_gib(resource.RUSAGE_CHILDREN),
    }


def read_slices(volume_path: Path, n_slices: int) -> np.ndarray:
    return zarr.open_array(volume_path, mode="r")[:n_slices]


def run_whole(volume_path: Path, work: Path, n_slices: int) -> dict:
    volume = read_slices(volume_path, n_slices)
    started, started_cpu = time.perf_counter(), cpu_seconds()
    vertices, faces = volume_to_mesh(volume, VOXEL_NM)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
    np.savez(work / "whole.npz", vertices=vertices, faces=faces)
    return {"mesh_s": seconds, "mesh_cpu_s": cpu, "faces": len(faces), "peak_gib": peak_rss_gib()}


def run_blockwise_slices(volume_path: Path, work: Path, n_slices: int, block_size: int) -> dict:
    volume = read_slices(volume_path, n_slices)
    started, started_cpu = time.perf_counter(), cpu_seconds()
    vertices, faces = mesh_blockwise(volume, VOXEL_NM, block_size)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
    whole = np.load(work / "whole.npz")
    return {
        "mesh_s": seconds,
        "mesh_cpu_s": cpu,
        "peak_gib": peak_rss_gib(),
        "faces": len(faces),
        "same_mesh": same_mesh(vertices, faces, whole["vertices"], whole["faces"]),
    }


def same_mesh(vertices, faces, other_vertices, other_faces, tolerance_nm: float = 1e-2) -> bool:
    """Whether two meshes have the same vertices (to float32 rounding) and oriented faces, in any order."""
    if len(vertices) != len(other_vertices) or len(faces) != len(other_faces):
        return False
    distance, match = cKDTree(other_vertices).query(vertices)
    if distance.max(initial=0) > tolerance_nm or len(np.unique(match)) != len(match):
        return False

    def canonical(triangles):
        start = np.argmin(triangles, axis=1)
        rotated = np.stack([triangles[np.arange(len(triangles)), (start + k) % 3] for k in range(3)], axis=1)
        return rotated[np.lexsort(rotated.T[::-1])]

    return bool(np.array_equal(canonical(match[faces]), canonical(other_faces)))


def in_subprocess(*arguments) -> dict:
    """Run this script's ``--step`` in a fresh process (its own peak memory); return its JSON.

    The step's log (progress) goes to this process's stderr.
    """
    output = subprocess.run(
        [sys.executable, __file__, *map(str, arguments)], check=True, stdout=subprocess.PIPE, text=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(2000, 2048, 2048), metavar=("Z", "Y", "X"))
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)),
        help="processes that mesh blocks at once in the block-wise run (default: one per core)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-gib", type=float, default=4.0, help="budget the whole-volume comparison must fit")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--skip-comparison", action="store_true")
    parser.add_argument("--skip-statistics", action="store_true", help="do not time the statistics step")
    parser.add_argument(
        "--step", choices=("blockwise", "statistics", "whole", "blockwise-slices"), help=argparse.SUPPRESS
    )
    parser.add_argument("--slices", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.step:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        work = arguments.workdir
        volume_path = work / "volume.zarr"
        if arguments.step == "blockwise":
            result = run_blockwise(volume_path, work, arguments.block_size, arguments.workers)
        elif arguments.step == "statistics":
            result = run_statistics(work, arguments.block_size, arguments.workers)
        elif arguments.step == "whole":
            result = run_whole(volume_path, work, arguments.slices)
        else:
            result = run_blockwise_slices(volume_path, work, arguments.slices, arguments.block_size)
        print(json.dumps(result))
        return

    shape = tuple(arguments.shape)
    n_voxels = math.prod(shape)
    if arguments.workdir:
        arguments.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=arguments.workdir, prefix="vem3d-meshing-") as scratch:
        work = Path(scratch)
        started = time.perf_counter()
        generate(work / "volume.zarr", shape, arguments.seed)
        seconds = time.perf_counter() - started
        print(f"generated {shape[0]} x {shape[1]} x {shape[2]} = {n_voxels / 1e9:.2f} G voxels in {seconds:.0f} s")
        common = ["--workdir", work, "--block-size", arguments.block_size]
        blockwise = in_subprocess("--step", "blockwise", "--workers", arguments.workers, *common)
        total = blockwise["clean_s"] + blockwise["mesh_s"]
        print(
            f"block-wise, blocks of {arguments.block_size}: clean-up {blockwise['clean_s']:.0f} s, "
            f"meshing {blockwise['mesh_s']:.0f} s, total {total:.0f} s = {n_voxels / total / 1e6:.1f} M voxels/s "
            f"(CPU time: clean-up {blockwise['clean_cpu_s']:.0f} s, meshing {blockwise['mesh_cpu_s']:.0f} s) "
            f"(meshing alone {n_voxels / blockwise['mesh_s'] / 1e6:.1f} M voxels/s); {blockwise['objects']} objects, "
            f"{blockwise['faces']:,} faces, STL {blockwise['stl_gib']:.2f} GiB; peak RSS {blockwise['peak_gib']:.2f} GiB"
            + (
                f", and {blockwise['worker_peak_gib']:.2f} GiB in the largest of {arguments.workers} worker processes "
                "(pages shared with the first counted in both)"
                if arguments.workers > 1
                else ""
            )
        )
        if not arguments.skip_statistics:
            statistics = in_subprocess("--step", "statistics", "--workers", arguments.workers, *common)
            print(
                f"block-wise object statistics of the cleaned volume: {statistics['statistics_s']:.0f} s "
                f"(CPU {statistics['statistics_cpu_s']:.0f} s), {statistics['objects']} objects, "
                f"{statistics['surface_area_um2']:.1f} um2 of surface; peak RSS {statistics['peak_gib']:.2f} GiB, "
                f"and {statistics['worker_peak_gib']:.2f} GiB in the largest worker"
            )
        if arguments.skip_comparison:
            return
        slices = min(shape[0], int(arguments.memory_gib * 2**30 / (IN_MEMORY_BYTES_PER_VOXEL * shape[1] * shape[2])))
        sub_voxels = slices * shape[1] * shape[2]
        whole = in_subprocess("--step", "whole", "--slices", slices, *common)
        print(
            f"whole volume, first {slices} slices ({sub_voxels / 1e9:.2f} G voxels): one volume_to_mesh "
            f"(smoothing + one marching_cubes) {whole['mesh_s']:.1f} s (CPU {whole['mesh_cpu_s']:.1f} s) = "
            f"{sub_voxels / whole['mesh_s'] / 1e6:.1f} M voxels/s, {whole['faces']:,} faces, "
            f"peak RSS {whole['peak_gib']:.2f} GiB"
        )
        same = in_subprocess("--step", "blockwise-slices", "--slices", slices, *common)
        print(
            f"block-wise on the same slices: {same['mesh_s']:.1f} s (CPU {same['mesh_cpu_s']:.1f} s) = "
            f"{sub_voxels / same['mesh_s'] / 1e6:.1f} M voxels/s, {same['faces']:,} faces, "
            f"peak RSS {same['peak_gib']:.2f} GiB; "
            f"same mesh up to vertex and face order: {same['same_mesh']}"
        )


if __name__ == "__main__":
    main()
