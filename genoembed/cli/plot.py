"""`genoembed plot`: PNG figures from a store (embedding map) or from `genoembed eval` results."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from genoembed.cli.common import configure_logging, handle_errors, pick, refuse_inside_store
from genoembed.errors import InputError


class PlotKind(str, Enum):
    embeddings = "embeddings"
    mutation = "mutation"
    qps = "qps"


# the image formats matplotlib writes everywhere (its backends add more on some systems)
IMAGE_SUFFIXES = (".png", ".svg", ".pdf")


class ColorBy(str, Enum):
    gc = "gc"
    type = "type"
    genome = "genome"


class Rate(str, Enum):
    substitution = "substitution"
    indel = "indel"


@handle_errors
def plot(
    kind: PlotKind = typer.Argument(..., help="embeddings = PCA map of a store's tiles; mutation = recall vs mutation rate; qps = recall vs queries per second."),
    source: Path = typer.Argument(..., exists=True, help="A store directory (embeddings) or a results file from `genoembed eval --output` (mutation, qps)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", dir_okay=False, help="PNG file to write (required)."),
    out: Optional[Path] = typer.Option(None, "--out", hidden=True, dir_okay=False, help="Old spelling of --output."),
    color_by: ColorBy = typer.Option(ColorBy.gc, "--color-by", help="embeddings: colour tiles by GC content, overlapping annotation type, or genome."),
    max_points: int = typer.Option(20_000, "--max-points", min=3, help="embeddings: plot at most this many tiles (seeded sample)."),
    k: int = typer.Option(1, "-k", min=1, help="mutation: plot recall@K (K must be one the eval reported)."),
    rate: Rate = typer.Option(Rate.substitution, "--rate", help="mutation: x axis is the injected substitution or indel rate."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings."),
):
    """Draw a PNG: an embedding map of a store, or recall curves from evaluation results."""
    from genoembed import plot as plots

    out = pick(output, out, "--output", "--out")
    if out is None:
        raise typer.BadParameter("give --output FILE.png")
    refuse_inside_store(out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"--output {out}: a plot is an image; name the file {', '.join(IMAGE_SUFFIXES)}")

    configure_logging(quiet)
    if kind is PlotKind.embeddings:
        from genoembed.store import Store

        if not source.is_dir():
            raise InputError(f"{source}: 'embeddings' plots a store directory made by `genoembed index`")
        plots.plot_embeddings(Store.open(source), out, color_by=color_by.value, max_points=max_points)
    else:
        from genoembed.eval import read_results

        if source.is_dir():
            raise InputError(f"{source}: '{kind.value}' plots a results file from `genoembed eval --output FILE`")
        rows = read_results(source)
        if kind is PlotKind.mutation:
            plots.plot_recall_vs_mutation(rows, out, k=k, rate=f"{rate.value}_rate")
        else:
            plots.plot_recall_vs_qps(rows, out)
    typer.echo(str(out))
