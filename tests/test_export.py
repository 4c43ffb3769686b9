"""neoseg-export: self-describing ONNX verified against PyTorch; the TensorRT engine's header and
refusals (TensorRT itself is not installed here: see docs/inference.md)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from neoseg.cli.export import app
from neoseg.data.dhcp import find_sessions
from neoseg.export import onnx_export
from neoseg.export.onnx_export import ParityError, export_onnx, verification_slices
from neoseg.runtime.backends import BackendUnavailable, OrtBackend, open_backend
from neoseg.runtime.engine import EngineHeader, EngineMismatchError, read_engine, write_engine
from neoseg.runtime.model import ModelInfo, info_from_checkpoint
from neoseg.train import checkpoint
from neoseg.train.volumes import load_canonical

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    from neoseg.benchmarks.toy import train_toy

    folder = tmp_path_factory.mktemp("export")
    ckpt = train_toy(folder / "toy.pt", find_sessions(tiny_dataset)[:4], 32, widths=(8, 16), steps=40)
    return checkpoint.load(ckpt), ckpt


@pytest.fixture(scope="module")
def slices(trained, tiny_dataset):
    images = [load_canonical(s.t2, np.float32)[0] for s in find_sessions(tiny_dataset)[4:6]]
    return verification_slices(images, info_from_checkpoint(trained[0]))


def test_metadata_round_trips_through_the_model_file(trained, tmp_path):
    loaded, _ = trained
    info = info_from_checkpoint(loaded)
    export_onnx(loaded.model, info, tmp_path / "m.onnx")
    back = OrtBackend(tmp_path / "m.onnx").info  # read through onnxruntime, no onnx package
    assert back == info
    assert back.hierarchy.names[-1] == "tcv" and back.hierarchy.channels[-1].children == ("cgm", "wm", "dgm")
    assert back.spacing == (2.0, 2.0, 2.0) and back.slice_size == 32 and back.config_digest == loaded.config.digest()
    proto = onnx.load(str(tmp_path / "m.onnx"))
    keys = {p.key for p in proto.metadata_props}
    assert {"neoseg.hierarchy", "neoseg.thresholds", "neoseg.preprocess", "neoseg.version",
            "neoseg.config_digest", "neoseg.config"} <= keys
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    with pytest.raises(ValueError, match="not a neoseg model"):
        ModelInfo.from_metadata({}, "x.onnx")


def test_onnx_runtime_matches_torch(trained, slices, tmp_path):
    loaded, _ = trained
    info = info_from_checkpoint(loaded)
    report = export_onnx(loaded.model, info, tmp_path / "m.onnx", verify_on=slices)
    assert report.max_abs_diff < 1e-4 and min(report.dice.values()) >= 0.999
    masks = info.hierarchy.masks(onnx_export.torch_logits(loaded.model, slices), info.logit_thresholds, 1)
    assert 0 < masks[:, info.hierarchy.index("tcv")].mean() < 1  # the check compares real structures
    # any batch size, and (U-Net) any in-plane size divisible by the network's divisor
    ort = OrtBackend(tmp_path / "m.onnx")
    x = slices[:3, :, 4:28, 2:30]
    np.testing.assert_allclose(ort.run(x), onnx_export.torch_logits(loaded.model, x), atol=1e-4)


def test_failed_verification_writes_nothing(trained, slices, tmp_path, monkeypatch):
    loaded, _ = trained
    info = info_from_checkpoint(loaded)
    bad = onnx_export.ParityReport("a", "b", 1, 0.5, {"cgm": 0.9})
    monkeypatch.setattr(onnx_export, "compare_onnx", lambda *a: bad)
    with pytest.raises(ParityError, match=r"cgm Dice 0.90000 < 0.999.*nothing was written"):
        export_onnx(loaded.model, info, tmp_path / "m.onnx", verify_on=slices)
    assert list(tmp_path.iterdir()) == []


def test_export_command(trained, tiny_dataset, tmp_path):
    _, ckpt = trained
    out = tmp_path / "model.onnx"
    args = [str(ckpt), "-o", str(out), "--data", str(tiny_dataset)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "largest logit difference" in result.output and "tcv 1.0000" in result.output
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "already exists" in result.output and "--overwrite" in result.output
    assert runner.invoke(app, args + ["--overwrite", "--thresholds", "0.4"]).exit_code == 0
    assert OrtBackend(out).info.thresholds == (0.4,) * 11
    # the old spelling --output still works; without an output the command says which option is missing
    result = runner.invoke(app, [str(ckpt), "--output", str(tmp_path / "old.onnx"), "--verify-scans", "0"])
    assert result.exit_code == 0 and (tmp_path / "old.onnx").is_file(), result.output
    result = runner.invoke(app, [str(ckpt), "--verify-scans", "0"])
    assert result.exit_code == 2 and "missing -o/--out FILE" in result.output


def test_trt_without_tensorrt_says_what_to_install_and_writes_nothing(trained, tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    _, ckpt = trained
    result = runner.invoke(app, [str(ckpt), "-o", str(tmp_path / "m.onnx"), "--trt", "--verify-scans", "0"])
    assert result.exit_code == 2
    assert "TensorRT is not installed: pip install -e '.[trt]'" in result.output
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


# ---- TensorRT engine files (no TensorRT needed) --------------------------------------------
def _header(**changes) -> EngineHeader:
    base = dict(tensorrt="10.3.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", onnx_sha256="ab" * 32,
                metadata={"neoseg.format": "x"})
    return EngineHeader(**{**base, **changes})


def test_engine_header_round_trip_and_mismatch_refusal(tmp_path, monkeypatch):
    from neoseg.runtime import trt_backend

    path = tmp_path / "m.engine"
    write_engine(path, _header(), b"\x00serialized")
    header, blob = read_engine(path)
    assert header == _header() and blob == b"\x00serialized"
    with pytest.raises(ValueError, match="not a neoseg TensorRT engine"):
        (tmp_path / "x.engine").write_bytes(b"plan")
        read_engine(tmp_path / "x.engine")
    # the runtime compares the header with the machine before deserializing anything
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: SimpleNamespace(__version__="10.5.0"))
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda: ("NVIDIA A100-SXM4-80GB", "8.0"))
    with pytest.raises(EngineMismatchError) as e:
        open_backend(path, "auto")
    message = str(e.value)
    assert "TensorRT 10.3.0 for NVIDIA H100 80GB HBM3 (sm 9.0)" in message
    assert "TensorRT 10.5.0 and NVIDIA A100-SXM4-80GB (sm 8.0)" in message and "rebuild" in message
    assert "\n" not in message


def test_engine_without_tensorrt_names_the_install(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    write_engine(tmp_path / "m.engine", _header(), b"")
    with pytest.raises(BackendUnavailable, match=r"TensorRT is not installed: pip install -e '\.\[trt\]'"):
        open_backend(tmp_path / "m.engine", "tensorrt")


def test_fp16_engine_pins_normalisation_and_softmax_to_fp32():
    from neoseg.export.trt_engine import fp32_layers

    kinds = SimpleNamespace(NORMALIZATION="norm", SOFTMAX="softmax", REDUCE="reduce", ELEMENTWISE="ew",
                            UNARY="unary", CONVOLUTION="conv")

    class Layer:
        def __init__(self, name, kind, op=None):
            self.name, self.type, self.op, self.num_outputs, self.outputs = name, kind, op, 1, {}
            self.precision = "fp16"

        def set_output_type(self, k, dtype):
            self.outputs[k] = dtype

    trt = SimpleNamespace(LayerType=kinds, float32="fp32", IElementWiseLayer=Layer, IUnaryLayer=Layer,
                          ElementWiseOperation=SimpleNamespace(POW="pow"), UnaryOperation=SimpleNamespace(SQRT="sqrt"))
    layers = [Layer("conv", "conv"), Layer("ln", "norm"), Layer("attn", "softmax"), Layer("mean", "reduce"),
              Layer("pow", "ew", "pow"), Layer("add", "ew", "add"), Layer("sqrt", "unary", "sqrt")]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    assert fp32_layers(network, trt) == ["ln", "attn", "mean", "pow", "sqrt"]
    assert [la.precision for la in layers] == ["fp16", "fp32", "fp32", "fp32", "fp32", "fp16", "fp32"]
    assert layers[1].outputs == {0: "fp32"}


def test_torch_backend_matches_the_onnx_model(trained, slices, tmp_path):
    """The optional torch backend (BatchNorm folded into the convolutions) computes the same logits."""
    loaded, ckpt = trained
    export_onnx(loaded.model, info_from_checkpoint(loaded), tmp_path / "m.onnx")
    import neoseg.train.torch_backend  # noqa: F401 - provides the torch backends

    torch_backend = open_backend(ckpt, "torch-cpu")
    assert torch_backend.info == OrtBackend(tmp_path / "m.onnx").info
    np.testing.assert_allclose(torch_backend.run(slices[:4]), OrtBackend(tmp_path / "m.onnx").run(slices[:4]), atol=1e-4)


def test_failed_engine_build_leaves_no_onnx_behind(trained, tmp_path, monkeypatch):
    """--trt writes the model and its engine together: when the engine build fails after the ONNX
    export succeeded, neither file is left (and an existing model is kept as it was)."""
    from neoseg.export import trt_engine
    from neoseg.runtime import trt_backend

    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: SimpleNamespace(__version__="10.5.0"))
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda: ("NVIDIA H100", "9.0"))
    built = []

    def failing_build(onnx_path, info, out, *args, **kwargs):
        built.append(Path(onnx_path).stat().st_size)  # the ONNX model was written before the build
        raise trt_engine.EngineBuildError(f"TensorRT failed to build an engine from {onnx_path}")

    monkeypatch.setattr(trt_engine, "build_engine", failing_build)
    _, ckpt = trained
    result = runner.invoke(app, [str(ckpt), "-o", str(tmp_path / "m.onnx"), "--trt", "--verify-scans", "0"])
    assert result.exit_code == 2 and "failed to build an engine" in result.output, result.output
    assert "Traceback" not in result.output and built and built[0] > 0
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "m.onnx").write_bytes(b"the user's model")
    result = runner.invoke(app, [str(ckpt), "-o", str(tmp_path / "m.onnx"), "--trt", "--verify-scans", "0",
                                 "--overwrite"])
    assert result.exit_code == 2 and len(built) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert (tmp_path / "m.onnx").read_bytes() == b"the user's model"
