"""collect_examples on planted features: a hand-set channel that detects one pattern, found at
three depths in a noise stream."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torch_featureviz.meaning import Examples, collect_examples

SIZE = 16
#: Two planted patterns: a red blob and a vertical dark-to-bright edge (3x3, all channels).
PATTERNS = {
    "red blob": torch.tensor([3.0, -3.0, -3.0]).view(3, 1, 1).expand(3, 3, 3).clone(),
    "vertical edge": torch.tensor([-3.0, 0.0, 3.0]).view(1, 1, 3).expand(3, 3, 3).clone(),
}


class Planted(nn.Module):
    """conv1 (k3) channel 0 is a matched filter of the pattern; conv2 and conv3 (k5, stride 2)
    channel 0 sum channel 0 of the layer below: three depths that see the pattern, with fields
    3, 7 (a crop) and 15 px (more than half of a 16 px image: whole images)."""

    def __init__(self, pattern: torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 5, stride=2, padding=2)
        self.conv3 = nn.Conv2d(4, 4, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)  # in place: the hooks must reduce before it runs
        with torch.no_grad():
            self.conv1.weight[0] = pattern
            self.conv1.bias[0] = 0.0
            for conv in (self.conv2, self.conv3):
                conv.weight[0] = 0.0
                conv.weight[0, 0] = 1.0
                conv.bias[0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.bn(self.relu(self.conv3(x)))


def _stream(
    pattern: torch.Tensor, *, batches: int = 6, n: int = 8, planted: int = 4, seed: int = 1
) -> tuple[torch.Tensor, dict[int, tuple[int, int]]]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batches * n, 3, SIZE, SIZE, generator=g) * 0.2
    chosen = torch.randperm(batches * n, generator=g)[:planted].tolist()
    where = {}
    for i in chosen:
        y, x = torch.randint(0, SIZE - 2, (2,), generator=g).tolist()
        images[i, :, y:y + 3, x:x + 3] = pattern
        where[i] = (y, x)
    return images, where


@pytest.mark.parametrize("name", list(PATTERNS))
def test_planted_pattern_is_found_at_three_depths(name: str) -> None:
    pattern = PATTERNS[name]
    model = Planted(pattern).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, where = _stream(pattern)
    examples = collect_examples(model, list(images.split(8)), k=4)
    assert examples.layers == ["conv1", "conv2", "conv3"]
    for layer in examples.layers:
        best = examples[layer][0]
        # The k examples are exactly the planted images, best first.
        assert {e.index for e in best} == set(where), layer
        assert [e.value for e in best] == sorted((e.value for e in best), reverse=True)
        for e in best:
            y, x = where[e.index]
            top, left, bottom, right = e.box
            assert top <= y and left <= x and y + 3 <= bottom and x + 3 <= right, (layer, e)
            # The crop is the input inside the box (or the whole input, box marking it).
            if e.whole:
                assert torch.equal(e.crop, images[e.index])
            else:
                assert torch.equal(e.crop, images[e.index, :, top:bottom, left:right])
            assert torch.equal(e.patch(), images[e.index, :, top:bottom, left:right])
            assert e.step is None
        assert examples[layer][0][0].whole == (layer == "conv3")
    # The model is as it was: weights, BatchNorm statistics, train flags, and no hook left.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_dataloader_of_tuples_gives_the_same_examples() -> None:
    pattern = PATTERNS["red blob"]
    images, where = _stream(pattern)
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images))), batch_size=5)
    from_loader = collect_examples(Planted(pattern), loader, k=4, layers="conv2")
    from_list = collect_examples(Planted(pattern), list(images.split(8)), k=4, layers="conv2")
    assert from_loader.layers == ["conv2"]
    for c in range(4):
        got, want = from_loader["conv2"][c], from_list["conv2"][c]
        assert [e.index for e in got] == [e.index for e in want]
    assert {e.index for e in from_loader["conv2"][0]} == set(where)


def test_max_channels_and_save_load(tmp_path) -> None:
    pattern = PATTERNS["vertical edge"]
    images, _ = _stream(pattern, batches=2)
    examples = collect_examples(Planted(pattern), [images], k=3, max_channels=2)
    assert all(list(examples[layer]) == [0, 1] for layer in examples)
    assert all(len(examples[layer][c]) == 3 for layer in examples for c in (0, 1))
    examples.save(tmp_path / "examples.pt")
    back = Examples.load(tmp_path / "examples.pt")
    for layer in examples:
        for c in examples[layer]:
            for a, b in zip(examples[layer][c], back[layer][c], strict=True):
                assert (a.index, a.box, a.location) == (b.index, b.box, b.location)
                assert a.whole == b.whole
                assert a.value == pytest.approx(b.value) and torch.equal(a.crop, b.crop)


def test_a_batch_shorter_than_k_and_an_empty_batch() -> None:
    pattern = PATTERNS["red blob"]
    images, _ = _stream(pattern, batches=1, n=3, planted=1)
    examples = collect_examples(Planted(pattern), [images[:2], images[:0], images[2:]], k=9)
    assert sorted(e.index for e in examples["conv1"][0]) == [0, 1, 2]


def test_bad_input() -> None:
    model = Planted(PATTERNS["red blob"])
    data = [torch.rand(2, 3, SIZE, SIZE)]
    with pytest.raises(ValueError, match="k must be >= 1"):
        collect_examples(model, data, k=0)
    with pytest.raises(ValueError, match="matches no conv layer"):
        collect_examples(model, data, layers="bn")
    with pytest.raises(ValueError, match="data is empty"):
        collect_examples(model, [])
    with pytest.raises(ValueError, match="has 1 channels but the model's first conv takes 3"):
        collect_examples(model, [torch.rand(2, 1, SIZE, SIZE)])
    with pytest.raises(TypeError, match="iterable of batches"):
        collect_examples(model, torch.rand(2, 3, SIZE, SIZE))
    with pytest.raises(TypeError, match="batch 0 is a str"):
        collect_examples(model, ["not a tensor"])
    assert all(not m._forward_hooks for m in model.modules())
