"""Batching for the runner: deterministic order, skips recorded, optional worker processes."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from auditor.data.sample import EvalDataset, EvalSample
from auditor.errors import SampleSkipped

__all__ = ["Batch", "collate_samples", "iter_batches"]


@dataclass
class Batch:
    """A batch of loaded samples plus the samples of this chunk that were skipped.

    ``masks`` is all-False for samples without a mask (``has_mask`` False).
    """

    indices: list[int]
    ids: list[str]
    images: Tensor  # float32 [B, 3, H, W]
    masks: Tensor  # bool [B, H, W]
    has_mask: Tensor  # bool [B]
    labels: Tensor  # int64 [B]
    image_sha256: list[str]
    mask_sha256: list[str | None]
    notes: list[tuple[str, ...]]
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (index, id, reason)
    #: multi-label samples (auditor.data.multilabel): bool [B, L] label sets, bool [B, L, H, W]
    #: per-label masks and bool [B, L] which of them are annotations; None otherwise
    label_sets: Tensor | None = None
    label_masks: Tensor | None = None
    label_has_mask: Tensor | None = None

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class _Skip:
    index: int
    id: str
    reason: str


class _SafeLoad(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Map-style view whose items are an EvalSample or a _Skip (never raises SampleSkipped)."""

    def __init__(self, dataset: EvalDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> EvalSample | _Skip:
        try:
            return self.dataset.load(index)
        except SampleSkipped as exc:
            return _Skip(index, exc.sample_id, exc.reason)


def collate_samples(items: Sequence[EvalSample | _Skip], input_size: tuple[int, int]) -> Batch:
    """Stack samples into a :class:`Batch`; skips go to ``Batch.skipped``."""
    samples = [s for s in items if isinstance(s, EvalSample)]
    skipped = [(s.index, s.id, s.reason) for s in items if isinstance(s, _Skip)]
    h, w = input_size
    if samples:
        # images decoded on the audit device ([data] gpu_decode) stay there; a sample the GPU
        # path left to the CPU (EXIF-rotated, CMYK, ...) joins them on that device
        device = next((s.image.device for s in samples if s.image.device.type != "cpu"), None)
        images = torch.stack([s.image if device is None else s.image.to(device) for s in samples])
        masks = torch.stack(
            [s.mask if s.mask is not None else torch.zeros((h, w), dtype=torch.bool)
             for s in samples]
        )  # fmt: skip
    else:
        images = torch.zeros((0, 3, h, w), dtype=torch.float32)
        masks = torch.zeros((0, h, w), dtype=torch.bool)
    return Batch(
        indices=[s.index for s in samples],
        ids=[s.id for s in samples],
        images=images,
        masks=masks,
        has_mask=torch.tensor([s.mask is not None for s in samples], dtype=torch.bool),
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        image_sha256=[s.image_sha256 for s in samples],
        mask_sha256=[s.mask_sha256 for s in samples],
        notes=[s.notes for s in samples],
        skipped=skipped,
        **_label_fields(samples, input_size),
    )


def _label_fields(samples: Sequence[Any], input_size: tuple[int, int]) -> dict[str, Any]:
    """The multi-label fields of :class:`Batch` when the samples carry label sets."""
    from auditor.data.multilabel import MultiLabelSample

    ml = [s for s in samples if isinstance(s, MultiLabelSample)]
    if not ml or len(ml) != len(samples):
        return {}
    samples = ml
    n_labels = len(samples[0].label_has_mask)
    sets = torch.zeros((len(samples), n_labels), dtype=torch.bool)
    masks = torch.zeros((len(samples), n_labels, *input_size), dtype=torch.bool)
    for j, s in enumerate(samples):
        sets[j, list(s.label_set)] = True
        if s.label_masks is not None:
            masks[j] = s.label_masks
    has = torch.tensor([list(s.label_has_mask) for s in samples], dtype=torch.bool)
    return {"label_sets": sets, "label_masks": masks, "label_has_mask": has}


class _Collate:
    """Picklable collate function bound to the output size."""

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.input_size = input_size

    def __call__(self, items: Sequence[EvalSample | _Skip]) -> Batch:
        return collate_samples(items, self.input_size)


_DONE = object()


def _pinned(batch: Batch) -> Batch:
    """The batch with its tensors in page-locked memory (for asynchronous copies to CUDA)."""
    from dataclasses import replace

    def pin(t: Tensor) -> Tensor:  # images decoded on the GPU (gpu_decode) are already there
        return t.pin_memory() if t.device.type == "cpu" else t

    return replace(
        batch,
        images=pin(batch.images),
        masks=pin(batch.masks),
        has_mask=pin(batch.has_mask),
        labels=pin(batch.labels),
    )


def _prefetched(items: Iterator[Batch]) -> Iterator[Batch]:
    """Produce ``items`` one ahead in a daemon thread; stops when the consumer stops."""
    slot: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slot.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((_DONE, exc))

    worker = threading.Thread(target=produce, name="auditor-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slot.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            slot.get_nowait()  # unblock a producer waiting to put
        worker.join(timeout=5)


def iter_batches(
    dataset: EvalDataset,
    indices: Sequence[int],
    batch_size: int,
    *,
    num_workers: int = 0,
    prefetch: bool = True,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Yield batches over ``indices`` in order (chunks of ``batch_size``).

    With ``num_workers > 0`` decoding runs in a ``torch.utils.data.DataLoader`` over a batch
    sampler (the chunks), so it overlaps the runner's compute; the order stays deterministic.
    With ``num_workers == 0`` and ``prefetch`` (default), one background thread decodes the next
    chunk while the caller computes on the current one (PIL's decoders and torch's kernels
    release the GIL): no worker processes to start, same order, same batches; an error raised
    while decoding is re-raised in the caller. A chunk whose samples were all skipped is still
    yielded (``B == 0``) with its ``skipped``. ``pin_memory``: tensors in page-locked host
    memory (for CUDA: the runner's ``non_blocking`` copies then overlap compute).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers` must be an int >= 0, got {num_workers!r}")
    n = len(dataset)
    order = [int(i) for i in indices]
    for i in order:
        if not 0 <= i < n:
            raise ValueError(f"`indices` must lie in [0, {n}), got {i}")
    chunks = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    if not chunks:
        return
    collate = _Collate(tuple(dataset.config.input_size))  # type: ignore[arg-type]
    safe = _SafeLoad(dataset)
    if num_workers == 0:
        batches = (collate([safe[i] for i in chunk]) for chunk in chunks)
        if pin_memory:  # page-locked host memory: the runner's non_blocking copies overlap
            batches = (_pinned(b) for b in batches)
        yield from (_prefetched(batches) if prefetch and len(chunks) > 1 else batches)
        return
    loader = torch.utils.data.DataLoader(
        safe,
        batch_sampler=chunks,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    yield from loader
