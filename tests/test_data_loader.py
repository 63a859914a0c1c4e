"""iter_batches (order, skips, workers) and dataset_from_torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.data import dataset_from_torch, iter_batches, open_dataset, parse_data_section
from auditor.errors import SampleSkipped
from tests.fixtures_data import ITEMS, make_csv_masks


def _dataset(tmp_path: Path, break_ids: tuple[int, ...] = ()):
    table = make_csv_masks(tmp_path)
    root = Path(table["manifest"]).parent
    for i in break_ids:
        (root / "images" / ITEMS[i].name).write_bytes(b"broken")
    return open_dataset(parse_data_section({**table, "input_size": 8}, tmp_path, "c.toml"))


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_in_order_with_skips(tmp_path: Path, workers: int) -> None:
    ds = _dataset(tmp_path, break_ids=(1, 2))
    order = [4, 0, 2, 1, 3]
    batches = list(iter_batches(ds, order, batch_size=2, num_workers=workers))
    assert [b.indices for b in batches] == [[4, 0], [], [3]]
    assert [[s[0] for s in b.skipped] for b in batches] == [[], [2, 1], []]
    empty = batches[1]
    assert len(empty) == 0 and empty.images.shape == (0, 3, 8, 8) and empty.masks.shape == (0, 8, 8)
    assert (
        empty.skipped[1][1] == "images/dog_2.png"
        and "not a recognised image" in empty.skipped[1][2]
    )
    first = batches[0]
    assert first.images.shape == (2, 3, 8, 8) and first.masks.dtype == torch.bool
    assert first.labels.tolist() == [0, 0] and first.has_mask.tolist() == [True, True]
    assert first.ids == ["images/cat_5.png", "images/cat_1.png"]
    assert batches[2].labels.tolist() == [1]
    ref = ds.load(0)
    assert torch.equal(first.images[1], ref.image) and torch.equal(first.masks[1], ref.mask)
    assert first.image_sha256[1] == ref.image_sha256 and first.mask_sha256[1] == ref.mask_sha256


def test_iter_batches_arguments(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    assert list(iter_batches(ds, [], 4)) == []
    with pytest.raises(ValueError, match="`batch_size`"):
        list(iter_batches(ds, [0], 0))
    with pytest.raises(ValueError, match="`indices`"):
        list(iter_batches(ds, [5], 2))
    with pytest.raises(ValueError, match="`num_workers`"):
        list(iter_batches(ds, [0], 2, num_workers=-1))


class _Toy(torch.utils.data.Dataset):
    def __init__(self) -> None:
        img = np.zeros((4, 6, 3), dtype=np.uint8)
        img[:, 3:] = 255
        mask = np.zeros((4, 6), dtype=np.uint8)
        mask[:, 3:] = 1
        self.items = [
            (Image.fromarray(img), 1, Image.fromarray(mask * 255)),
            (torch.from_numpy(img).permute(2, 0, 1).float() / 255, "a", torch.from_numpy(mask)),
            (img, 0),
            (img, 7, None),
            (img, 0, np.ones((2, 2))),
        ]

    def __len__(self) -> int:
        return len(self.items) + 1

    def __getitem__(self, i: int):
        if i == len(self.items):
            raise RuntimeError("boom")
        return self.items[i]


def test_dataset_from_torch() -> None:
    ds = dataset_from_torch(_Toy(), ["a", "b"], input_size=(4, 6), mean=(0, 0, 0), std=(1, 1, 1))
    s0, s1, s2 = ds.load(0), ds.load(1), ds.load(2)
    expected = torch.zeros(3, 4, 6)
    expected[:, :, 3:] = 1
    for s in (s0, s1, s2):
        assert torch.equal(s.image, expected)
    assert s0.label == 1 and s1.label == 0 and s2.label == 0
    assert torch.equal(s0.mask, expected[0].bool()) and torch.equal(s1.mask, s0.mask)
    assert s2.mask is None and s0.image_sha256 == s1.image_sha256 == s2.image_sha256
    with pytest.raises(SampleSkipped, match="out of range"):
        ds.load(3)
    with pytest.raises(SampleSkipped, match="mask size 2x2 != image size 6x4"):
        ds.load(4)
    with pytest.raises(SampleSkipped, match="dataset raised RuntimeError: boom"):
        ds.load(5)
    display, mask = ds.load_display(0)
    assert display.dtype == np.uint8 and display.shape == (4, 6, 3) and mask.shape == (4, 6)
    batches = list(iter_batches(ds, range(6), 4))
    assert [b.indices for b in batches] == [[0, 1, 2], []]
    assert batches[0].has_mask.tolist() == [True, True, False]
    assert [s[0] for s in batches[1].skipped] == [4, 5] and batches[0].skipped[0][0] == 3
    with pytest.raises(TypeError, match="`classes`"):
        dataset_from_torch(_Toy(), "ab")


def test_prefetch_thread_gives_the_same_batches(tmp_path: Path) -> None:
    ds = _dataset(tmp_path, break_ids=(1,))
    order = [4, 0, 2, 1, 3]
    plain = list(iter_batches(ds, order, batch_size=2, prefetch=False))
    ahead = list(iter_batches(ds, order, batch_size=2, prefetch=True))
    assert [b.indices for b in plain] == [b.indices for b in ahead]
    assert [b.skipped for b in plain] == [b.skipped for b in ahead]
    for a, b in zip(plain, ahead):
        assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)


class _Exploding:
    """A dataset whose third sample raises a bug (not a skip): it must reach the caller."""

    def __init__(self, ds) -> None:
        self.ds = ds
        self.config = ds.config

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, index: int):
        if index == 2:
            raise RuntimeError("reader bug on sample 2")
        return self.ds.load(index)


def _prefetch_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name == "auditor-prefetch" and t.is_alive()]


def test_prefetch_reraises_errors_and_stops_with_the_consumer(tmp_path: Path) -> None:
    import time

    ds = _dataset(tmp_path)
    batches = iter_batches(_Exploding(ds), [0, 1, 2, 3], batch_size=2)  # type: ignore[arg-type]
    assert next(batches).indices == [0, 1]
    with pytest.raises(RuntimeError, match="reader bug on sample 2"):
        next(batches)
    # a consumer that stops early (e.g. a run that fails midway) leaves no thread behind
    gen = iter_batches(ds, [0, 1, 2, 3, 4], batch_size=1)
    next(gen)
    gen.close()
    deadline = time.monotonic() + 5
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _prefetch_threads()
