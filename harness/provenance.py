"""Which commits the numbers of a table or figure come from, read from the records themselves.

Every table and figure names, under it, the commits its runs trained at (each record's
`meta_info.git_sha`, with `+dirty` where `git_dirty` says the code differed from that commit).
The line is a function of the records only, so a table rebuilt from committed records
(`snakemake --cores all --config from_records=true --forceall all`) is byte-identical to the one
written after training, and either way the reader sees how old the runs are.
"""
from __future__ import annotations

from collections import Counter


def _commit(meta: dict | None) -> str:
    meta = meta or {}
    sha = meta.get("git_sha")
    name = sha[:7] if sha else "unknown commit"
    return name + ("+dirty" if meta.get("git_dirty") else "")


def trained_at(records: list[dict], what: str = "runs") -> str:
    """'records trained at: 20ba5db (2 runs), 2c1ecf8 (7 runs)': commits in first-seen order."""
    counts = Counter(_commit(r.get("meta_info")) for r in records)
    if not counts:
        return ""
    parts = [f"{c} ({n} {what if n != 1 else what.rstrip('s')})" for c, n in counts.items()]
    return ("records trained at: " + ", ".join(parts)
            + " (meta_info.git_sha of each record; +dirty: the code differed from that commit)")


def profiled_at(profiles: list[dict]) -> str:
    """The same line for Table 1's profile JSONs (their meta_info)."""
    counts = Counter(_commit(p.get("meta_info")) for p in profiles)
    if not counts:
        return ""
    return "profile measured at: " + ", ".join(counts) + " (meta_info.git_sha of the profile)"
