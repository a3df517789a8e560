"""Several classes: label maps and per-class folders, channels, training, clean-up and scores per class."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from vem3d.labels import class_values, decode_label_map, label_slices, one_hot, read_class_labels, resize_labels
from vem3d.metrics import evaluate_volumes
from vem3d.preprocess import preprocess_slice
from vem3d.slices import SliceError
from vem3d.train import TrainingConfig, labelled_pairs, train_unet
from vem3d.unet import UNetConfig
from vem3d.volume import open_volumes

VNC = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "vnc_drosophila"
# VNC label maps: membranes by orientation and junctions, glia, mitochondria, synapses, cell interior.
VNC_VALUES = {"membrane": [0, 32, 64, 96, 128], "mitochondrion": [191]}


def test_label_map_values_go_to_their_class_and_the_rest_is_background():
    values = class_values(["membrane", "mitochondrion"], VNC_VALUES)
    label_map = np.array([[0, 32, 128], [191, 255, 159]], np.uint8)
    np.testing.assert_array_equal(decode_label_map(label_map, values), [[1, 1, 1], [2, 0, 0]])
    # By default a class's value is its position, and one class is any non-zero pixel.
    assert class_values(["a", "b"]) == [[1], [2]]
    np.testing.assert_array_equal(decode_label_map(np.array([0, 3, 255]), class_values(["a"])), [0, 1, 1])
    # 16-bit values beyond every class's value are background, not an index error.
    np.testing.assert_array_equal(decode_label_map(np.array([2, 40000], np.uint16), class_values(["a", "b"])), [2, 0])


def test_palette_float_and_signed_label_maps_give_their_values(tmp_path):
    values = class_values(["a", "b"])
    indices = np.array([[0, 1], [2, 1]], np.uint8)
    # Fiji's 8-bit label images with a lookup table: the indices count, not the colours.
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 3 * 253)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_class_labels([tmp_path / "palette.png"], values), indices)
    tifffile.imwrite(tmp_path / "float.tif", indices.astype(np.float32))
    np.testing.assert_array_equal(read_class_labels([tmp_path / "float.tif"], values), indices)
    tifffile.imwrite(tmp_path / "fraction.tif", indices.astype(np.float32) / 2)
    with pytest.raises(SliceError, match="fraction.tif: label map holds values that are not whole numbers"):
        read_class_labels([tmp_path / "fraction.tif"], values)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(SliceError, match="empty.png: slice file is empty") as refused:
        read_class_labels([tmp_path / "empty.png"], values)
    assert str(refused.value).count("empty.png") == 1  # named once
    # A negative value is no class's, not the highest one's (numpy's negative indexing).
    np.testing.assert_array_equal(decode_label_map(np.array([-1, 1, 2], np.int16), values), [0, 1, 2])


def test_label_values_naming_an_unknown_class_or_sharing_a_value_are_refused():
    with pytest.raises(ValueError, match=r"model.label_values: unknown class name\(s\) \['mitocondrion'\]"):
        class_values(["membrane", "mitochondrion"], {"mitocondrion": [191]})
    with pytest.raises(ValueError, match="value 3 is given to both 'a' and 'b'"):
        class_values(["a", "b"], {"a": [3], "b": [3]})


def test_labels_of_a_rescaled_slice_stay_aligned_with_it(tmp_path):
    # Two classes with edges at odd pixels: nearest-neighbour halving would shift them.
    labels = np.zeros((64, 64), np.uint8)
    labels[11:41, 9:37] = 1
    labels[21:31, 45:59] = 2
    iio.imwrite(tmp_path / "s.png", labels)
    image = preprocess_slice(labels.astype(np.float32), 0, 100, scale=0.5)
    halved = resize_labels(read_class_labels([tmp_path / "s.png"], class_values(["a", "b"]), labels.shape), image.shape)
    assert halved.shape == (32, 32)
    for index in (1, 2):
        # The class's pixels in the halved labels are where its intensity in the halved image says they are.
        share = preprocess_slice((labels == index).astype(np.float32), 0, 100, scale=0.5)
        np.testing.assert_array_equal(halved == index, share > 0.5)


def test_labels_of_another_size_than_their_slice_are_refused_naming_the_file(tmp_path):
    iio.imwrite(tmp_path / "s.png", np.zeros((48, 64), np.uint8))
    with pytest.raises(SliceError, match=r"s\.png: labels of 48 x 64 pixels, but the slice they label has 64 x 64"):
        read_class_labels([tmp_path / "s.png"], class_values(["a"]), (64, 64))


def test_one_hot_puts_each_class_in_its_channel():
    labels = np.array([[0, 1], [2, 1]], np.uint8)
    targets = one_hot(labels, 2)
    assert targets.shape == (2, 2, 3)
    np.testing.assert_array_equal(targets.argmax(-1), labels)
    np.testing.assert_array_equal(one_hot(labels.clip(0, 1), 1), labels.clip(0, 1))


def _per_class_folders(root, masks_by_class):
    for name, masks in masks_by_class.items():
        (root / name).mkdir(parents=True)
        for slice_name, mask in masks.items():
            iio.imwrite(root / name / f"{slice_name}.png", mask.astype(np.uint8) * 255)
    return root


def test_one_mask_folder_per_class_reads_like_a_label_map(tmp_path):
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[3, 3] = True
    folder = _per_class_folders(tmp_path / "labels", {"a": {"s1": a}, "b": {"s1": b}})
    files = label_slices(folder, ["a", "b"])
    assert list(files) == ["s1"]
    np.testing.assert_array_equal(read_class_labels(files["s1"], class_values(["a", "b"])), a * 1 + b * 2)


def test_a_class_folder_with_an_unknown_name_or_other_slices_is_refused(tmp_path):
    mask = np.ones((4, 4), bool)
    wrong = _per_class_folders(tmp_path / "wrong", {"a": {"s1": mask}, "mitocondrion": {"s1": mask}})
    with pytest.raises(SliceError, match=r"unknown class name\(s\) \['mitocondrion'\]"):
        label_slices(wrong, ["a", "mitochondrion"])
    uneven = _per_class_folders(tmp_path / "uneven", {"a": {"s1": mask, "s2": mask}, "b": {"s1": mask}})
    with pytest.raises(SliceError, match=r"must label the same slices.*\['s2'\]"):
        label_slices(uneven, ["a", "b"])


def test_z_smoothing_bridges_a_slice_the_network_missed(tmp_path, volume_of):
    """A tube through 9 slices, missed on slice 4: smoothed across slices it is whole again."""
    probabilities = np.zeros((9, 16, 16), np.uint8)
    probabilities[:, 4:12, 4:12] = 230
    probabilities[4] = 40
    folders = {}
    for kind, volume in (("masks", (probabilities > 127) * 255), ("probabilities", probabilities)):
        folder = tmp_path / kind / "chunk0000"
        folder.mkdir(parents=True)
        for z, plane in enumerate(volume):
            iio.imwrite(folder / f"s{z}.png", plane.astype(np.uint8))
        folders[kind] = {"tube": [folder]}
    raw, smoothed = (
        open_volumes(volume_of(folders["masks"], probability_dirs=folders["probabilities"], z_smoothing_sigma=sigma))
        .classes["tube"].volume[:]
        for sigma in (0.0, 1.0)
    )
    assert not raw[4].any() and smoothed[4, 4:12, 4:12].all()
    assert smoothed.sum() == 9 * 64


def test_evaluation_scores_each_class_against_a_label_map(tmp_path, volume_of):
    truth = np.zeros((2, 8, 8), np.uint8)
    truth[:, :4] = 10  # class a: top half
    truth[:, 6:] = 20  # class b: bottom quarter
    predicted = {"a": truth == 10, "b": np.zeros_like(truth, bool)}
    predicted["b"][:, 7:] = True  # half of b found
    (tmp_path / "truth").mkdir()
    mask_dirs = {}
    for name, volume in predicted.items():
        folder = tmp_path / "masks" / name / "chunk0000"
        folder.mkdir(parents=True)
        for z, plane in enumerate(volume):
            iio.imwrite(folder / f"s{z}.png", plane.astype(np.uint8) * 255)
        mask_dirs[name] = [folder]
    for z, plane in enumerate(truth):
        iio.imwrite(tmp_path / "truth" / f"s{z}.png", plane)
    evaluate_volumes(
        volume_of(mask_dirs, fill_cavities=False), tmp_path / "truth", tmp_path / "scores.tsv",
        tmp_path / "objects.tsv", {"a": [10], "b": [20]},
    )
    scores = pd.read_csv(tmp_path / "scores.tsv", sep="\t")
    volume = scores[scores["slice"] == "volume"].set_index("class")
    assert volume.loc["a", "iou"] == 1.0 and volume.loc["b", "iou"] == 0.5 and volume.loc["b", "precision"] == 1.0
    assert list(pd.read_csv(tmp_path / "objects.tsv", sep="\t")["class"]) == ["a", "b"]


@pytest.mark.skipif(not VNC.is_dir(), reason=f"real data not found at {VNC}")
def test_multi_class_training_on_a_crop_of_real_em_lowers_the_loss(tmp_path):
    """Membranes and mitochondria of the VNC stack, from its label maps, on 128 x 128 crops."""
    classes = list(VNC_VALUES)
    values = class_values(classes, VNC_VALUES)
    names = ["00", "01", "02"]
    images = [iio.imread(VNC / "images" / f"{name}.png")[400:528, 400:528].astype(np.float32) / 255 for name in names]
    labels = [read_class_labels([VNC / "labels" / f"{name}.png"], values)[400:528, 400:528] for name in names]
    assert all(set(np.unique(label)) == {0, 1, 2} for label in labels)  # the crop holds every class
    config = TrainingConfig(epochs=3, steps_per_epoch=4, batch_size=4, patch_size=64, learning_rate=0.01)
    _, state = train_unet(
        images, [one_hot(label, 2) for label in labels], UNetConfig(depth=2, base_filters=8, n_classes=3), config,
        tmp_path / "ck",
    )
    losses = [row["loss"] for row in state["history"]]
    assert losses[-1] < losses[0]
    assert 0 <= state["history"][-1]["val_iou"] <= 1


def test_labelled_pairs_give_one_hot_targets_for_several_classes(tmp_path):
    preprocessed = tmp_path / "pre"
    preprocessed.mkdir()
    tifffile.imwrite(preprocessed / "s1.tif", np.full((8, 8), 30000, np.uint16))
    (preprocessed / "shapes.tsv").write_text("slice\trows\tcolumns\ns1\t8\t8\n")
    label_map = np.zeros((8, 8), np.uint8)
    label_map[:2] = 2
    (tmp_path / "labels").mkdir()
    iio.imwrite(tmp_path / "labels" / "s1.png", label_map)
    names, _, masks = labelled_pairs([preprocessed], [tmp_path / "labels"], ["a", "b"])
    assert names == [f"{tmp_path / 'labels'}/s1"] and masks[0].shape == (8, 8, 3)
    np.testing.assert_array_equal(masks[0].argmax(-1), label_map)
