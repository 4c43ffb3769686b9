"""SegFormer-B0: shapes, input check, gradients, size, determinism, ONNX Runtime parity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from neoseg.train.models.segformer import SegFormer


@pytest.fixture(scope="module")
def model() -> SegFormer:
    torch.manual_seed(0)
    return SegFormer().eval()


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (2, 1, 64, 96), (3, 1, 128, 64)])
def test_output_shape_is_input_size_with_one_logit_per_class(model, shape):
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 11, shape[2], shape[3])
    assert out.dtype == torch.float32


def test_in_channels_and_num_classes_are_honoured():
    net = SegFormer(in_channels=3, num_classes=5).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5, 64, 64)


@pytest.mark.parametrize("h, w, padded", [(64, 70, "(64, 96)"), (48, 64, "(64, 64)")])
def test_size_not_divisible_by_32_raises_with_padding_hint(model, h, w, padded):
    with pytest.raises(ValueError) as err:
        model(torch.randn(1, 1, h, w))
    message = str(err.value)
    assert f"height={h}, width={w}" in message
    assert "divisible by 32" in message and f"Pad your images to shape {padded}" in message


def test_wrong_number_of_stages_raises():
    with pytest.raises(ValueError, match="4 stages"):
        SegFormer(depths=(2, 2, 2))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = SegFormer(drop_path=0.0).train()
    net(torch.randn(2, 1, 64, 64)).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_parameter_count_matches_b0():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # Reference SegFormer-B0 (3 channels, 150 ADE20K classes): 3.3 M encoder + 0.4 M decoder.
    assert 3.6e6 < count(SegFormer(in_channels=3, num_classes=150)) < 3.9e6
    # Ours: 1 channel and 11 classes lose ~35 k parameters in the stem and the classifier.
    assert count(SegFormer()) == 3_713_835


def test_eval_mode_is_deterministic(model):
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_onnx_export_matches_onnxruntime(model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "segformer.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, torch.zeros(1, 1, 64, 64), path, opset_version=17,
                          dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {"LayerNormalization", "Softmax"} <= ops
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    for batch in (1, 2):
        x = torch.randn(batch, 1, 64, 64)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)
