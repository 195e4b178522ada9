"""The format of a namespace's state in Redis, recorded beside it.

Each namespace holds one small record, `Keys.state_format()`, naming the format its records are
written in and the release that first wrote them. A worker (and `idp restore`, `idp inspect`)
reads it before touching state:

* absent: the namespace is empty, or holds state of a release that recorded no format, which
  is format 1; it is read as it is and the record is written;
* `FORMAT`: read as it is;
* formats 1 to 4 (`UPGRADES`): read as they are, and the record is rewritten as `FORMAT`.
  Format 2 adds folded devices (a device record's carry and its chunk records, R15) and the
  users' first session per device; a format-1 record is a format-2 record that has neither.
  Format 3 adds the users' settled parts (`User.past`) and marks the carries that keep them; a
  format-2 carry, unmarked, has its device read whole for its users' profiles and folded again,
  which writes their parts. Format 4 adds the users' retired devices (`User.retired`); a
  format-3 user lists every device live, and those she no longer uses retire when her profile
  is next derived. Format 5 keeps a user's retired summary and the ids of her retired devices
  in chunk records of their own, and marks each retired device's record with her; a format-4
  user keeps them in her record, which is read as it is and split up the first time it is
  written. A release that reads an earlier format only refuses the namespace
  from then on, as it would misread or not keep what the later one adds;
* anything else (a later release's state, or a record that is not one): refused, with a
  message naming both formats. Nothing is written then, so a rollback to the release that
  wrote the state keeps working.

The changelog's records carry a format of their own (`pipeline.state.changelog`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

import orjson

from pipeline.state.base import Commit, Keys, Store

FORMAT = 5  # the layouts of pipeline.core.facts, keyed as `Keys.of` says
UPGRADES = (1, 2, 3, 4)  # formats read as they are, and recorded as `FORMAT` once read
RELEASE = f"identity-pipeline {version('identity-pipeline')}"


class UnreadableState(RuntimeError):
    """The namespace's state is in a format this release cannot read."""


@dataclass(frozen=True, slots=True)
class Found:
    """The namespace's recorded format, and whether this call recorded it."""

    format: int
    written_by: str
    recorded: bool = False
    upgraded_from: int | None = None  # the format this call upgraded the record from


def _readable() -> str:
    *earlier, last = (str(f) for f in (*UPGRADES, FORMAT))
    return f"{', '.join(earlier)} and {last}" if earlier else last


def _record(written_by: str) -> bytes:
    return orjson.dumps({"format": FORMAT, "written_by": written_by})


async def ensure_format(store: Store, keys: Keys) -> Found:
    """Check the namespace's state format, recording it when absent; raise `UnreadableState`."""
    key = keys.state_format()
    (record,) = await store.read([key])
    if record.data is None:
        stamp = Commit(checks={key: record.version}, writes={key: _record(RELEASE)})
        if await store.commit([stamp]) == [True]:
            return Found(FORMAT, RELEASE, recorded=True)
        return await ensure_format(store, keys)  # another worker recorded it meanwhile
    try:
        fields = orjson.loads(record.data)
        found, written_by = int(fields["format"]), str(fields.get("written_by", "unknown"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UnreadableState(
            f"namespace {keys.namespace!r} has a state format record {key!r} this release "
            f"cannot read ({record.data[:80]!r}); it reads formats {_readable()}"
        ) from None
    if found in UPGRADES:
        stamp = Commit(checks={key: record.version}, writes={key: _record(RELEASE)})
        if await store.commit([stamp]) == [True]:
            return Found(FORMAT, RELEASE, recorded=True, upgraded_from=found)
        return await ensure_format(store, keys)
    if found != FORMAT:
        raise UnreadableState(
            f"namespace {keys.namespace!r} holds state in format {found} (written by "
            f"{written_by}); {RELEASE} reads formats {_readable()} only: run "
            f"the release that wrote it, or point IDP_STATE_NAMESPACE at another namespace"
        )
    return Found(found, written_by)
