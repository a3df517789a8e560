import numpy as np

from vem3d.synth import synthesise_stack, write_demo_stack


def test_same_seed_same_stack_other_seed_other_stack():
    first, truth = synthesise_stack(n_slices=4, size=96, seed=3)
    again, _ = synthesise_stack(n_slices=4, size=96, seed=3)
    other, _ = synthesise_stack(n_slices=4, size=96, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.uint8 and truth.dtype == bool and first.shape == truth.shape


def test_mitochondria_are_darker_than_cytoplasm_and_a_minority():
    images, truth = synthesise_stack(n_slices=16, size=256, seed=0)
    assert 0.02 < truth.mean() < 0.15  # Lucchi++ has about 7 % mitochondria
    assert images[truth].mean() < images[~truth].mean() - 40


def test_demo_writes_sparse_labels_and_full_ground_truth(tmp_path):
    folders = write_demo_stack(tmp_path, n_slices=8, size=64, label_every=4)
    assert len(list(folders["slices"].iterdir())) == 8
    assert sorted(path.name for path in folders["labels"].iterdir()) == ["slice_0002.png", "slice_0006.png"]
    assert len(list(folders["ground_truth"].iterdir())) == 8


def test_counts_of_structures_can_be_set_including_none():
    _, none = synthesise_stack(n_slices=8, size=64, seed=0, n_mitochondria=0)
    _, some = synthesise_stack(n_slices=8, size=64, seed=0, n_mitochondria=6)
    assert not none.any() and some.any()
