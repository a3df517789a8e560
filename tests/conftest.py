import itertools
import os

import pytest

# Quiet TensorFlow's start-up chatter in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def volume_of(tmp_path):
    """A function: the cleaned volumes (vem3d.volume.write_volumes) of some mask folders,
    written into a new folder under tmp_path/volumes; returns their path."""
    from vem3d.volume import write_volumes

    numbers = itertools.count()

    def write(mask_dirs, voxel_size_nm=(30.0, 5.0, 4.0), **clean_up):
        path = tmp_path / "volumes" / f"{next(numbers)}.zarr"
        path.parent.mkdir(exist_ok=True)
        write_volumes(mask_dirs, path, voxel_size_nm, **clean_up)
        return path

    return write
