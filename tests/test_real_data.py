"""The 3D steps on real EM labels: the Lucchi++ mitochondria (../shared/data, read in place).

Skipped where the folder is absent (its licence forbids copying it into the project).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_blockwise import assert_same_mesh

from vem3d.mesh import is_watertight, mesh_volumes, read_stl
from vem3d.stats import statistics_from_volumes
from vem3d.volume import write_volumes

LUCCHI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lucchi_pp_train"
VOXEL_NM = (5.0, 5.0, 5.0)
LUCCHI_OBJECTS = 43  # separate 3D mitochondria in the expert labels (the data's README)

pytestmark = pytest.mark.skipif(not LUCCHI.is_dir(), reason=f"real data not found at {LUCCHI}")


def test_lucchi_mitochondria_mesh_closed_and_measured_the_same_whole_and_block_by_block(tmp_path):
    labels = [LUCCHI / "labels"]  # 165 slices of 768 x 1024, 255 = mitochondrion
    results = {}
    for name, block_size in (("whole", 0), ("blocks", 64)):
        volume = tmp_path / f"{name}.zarr"
        cleaned = write_volumes(
            {"mitochondrion": labels}, volume, VOXEL_NM, min_object_voxels=0, fill_cavities=False,
            block_size=block_size, workers=2,
        )
        meshes = mesh_volumes(
            volume, tmp_path / f"{name}-meshes", tmp_path / f"{name}-meshes.tsv", block_size=block_size,
            cache_dir=tmp_path / f"{name}-cache", workers=2,
        )
        statistics_from_volumes(
            volume, tmp_path / f"{name}-objects.tsv", tmp_path / f"{name}-summary.tsv", block_size=block_size,
            workers=2,
        )
        assert cleaned.loc[0, "objects"] == meshes.loc[0, "objects"] == LUCCHI_OBJECTS
        results[name] = (
            read_stl(tmp_path / f"{name}-meshes" / "mitochondrion.stl"),
            pd.read_csv(tmp_path / f"{name}-objects.tsv", sep="\t"),
            meshes,
        )
    (vertices, faces), objects, meshes = results["blocks"]
    # Closed as written: every edge of the STL, its corners joined by position, in two faces.
    assert is_watertight(faces)
    assert len(faces) == meshes.loc[0, "faces"]
    assert_same_mesh((vertices, faces), results["whole"][0])
    pd.testing.assert_frame_equal(objects, results["whole"][1])
    assert len(objects) == LUCCHI_OBJECTS
    assert objects["voxels"].sum() == meshes.loc[0, "foreground_voxels"]
    # Each mitochondrion's smoothed mesh encloses about its voxels' volume (not the
    # few-voxel pieces cut off at the stack's edges, which smoothing shrinks or blurs away).
    whole_ones = objects[objects["voxels"] >= 1000]
    assert len(whole_ones) == 36  # the other 7 are specks of 1 or 2 voxels
    np.testing.assert_allclose(whole_ones["mesh_volume_um3"], whole_ones["volume_um3"], rtol=0.1)
