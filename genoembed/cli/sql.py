"""`genoembed sql`: read-only SQL over a store's tiles, embeddings, annotations and hits."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from genoembed.cli.common import OutputFormat, emit_table, handle_errors, refuse_inside_store
from genoembed.errors import InputError
from genoembed.sql import DEFAULT_TIMEOUT, run_sql
from genoembed.store import Store


@handle_errors
def sql(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    query: str = typer.Argument(..., help="One SELECT over the views tiles, embeddings, annotations, hits, hits_NAME, hit_features(_NAME), hit_nearest(_NAME)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Bind $NAME to VALUE: NAME=VALUE (repeatable; values are never pasted into SQL)."),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results to this file instead of stdout (never inside the store)."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT, "--timeout", min=0.0, help="Stop the query after this many seconds (0: no limit)."),
):
    """Run SQL on a store (DuckDB dialect); the store is opened read-only."""

    refuse_inside_store(output)
    parameters = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--param {item!r}: use NAME=VALUE")
        parameters[key] = _typed(value)
    emit_table(run_sql(Store.open(store), query, parameters or None, timeout or None), format, output)


def _typed(value: str):
    """'12' -> 12, '0.5' -> 0.5, anything else stays text (so numeric comparisons work)."""
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value
