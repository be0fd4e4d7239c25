"""`genoembed compact`: fold the index parts appends added back into one index, retrained and re-tuned."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from genoembed.cli.common import OutputFormat, configure_logging, handle_errors, set_threads
from genoembed.store import Store


@handle_errors
def compact(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    retune_only: bool = typer.Option(False, "--retune-only", help="Only re-tune the search settings (nprobe, efSearch, k-factor) to the recall target on the store as it is now; keep the index parts."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for building the index (FAISS OpenMP); default: the library's own."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings."),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table = one line of text; json = a JSON summary line."),
):
    """Rebuild the store's vector index as one index over every tile (what a clean build makes): appends add a
    part each, which searches merge; this folds them, retrains the quantizer on the whole store and re-tunes."""
    from genoembed.indexing import compact as compact_index

    configure_logging(quiet or format is OutputFormat.json)
    set_threads(threads)
    entry = compact_index(Store.open(store), retune_only=retune_only)
    summary = {"store": str(store), "parts": len(entry["parts"]), "vectors": entry["ntotal"],
               "search": {name: value for name, value in (entry.get("search") or {}).items()
                          if name in ("nprobe", "ef_search", "k_factor", "recall_at_10")}}
    if format is OutputFormat.json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{store}: index of {summary['vectors']} vectors in {summary['parts']} part(s)"
                   f"{'; search ' + json.dumps(summary['search']) if summary['search'] else ''}")
