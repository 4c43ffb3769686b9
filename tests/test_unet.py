import pytest
import torch

from neoseg.train.models import create_model


def test_paper_unet_shape_and_size():
    model = create_model("unet", 1, 11)
    assert sum(p.numel() for p in model.parameters()) == 1_942_459  # performance.md: 1.94 M
    assert model(torch.zeros(2, 1, 32, 48)).shape == (2, 11, 32, 48)


def test_depth_and_widths_are_configurable():
    model = create_model("unet", 1, 5, widths=[4, 8, 16])
    assert model.divisor == 4 and len(model.down) == 3 and len(model.up) == 2
    assert model(torch.zeros(1, 1, 12, 8)).shape == (1, 5, 12, 8)


def test_bad_input_size_names_the_fix():
    with pytest.raises(ValueError, match=r"divisible by 16.*\(48, 64\)"):
        create_model("unet")(torch.zeros(1, 1, 40, 50))


def test_unknown_model_lists_the_available():
    with pytest.raises(ValueError, match="unet, segformer"):
        create_model("resnet")
