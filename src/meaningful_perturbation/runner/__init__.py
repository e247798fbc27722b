"""Batch runs over many images: ``mperturb run`` and ``mperturb report`` (see docs/runner.md).

* :mod:`.sources`: folders, CSV / JSONL manifests and ImageFolder trees → :class:`Item` list.
* :mod:`.run`: the resumable batch loop (:func:`run_directory`), one ``explain`` per batch.
* :mod:`.dist`: torchrun detection, sharding ``items[rank::world_size]``, barriers.
* :mod:`.merge`: crash-safe JSONL appends, reading back, merging per-rank parts.
* :mod:`.report`: the static ``report.html``.
"""

from .merge import merge_results, read_jsonl
from .report import render_report, write_report
from .run import RunOptions, RunSummary, run_directory, summarise
from .sources import Item, load_source

__all__ = [
    "Item",
    "RunOptions",
    "RunSummary",
    "load_source",
    "merge_results",
    "read_jsonl",
    "render_report",
    "run_directory",
    "summarise",
    "write_report",
]
