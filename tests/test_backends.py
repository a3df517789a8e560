"""The model, training and segmentation run on every installed Keras backend, and
weights saved under one backend load under another."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

BACKENDS = [name for name in ("tensorflow", "jax", "torch") if importlib.util.find_spec(name)]

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    from vem3d.segment import load_model, predict_tiled
    from vem3d.train import TrainingConfig, save_weights, train_unet
    from vem3d.unet import UNetConfig

    weights_in, weights_out, predictions_out = sys.argv[1:4]
    config = UNetConfig(depth=2, base_filters=4)
    rng = np.random.default_rng(0)
    image = rng.random((48, 40)).astype(np.float32)
    if weights_in == "-":
        masks = [(rng.random((32, 32)) > 0.5).astype(np.uint8) for _ in range(2)]
        images = [mask * 0.5 + 0.25 for mask in masks]
        model, _ = train_unet(images, masks, config, TrainingConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32), weights_out + ".ck")
        save_weights(model, weights_out)
    else:
        model = load_model(weights_in, config)
    np.save(predictions_out, predict_tiled(model.predict_on_batch, image, tile_size=32, overlap=8))
    print(keras.backend.backend())
    """
)


def run(backend, *arguments):
    environment = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, arguments)], env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(backend)


@pytest.mark.skipif(len(BACKENDS) < 2, reason=f"only {BACKENDS} installed; needs a second Keras backend (jax or torch)")
def test_weights_trained_under_one_backend_predict_the_same_under_the_others(tmp_path):
    first, *others = BACKENDS
    run(first, "-", tmp_path / "unet.weights.h5", tmp_path / f"{first}.npy")
    reference = np.load(tmp_path / f"{first}.npy")
    for backend in others:
        run(backend, tmp_path / "unet.weights.h5", "-", tmp_path / f"{backend}.npy")
        np.testing.assert_allclose(np.load(tmp_path / f"{backend}.npy"), reference, atol=2e-3, err_msg=backend)  # TF32 matmuls on GPUs
        run(backend, "-", tmp_path / f"{backend}.weights.h5", tmp_path / f"{backend}-trained.npy")  # trains there too
