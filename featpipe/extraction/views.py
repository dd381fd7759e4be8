"""``extract --views K``: K augmented views of every training image, cached beside the eval view.

A head trained on cached features sees each image the same way in every epoch; a probe that
re-runs the backbone under augmentation every epoch (dinov2's linear evaluation) pays the
forward pass every epoch. The middle way: compute K augmented views once, with the model's own
training transform (:mod:`featpipe.data.augment`), and let the head draw among them.

The views are rows of their own cache entry (see :mod:`featpipe.cache.views`): items
``relpath#viewV`` for every training image and view index, keyed by the eval features' key plus
the augmentation recipe. They run through the extract stage's own
:func:`~featpipe.extraction.fill.fill` (journals, shards, claims, torchrun parts, atomic commit),
so a killed run resumes, ranks split the view rows, and only views no shard holds are computed:
adding views to an entry extracts only the views, growing K from 4 to 8 only views 4–7. Each
view is seeded from (seed, image path, view index), so every process computes the same pixels
for it. Val and test images keep their eval view only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featpipe.backbones.spec import BackboneSpec
from featpipe.cache.catalog import entry_path
from featpipe.cache.entry import Features, matches, parts_dir, read_meta
from featpipe.cache.fingerprints import Contents
from featpipe.cache.key import KeyFields
from featpipe.cache.statrecord import Facts, read_record
from featpipe.cache.views import complete_images, load_views, split_view_name, view_name
from featpipe.data.augment import Augment, view_source
from featpipe.data.datasets import Dataset, Item
from featpipe.errors import ArgumentError, DataError
from featpipe.extraction.fill import fill
from featpipe.extraction.options import ExtractOptions
from featpipe.extraction.settle import ExtractRun
from featpipe.progress import Phase, Progress
from featpipe.runtime import distributed

if TYPE_CHECKING:
    from featpipe.backbones.weights import WeightsChoice

MAX_VIEWS = 1024


@dataclass
class ViewsResult:
    """What the views part of an extract call did, and where the views are."""

    entry: Path
    views: int
    n_images: int
    n_new: int
    seconds: float
    hit: bool
    augment: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        done = "cache hit" if self.hit else f"{self.n_new} new"
        return (
            f"ViewsResult(K={self.views}, {self.n_images} images, {done}, {self.seconds:.1f} s, "
            f"entry={str(self.entry)!r})"
        )

    def load(self) -> Features:
        """The views as Features with a view axis: ``X`` is N × K × D."""
        return load_views(self.entry, self.views)

    def summary(self) -> str:
        done = "cache hit" if self.hit else f"{self.n_new} views extracted"
        return (
            f"{self.entry}  views: {self.views} per training image, {self.n_images} images, "
            f"{done} in {self.seconds:.1f} s"
        )


def check_views(views: int) -> None:
    """The view count, checked before anything runs."""
    if not 0 <= views <= MAX_VIEWS:
        raise ArgumentError("views", f"{views}: use 0 (none) to {MAX_VIEWS} views per image")


def view_dataset(dataset: Dataset, views: int) -> Dataset:
    """The dataset whose items are the views: K per training image, in dataset order."""
    items = [
        item._replace(relpath=view_name(item.relpath, v))
        for item in dataset.items
        if item.split == "train"
        for v in range(views)
    ]
    return replace(dataset, items=items, rejected=[], notes=[])


class ViewContents(Contents):
    """The content fingerprints of view rows: those of the image files they were made from."""

    def __init__(self, files: Contents, names: Sequence[str]) -> None:
        self.root, self.full, self.files = files.root, files.full, files
        self.items, self.scanned_ns, self.read = files.items, files.scanned_ns, files.read
        self.quick = {name: files.quick[split_view_name(name)[0]] for name in names}
        self.sha: dict[str, str] = {}

    def facts(self) -> Facts:
        """The image files' facts: the stat record of a views entry is about its images."""
        return self.files.facts()

    def hashes(self, relpaths: Sequence[str]) -> list[str]:
        return self.files.hashes([split_view_name(r)[0] for r in relpaths])


def views_key(fields: KeyFields, augment: Augment) -> KeyFields:
    """The key of the views: the eval features' key (network, pixels before augmentation,
    pooling, precision, dtype) with the augmentation recipe added to its transform."""
    return replace(fields, transform=fields.transform | {"views": augment.key()})


def extract_views(
    eval_entry: Path,
    eval_settings: dict[str, Any],
    dataset: Dataset,
    spec: BackboneSpec,
    choice: WeightsChoice,
    views: int,
    augment: Augment,
    options: ExtractOptions,
    *,
    progress: Callable[[Progress], None] | None,
    say: Callable[[Phase], None],
) -> ViewsResult:
    """Make sure ``views`` views of every training image of ``dataset`` are cached.

    ``eval_entry`` and ``eval_settings`` are those of the eval extract of the same call: the
    views share its key (plus the recipe) and its speed settings.
    """
    start = time.perf_counter()
    cache_dir, verify_content, batch_size = (
        options.cache_dir,
        options.verify_content,
        options.batch_size,
    )
    dist = distributed.current()
    if dist is not None:
        distributed.check_same({"views": views, "augment": asdict(augment)})
    fields = views_key(KeyFields(**read_meta(eval_entry)["key_fields"]), augment)
    vdataset = view_dataset(dataset, views)
    if not vdataset.items:
        raise DataError(
            f"{dataset.root}: views are made of training images, and the train split is empty"
        )
    entry = entry_path(cache_dir, dataset.name, f"{spec.slug}-views", fields.digest)
    names = [i.relpath for i in vdataset.items]
    train = replace(dataset, items=[i for i in dataset.items if i.split == "train"])
    record = read_record(parts_dir(entry))
    contents = ViewContents(Contents(train, full=verify_content, record=record), names)
    say(Phase("cache", f"looking up {len(names)} views in {cache_dir}"))

    def done(n_new: int, hit: bool, timings: dict[str, float]) -> ViewsResult:
        return ViewsResult(
            entry,
            views,
            complete_images(entry, views),
            n_new,
            time.perf_counter() - start,
            hit,
            augment.key(),
            timings,
        )

    def hit() -> bool:  # a plain bool crosses to the other ranks
        return matches(entry, vdataset, verify_content, contents) is not None

    if distributed.on_leader(dist, hit):
        return done(0, True, {})
    from featpipe.runtime import devices, tuning  # torch: a cache hit never gets here

    run_device = devices.resolve_device(options.device)
    settings = dict(eval_settings)
    if "engine" not in settings or batch_size is not None:  # untimed: as asked, or plain torch
        engine = fields.engine or options.engine  # a reduced precision's key names its engine
        chosen = tuning.untimed(
            run_device, settings["is_conv"], fields.precision, batch_size, engine
        )
        settings |= chosen.as_dict()
    run = ExtractRun(
        vdataset,
        fields,
        settings,
        entry,
        run_device,
        None,
        {},
        options,
        images=lambda pending: _sources(dataset, settings["data_config"], augment, pending),
    )
    filled = fill(
        run,
        contents,
        spec,
        choice,
        dist,
        start,
        say,
        progress,
        copy=False,  # a view's pixels depend on its image's path (the seed): never copied
    )
    return done(filled.extracted, False, run.timings)


def _sources(
    dataset: Dataset, data_config: dict[str, Any], augment: Augment, pending: list[Item]
) -> tuple[list[str], Callable[[str], Any]]:
    """The loader's sources for pending view rows, and the seeded view transform."""
    from featpipe.data.train_transform import ViewImages  # torch: a cache hit never gets here

    sources = []
    for item in pending:
        relpath, view = split_view_name(item.relpath)
        sources.append(view_source(str(dataset.root / relpath), relpath, view))
    return sources, ViewImages(data_config, augment)
