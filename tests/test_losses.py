"""The loss maths, pinned with hand-worked values on a tiny 3-channel hierarchy:
channel 0 = parent P, channels 1 and 2 = its children A and B."""

import math

import pytest
import torch

from neoseg.core.hierarchy import UNKNOWN, Hierarchy, builtin
from neoseg.train.losses import make_loss

H = Hierarchy.from_dict({"channels": [{"name": "P", "value": 3, "children": ["A", "B"]},
                                      {"name": "A", "value": 1}, {"name": "B", "value": 2}]})
L2 = math.log(2)


def nll(t, x):
    """-B(t, x) by hand: -(t log s(x) + (1 - t) log(1 - s(x)))."""
    s = 1 / (1 + math.exp(-x))
    return -(t * math.log(s) + (1 - t) * math.log(1 - s))


def batch(logits, target):
    """(C,) lists -> (1, C, 1, 1) tensors."""
    x = torch.tensor(logits, dtype=torch.float64).view(1, -1, 1, 1).requires_grad_(True)
    return x, torch.tensor(target, dtype=torch.uint8).view(1, -1, 1, 1)


def test_bce_worked_value():
    x, y = batch([0.0, 2.0, -1.0], [1, 1, 0])
    expected = (L2 + nll(1, 2.0) + nll(0, -1.0)) / 3
    assert make_loss("bce", H)(x, y).item() == pytest.approx(expected, rel=1e-12)


def test_bce_refuses_unknown_entries():
    x, y = batch([0.0, 0.0, 0.0], [1, UNKNOWN, UNKNOWN])
    with pytest.raises(ValueError, match="unknown"):
        make_loss("bce", H)(x, y)


def test_iuc_ignores_unknown_children_and_divides_by_all_entries():
    x, y = batch([0.0, 2.0, -1.0], [1, UNKNOWN, UNKNOWN])
    assert make_loss("iuc", H)(x, y).item() == pytest.approx(L2 / 3, rel=1e-12)  # paper: 1/|N|
    assert make_loss("iuc", H, "observed")(x, y).item() == pytest.approx(L2, rel=1e-12)


def test_iuc_equals_bce_on_fully_labelled_targets():
    x = torch.randn(2, 11, 4, 4)
    y = torch.from_numpy(builtin().encode(torch.randint(0, 10, (2, 4, 4)).numpy())).permute(1, 0, 2, 3)
    assert make_loss("iuc", builtin())(x, y).item() == pytest.approx(make_loss("bce", builtin())(x, y).item())


@pytest.mark.parametrize("reduction", ["mean", "observed"])
def test_iuc_gives_unknown_entries_exactly_zero_gradient(reduction):
    x, y = batch([0.3, 2.0, -1.0], [1, UNKNOWN, UNKNOWN])
    make_loss("iuc", H, reduction)(x, y).backward()
    g = x.grad.view(-1)
    assert g[1].item() == 0.0 and g[2].item() == 0.0
    assert g[0].item() == pytest.approx((1 / (1 + math.exp(-0.3)) - 1) / (3 if reduction == "mean" else 1))


def test_huc_pseudo_labels_the_most_probable_sibling():
    x, y = batch([0.0, 2.0, -1.0], [1, UNKNOWN, UNKNOWN])  # A (2.0) beats B (-1.0)
    expected = (L2 + nll(1, 2.0) + nll(0, -1.0)) / 3
    loss = make_loss("huc", H)(x, y)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert x.grad.view(-1)[1:].tolist() == pytest.approx([(s(2.0) - 1) / 3, s(-1.0) / 3])


def test_huc_children_of_an_absent_parent_get_zero():
    x, y = batch([0.0, 2.0, -1.0], [0, UNKNOWN, UNKNOWN])
    expected = (L2 + nll(0, 2.0) + nll(0, -1.0)) / 3
    assert make_loss("huc", H)(x, y).item() == pytest.approx(expected, rel=1e-12)


def test_weight_uses_the_undetached_prediction_as_target():
    x, y = batch([0.0, 2.0, -1.0], [1, UNKNOWN, UNKNOWN])
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    ent = lambda v: -(s(v) * math.log(s(v)) + (1 - s(v)) * math.log(1 - s(v)))  # noqa: E731
    loss = make_loss("weight", H)(x, y)
    assert loss.item() == pytest.approx((L2 + ent(2.0) + ent(-1.0)) / 3, rel=1e-12)
    loss.backward()
    # d/dx of the binary entropy of sigmoid(x) is -x * s(x) * (1 - s(x)): nonzero, as in the prototype
    for i, v in ((1, 2.0), (2, -1.0)):
        assert x.grad.view(-1)[i].item() == pytest.approx(-v * s(v) * (1 - s(v)) / 3, rel=1e-9)


def test_wnorm_normalises_targets_over_the_sibling_group():
    x, y = batch([0.0, 2.0, -1.0], [1, UNKNOWN, UNKNOWN])
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    ta, tb = s(2.0) / (s(2.0) + s(-1.0)), s(-1.0) / (s(2.0) + s(-1.0))
    loss = make_loss("wnorm", H)(x, y)
    assert loss.item() == pytest.approx((L2 + nll(ta, 2.0) + nll(tb, -1.0)) / 3, rel=1e-12)
    loss.backward()
    assert x.grad.view(-1)[1].item() != 0.0 and x.grad.view(-1)[2].item() != 0.0


def test_weight_and_wnorm_equal_iuc_without_unknowns():
    x, y = batch([0.5, 2.0, -1.0], [1, 1, 0])
    iuc = make_loss("iuc", H)(x, y).item()
    for name in ("huc", "weight", "wnorm"):
        assert make_loss(name, H)(x, y).item() == pytest.approx(iuc)


def test_stable_for_extreme_logits():
    x, y = batch([80.0, -80.0, 80.0], [0, 1, 1])
    value = make_loss("bce", H)(x, y).item()
    assert math.isfinite(value) and value == pytest.approx(160 / 3, rel=1e-6)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="available"):
        make_loss("dice", H)
    with pytest.raises(ValueError, match="reduction"):
        make_loss("iuc", H, "sum")
