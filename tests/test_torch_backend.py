"""The torch backend's on-device decoding gives what the host-side decoding gives."""

import numpy as np
import pytest

import neoseg.train.torch_backend  # noqa: F401  registers the torch backends with the runtime
from neoseg.data.dhcp import find_sessions
from neoseg.runtime.backends import open_backend
from neoseg.runtime.files import load_scan
from neoseg.runtime.pipeline import Segmenter


@pytest.fixture(scope="module")
def toy(tiny_dataset, tmp_path_factory):
    from neoseg.benchmarks.toy import toy_onnx

    return toy_onnx(tmp_path_factory.mktemp("toy"), find_sessions(tiny_dataset)[:4])


def test_run_decoded_equals_decoding_the_logits(toy):
    backend = open_backend(toy[0], "torch-cpu")
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    labels, masks = backend.run_decoded(x)
    host = Segmenter(backend).decode(backend.run(x), axis=1)
    assert np.array_equal(labels, host.labels) and labels.dtype == np.uint8
    assert np.array_equal(masks, host.masks) and masks.dtype == np.uint8


def test_torch_and_onnx_backends_segment_a_scan_alike(toy, tiny_dataset):
    img = load_scan(find_sessions(tiny_dataset)[5].t2)
    data = np.asanyarray(img.dataobj)
    via_torch = Segmenter(open_backend(toy[0], "torch-cpu")).segment(data, img.affine, img.header.get_zooms())
    via_onnx = Segmenter(open_backend(toy[1], "ort-cpu")).segment(data, img.affine, img.header.get_zooms())
    assert np.mean(via_torch.labels == via_onnx.labels) > 0.999
    assert np.mean(via_torch.masks == via_onnx.masks) > 0.999
