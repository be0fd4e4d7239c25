"""`genoembed info`: what a store holds and how it was made."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from genoembed.cli.common import OutputFormat, handle_errors
from genoembed.errors import InputError
from genoembed.store import Store


@handle_errors
def info(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="table = text; json = the full summary as JSON (jsonl: on one line); tsv = field<TAB>value rows, nested fields dotted."),
    json_output: bool = typer.Option(False, "--json", hidden=True, help="Old spelling of --format json."),
):
    """Show tiles, dimension, index, annotations, saved searches and provenance of a store."""
    summary = Store.open(store, require_complete=False).info()
    if json_output or format is OutputFormat.json:
        typer.echo(json.dumps(summary, indent=2))
        return
    if format is OutputFormat.jsonl:
        typer.echo(json.dumps(summary))
        return
    if format is OutputFormat.tsv:
        typer.echo("field\tvalue")
        typer.echo("".join(f"{field}\t{value}\n" for field, value in _flattened(summary)), nl=False)
        return
    if format is OutputFormat.parquet:
        raise InputError("info --format parquet: a store summary is not a table; use --format json or tsv")
    provenance = summary["provenance"]
    embedder = provenance["embedder"]
    index = summary["index"] or {}
    lines = [
        f"store       {summary['path']} ({summary['status']}, {summary['bytes_on_disk'] / 1e6:.1f} MB)",
        *(f"genome      {g['name']} ({len(g['contig_lengths'])} contigs, {sum(g['contig_lengths'].values()):,} bp, "
          f"{g['status']}, sha256 {g['sha256'][:12]}, from {g['path']}"
          f"{'; sequence in the store' if g.get('sequence') else '; no copy of its sequence in the store'}"
          f"{'; circular: ' + ', '.join(g['circular']) if g.get('circular') else ''})"
          for g in summary["genomes"].values()),
        f"tiles       {summary['tiles']:,} in {summary['shards']} shards; tiling {json.dumps(provenance['tiling'])}",
        f"model       {embedder.get('model_id')} ({embedder.get('kind')}, dim {summary['dim']}, fingerprint {embedder.get('fingerprint')})",
        f"index       {(index.get('spec') or {}).get('factory', 'none')} {index.get('metric', '')} ({index.get('ntotal', 0):,} vectors)",
        "annotations " + (", ".join(f"{n} ({e['rows']})" for n, e in summary["annotations"].items()) or "none"),
        f"searches    {', '.join(summary['searches']) or 'none'}",
    ]
    typer.echo("\n".join(lines))


def _flattened(value, prefix: str = ""):
    """(dotted field, value) pairs of a nested summary; lists and scalars as JSON text."""
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _flattened(inner, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value if isinstance(value, str) else json.dumps(value)
