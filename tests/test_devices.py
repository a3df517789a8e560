import logging

import keras
import pytest

from vem3d.devices import GPUMissingError, check_devices


@pytest.fixture
def devices(monkeypatch):
    """Pretend the Keras backend sees the devices given to the returned setter."""

    def see(*names):
        monkeypatch.setattr(keras.distribution, "list_devices", lambda: list(names))

    return see


def test_logs_devices_and_cuda_visible_devices(devices, monkeypatch, caplog):
    devices("gpu:0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with caplog.at_level(logging.INFO, logger="vem3d"):
        assert check_devices(gpu_required=True) == ["gpu:0"]
    assert "sees gpu:0; CUDA_VISIBLE_DEVICES=3" in caplog.text


def test_cpu_only_is_a_warning_when_no_gpu_is_required(devices, monkeypatch, caplog):
    devices("cpu:0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with caplog.at_level(logging.INFO, logger="vem3d"):
        assert check_devices(gpu_required=False) == []
    assert "sees cpu:0; CUDA_VISIBLE_DEVICES=<unset>" in caplog.text
    assert "no GPU visible" in caplog.text


def test_missing_gpu_stops_when_one_is_required(devices, monkeypatch):
    devices("cpu:0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(GPUMissingError, match=r"gpu.required is true .* sees no GPU \(CUDA_VISIBLE_DEVICES=0\)"):
        check_devices(gpu_required=True)
