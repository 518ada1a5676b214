"""TopK (the running top-k per channel), Example and Examples (containers and files)."""

from __future__ import annotations

import pytest
import torch

from torch_featureviz.meaning import Example, Examples, TopK


def _stream(seed: int, batches: int = 5, n: int = 7, c: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g) for _ in range(batches)]


def test_topk_matches_brute_force_and_crops_only_winners() -> None:
    batches = _stream(0)
    top = TopK(3)
    calls: list[tuple[int, int]] = []
    start = entered = 0
    for b, v in enumerate(batches):
        locs = torch.stack([torch.full_like(v, b, dtype=torch.long)] * 2, -1)
        entered += top.update(v, locs, index=start,
                              crop=lambda n, y, x, s=start: calls.append((s + n, y)) or s + n)
        start += v.shape[0]
    every = torch.cat(batches)  # (35, 4)
    for c in range(4):
        want_v, want_i = every[:, c].topk(3)
        got = top.entries(c)
        assert [e.index for e in got] == want_i.tolist()
        assert [e.value for e in got] == pytest.approx(want_v.tolist())
        assert [e.payload for e in got] == want_i.tolist()  # the payload follows its entry
        assert all(e.location[0] == e.index // 7 for e in got)
    # Winners only: never more crop calls than entries that entered, far fewer than samples x C.
    assert len(calls) == entered < every.numel()
    assert len(calls) >= 4 * 3  # the first batch fills every channel


def test_topk_window_drops_old_steps() -> None:
    top = TopK(2, window=2)
    locs = torch.zeros(1, 1, 2, dtype=torch.long)
    top.update(torch.tensor([[9.0]]), locs, index=0, step=0, crop=lambda *a: "old")
    top.update(torch.tensor([[1.0]]), locs, index=1, step=1, crop=lambda *a: "s1")
    assert [e.index for e in top.entries(0)] == [0, 1]
    top.update(torch.tensor([[2.0]]), locs, index=2, step=2, crop=lambda *a: "s2")
    # Step 0 left the window (steps 1 and 2 remain); the best recent one comes first.
    assert [(e.index, e.step, e.payload) for e in top.entries(0)] == [(2, 2, "s2"), (1, 1, "s1")]
    top.advance(10)
    assert top.entries(0) == []


def test_topk_nan_and_short_batches() -> None:
    top = TopK(4)
    v = torch.tensor([[float("nan"), 1.0], [2.0, float("nan")]])
    top.update(v, torch.zeros(2, 2, 2, dtype=torch.long))
    assert [e.index for e in top.entries(0)] == [1]
    assert [e.index for e in top.entries(1)] == [0]
    assert top.update(torch.empty(0, 2), torch.empty(0, 2, 2, dtype=torch.long)) == 0


def test_topk_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        TopK(0)
    with pytest.raises(ValueError, match="window must be >= 1"):
        TopK(3, window=0)
    with pytest.raises(ValueError, match="needs the batch's step"):
        TopK(3, window=2).update(torch.zeros(1, 1), torch.zeros(1, 1, 2, dtype=torch.long))
    top = TopK(3)
    with pytest.raises(ValueError, match="locations must be"):
        top.update(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    top.update(torch.zeros(2, 3), torch.zeros(2, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="earlier batches had 3"):
        top.update(torch.zeros(2, 4), torch.zeros(2, 4, 2, dtype=torch.long))


def _examples() -> Examples:
    image = torch.rand(3, 8, 8)
    shared = [Example(2.0, 4, None, (1, 1), (0, 0, 4, 4), image, True),
              Example(1.0, 5, None, (0, 1), (1, 2, 3, 5), torch.rand(3, 2, 3))]
    return Examples({"a": {0: shared, 3: shared[:1]}, "b": {1: []}}, k=2, step=7)


def test_examples_save_load_round_trip(tmp_path) -> None:
    ex = _examples()
    ex.save(tmp_path / "ex.pt")
    back = Examples.load(tmp_path / "ex.pt")
    assert back.layers == ["a", "b"] and back.k == 2 and back.step == 7
    assert list(back["a"]) == [0, 3]
    for x, y in zip(ex["a"][0], back["a"][0], strict=True):
        assert (x.value, x.index, x.step, x.location, x.box, x.whole) == (
            y.value, y.index, y.step, y.location, y.box, y.whole)
        assert torch.equal(x.crop, y.crop)
    assert back["a"][0][0].patch().shape == (3, 4, 4)
    # One whole image shared by two channels is stored once and stays shared.
    assert back["a"][3][0].crop.data_ptr() == back["a"][0][0].crop.data_ptr()
    assert repr(back) == "Examples(2 layers, 3 channels, k=2, step=7)"


def test_examples_load_refuses_other_files(tmp_path) -> None:
    torch.save({"weight": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="does not hold examples"):
        Examples.load(tmp_path / "sd.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read examples"):
        Examples.load(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not found"):
        Examples.load(tmp_path / "missing.pt")
    with pytest.raises(KeyError, match="layers with examples"):
        _examples()["nope"]
