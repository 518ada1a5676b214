"""Receptive fields by gradient probe, against analytic values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_featureviz.meaning import receptive_fields


def _analytic(chain: list[tuple[int, int, int, int]]) -> tuple[int, int, int]:
    """(size, stride, offset) of a plain chain of (kernel, stride, padding, dilation)."""
    size, jump, start = 1, 1, 0
    for k, s, p, d in chain:
        size += d * (k - 1) * jump
        start -= p * jump
        jump *= s
    return size, jump, start


CHAINS = [
    [(3, 1, 1, 1), (3, 1, 1, 1), (3, 1, 1, 1)],
    [(7, 2, 3, 1), (3, 2, 1, 1), (3, 1, 0, 1)],
    [(3, 1, 2, 2), (3, 2, 0, 3), (5, 1, 2, 1)],
    [(4, 4, 0, 1), (2, 2, 0, 1), (3, 1, 1, 1)],
]


@pytest.mark.parametrize("chain", CHAINS, ids=lambda c: "-".join(f"k{k}s{s}" for k, s, *_ in c))
def test_plain_chains_match_the_analytic_field(chain: list[tuple[int, int, int, int]]) -> None:
    torch.manual_seed(0)
    convs = [nn.Conv2d(3 if i == 0 else 4, 4, k, stride=s, padding=p, dilation=d)
             for i, (k, s, p, d) in enumerate(chain)]
    net = nn.Sequential(*[m for c in convs for m in (c, nn.ReLU())])
    fields = receptive_fields(net, (3, 48, 48))
    for depth in range(len(chain)):
        size, stride, offset = _analytic(chain[: depth + 1])
        rf = fields[str(2 * depth)]
        assert (rf.size, rf.stride, rf.offset) == ((size,) * 2, (stride,) * 2, (offset,) * 2)
        assert not rf.unbounded


class _Branches(nn.Module):
    """A k3 and a k7 branch, concatenated, then a 1x1 conv: its field is the larger one."""

    def __init__(self) -> None:
        super().__init__()
        self.k3 = nn.Conv2d(3, 4, 3, padding=1)
        self.k7 = nn.Conv2d(3, 4, 7, padding=3)
        self.mix = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([self.k3(x), self.k7(x)], 1))


def test_concatenated_branches_give_the_larger_field() -> None:
    fields = receptive_fields(_Branches(), (3, 32, 32))
    assert fields["k3"].size == (3, 3)
    assert fields["mix"].size == (7, 7) and fields["mix"].offset == (-3, -3)


def test_resnet18_with_residuals_and_max_pooling_is_measured_not_guessed() -> None:
    import torchvision

    model = torchvision.models.resnet18().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    fields = receptive_fields(model, (3, 64, 64), layers=names)
    # conv1 7/2 pad 3, then max pool 3/2 pad 1 (dense in the probe), then 3x3 convs at stride 4.
    assert (fields["conv1"].size, fields["conv1"].stride, fields["conv1"].offset) == (
        (7, 7), (2, 2), (-3, -3))
    assert (fields["layer1.0.conv1"].size, fields["layer1.0.conv1"].offset) == ((19, 19), (-9, -9))
    assert fields["layer1.0.conv2"].size == (27, 27) and fields["layer1.0.conv2"].stride == (4, 4)
    assert fields["layer1.0.conv1"].box(0, 0) == (0, 0, 10, 10)
    # The model is untouched: weights, BatchNorm statistics and train flags.
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_deep_fields_larger_than_the_input_are_measured_on_a_larger_probe() -> None:
    net = nn.Sequential(*[nn.Conv2d(3, 3, 5, padding=2) for _ in range(6)])  # field 25
    rf = receptive_fields(net, (3, 16, 16))["5"]
    assert rf.size == (25, 25) and rf.offset == (-12, -12) and not rf.unbounded
    assert rf.box(8, 8) == (0, 0, 16, 16) and rf.covers()


def test_global_pooling_upstream_is_unbounded() -> None:
    class Global(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return self.b(y + y.mean((2, 3), keepdim=True))

    rf = receptive_fields(Global(), (3, 20, 20))["b"]
    assert rf.unbounded and rf.box(3, 3) == (0, 0, 20, 20)


def test_timm_conv2d_same_padding() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    net = nn.Sequential(timm_layers.Conv2dSame(3, 4, 3, stride=2), nn.ReLU(),
                        timm_layers.Conv2dSame(4, 4, 3, stride=2))
    fields = receptive_fields(net, (3, 32, 32))
    # TF "same": 32 -> pad 1 at the bottom/right only, so location 0 starts at pixel 0.
    assert (fields["0"].size, fields["0"].stride, fields["0"].offset) == ((3, 3), (2, 2), (0, 0))
    assert (fields["2"].size, fields["2"].stride, fields["2"].offset) == ((7, 7), (4, 4), (0, 0))


def test_bad_input() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="input_size"):
        receptive_fields(net, (32, 32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_size must be positive"):
        receptive_fields(net, (3, 0, 32))
    with pytest.raises(ValueError, match="matches no conv layer"):
        receptive_fields(net, (3, 8, 8), layers="1")
    with pytest.raises(RuntimeError, match="probe forward"):
        receptive_fields(nn.Sequential(nn.Conv2d(3, 4, 3)), (1, 8, 8))
