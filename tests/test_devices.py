import logging

import keras
import pytest

from vem3d.devices import GPUMissingError, check_devices, cpu_flags, xla_speeds_up_inference


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


# Flags lines of /proc/cpuinfo, shortened: an AVX2 CPU (AMD EPYC) and an AMX one (Intel Sapphire Rapids).
AVX2_FLAGS = "fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2"
AMX_FLAGS = AVX2_FLAGS + " avx512f avx512dq avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"


def cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    processor = f"processor\t: {{}}\nvendor_id\t: X\nflags\t\t: {flags}\n\n"
    path.write_text(processor.format(0) + processor.format(1))
    return path


def test_cpu_flags_are_read_from_cpuinfo_and_empty_where_it_is_missing(tmp_path):
    assert cpu_flags(cpuinfo(tmp_path, AMX_FLAGS)) == frozenset(AMX_FLAGS.split())
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the choice of kernels is TensorFlow's")
def test_xla_compiles_inference_on_gpus_and_on_cpus_without_onednns_avx512_or_amx_kernels(tmp_path):
    # oneDNN's AMX kernels ran the U-Net 1.3 times (float32) to 2.2 times (bfloat16) faster than XLA;
    # on AVX2 CPUs XLA was the faster one.
    assert xla_speeds_up_inference(on_gpu=False, flags=cpu_flags(cpuinfo(tmp_path, AVX2_FLAGS)))
    assert not xla_speeds_up_inference(on_gpu=False, flags=cpu_flags(cpuinfo(tmp_path, AMX_FLAGS)))
    assert xla_speeds_up_inference(on_gpu=False, flags=frozenset())  # unknown CPU: as on AVX2
    assert xla_speeds_up_inference(on_gpu=True, flags=frozenset(AMX_FLAGS.split()))
