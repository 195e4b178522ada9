"""`idp restore`: rebuild a Redis namespace from the state changelog, with progress and a summary.

Without `--from-empty` or `--force` it applies what the namespace lacks of the changelog's tail
(from its markers: what a worker does at start). `--from-empty` reads the whole changelog and
refuses a namespace that holds any key; `--force` reads the whole changelog into a namespace
that holds some (records it holds in the same or a newer version stay as they are).
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.ops.restore import Caught, catch_up
from pipeline.ops.settings import Settings
from pipeline.state.base import Keys
from pipeline.state.factory import open_store
from schemas.topics import STATE_CHANGELOG


async def run(settings: Settings, *, namespace: str, topic: str, whole: bool, empty: bool) -> int:
    """Restore `namespace` from `topic`; 0 when done, 2 when refused."""
    console = Console(stderr=True)
    keys = Keys(namespace)
    store = open_store(settings.redis_url, marker_ttl_s=settings.dedup_ttl_days * 86400,
                       wait_replicas=settings.redis_wait_replicas)  # fmt: skip
    try:
        if empty:
            held = await store.scan(keys.everything())
            if held:
                console.print(f"[red]idp restore: namespace {namespace!r} holds {len(held)} "
                              f"keys; --from-empty restores only into an empty one (--force "
                              f"restores into it anyway)[/red]")  # fmt: skip
                return 2
        columns = (TextColumn(f"restoring {namespace} from {topic}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("records", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            try:
                bootstrap, beginning = settings.kafka_bootstrap_servers, whole or empty
                caught = await catch_up(
                    store, keys, bootstrap, topic, from_beginning=beginning, progress=advance
                )
            except LookupError as exc:
                console.print(f"[red]idp restore: {exc}[/red]")
                return 2
    finally:
        await store.close()
    print(summary(caught, namespace, topic))
    return 0


def summary(caught: Caught, namespace: str, topic: str) -> str:
    """One line saying what the restore did."""
    rate = caught.read / caught.seconds if caught.seconds > 0 else 0.0
    if not caught.partitions:
        return f"{namespace}: nothing to restore, it holds all of {topic}"
    return (f"{namespace}: {caught.read} changelog records of {caught.partitions} partitions "
            f"read from {topic}, {caught.changed} keys written or deleted, in "
            f"{caught.seconds:.1f}s ({rate:,.0f} records/s)")  # fmt: skip


def changelog_topic(settings: Settings, prefix: str | None) -> str:
    """The changelog topic under `prefix` (default: the worker's output prefix)."""
    return (
        (prefix + STATE_CHANGELOG) if prefix is not None else settings.output_topic(STATE_CHANGELOG)
    )
