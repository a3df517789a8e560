import numpy as np

from vem3d.augment import augment_pair, dihedral, elastic_deform, section_defect, undo_dihedral


def test_the_eight_symmetries_are_distinct_and_invertible():
    image = np.arange(16).reshape(4, 4)
    results = {dihedral(image, index).tobytes() for index in range(8)}
    assert len(results) == 8


def test_image_and_mask_stay_aligned():
    rng = np.random.default_rng(1)
    image = rng.random((32, 32)).astype(np.float32)
    mask = (image > 0.5).astype(np.uint8)
    for seed in range(20):
        augmented, augmented_mask = augment_pair(
            image,
            mask,
            np.random.default_rng(seed),
            intensity=0,
            gamma_range=(1, 1),
            noise=0,
            elastic_probability=0,
            blur_probability=0,
            defect_probability=0,
        )
        np.testing.assert_array_equal(augmented_mask, (augmented > 0.5).astype(np.uint8))


def test_elastic_deformation_moves_image_and_mask_together():
    rng = np.random.default_rng(3)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:50] = 1
    image = mask.astype(np.float32)
    warped_image, warped_mask = elastic_deform(image, mask, rng, alpha=6)
    assert not np.array_equal(warped_mask, mask)  # it did deform
    # Where the interpolated image is clearly inside or outside, the mask agrees.
    clear = np.abs(warped_image - 0.5) > 0.45
    np.testing.assert_array_equal(warped_mask[clear], (warped_image[clear] > 0.5).astype(np.uint8))


def test_intensity_changes_touch_the_image_only_and_stay_in_range():
    rng = np.random.default_rng(2)
    image = rng.random((16, 24)).astype(np.float32)
    mask = np.ones((16, 24), np.uint8)
    augmented, augmented_mask = augment_pair(image, mask, rng, intensity=0.5, noise=0.2)
    assert augmented.shape == (16, 24) and augmented.dtype == np.float32
    assert 0 <= augmented.min() and augmented.max() <= 1
    assert np.all(augmented_mask == 1)


def test_undo_dihedral_maps_each_symmetry_back_on_any_two_axes():
    batch = np.arange(2 * 3 * 5 * 2).reshape(2, 3, 5, 2)  # non-square, so a wrong turn shows
    square = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    for index in range(8):
        np.testing.assert_array_equal(undo_dihedral(dihedral(batch, index, axes=(1, 2)), index, axes=(1, 2)), batch)
        np.testing.assert_array_equal(dihedral(square, index, axes=(1, 2))[0], dihedral(square[0], index))


def test_every_section_defect_darkens_a_stripe_of_the_patch():
    # A defect whose line missed the patch would leave it as it was: fewer defects than asked for.
    rng = np.random.default_rng(0)
    patch = np.ones((64, 96), np.float32)
    for _ in range(300):
        damaged = section_defect(patch, rng)
        assert (damaged < 1).any() and (damaged == 1).mean() > 0.8
