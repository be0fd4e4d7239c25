"""`genoembed variants`: how far each SNV / indel of a VCF moves its window's embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pyarrow as pa
import typer

from genoembed.cli.common import OutputFormat, configure_logging, emit_table, handle_errors, refuse_inside_store
from genoembed.errors import InputError


@handle_errors
def variants(
    store: Path = typer.Argument(..., help="Store directory made by `genoembed index`."),
    vcf: Path = typer.Option(..., "--vcf", help="VCF (plain or bgzipped; a tabix/CSI index is used for --region when present) called on the store's genome."),
    region: Optional[str] = typer.Option(None, "--region", "-r", help="Only variants in chrom[:start-end], 1-based inclusive."),
    window: Optional[int] = typer.Option(None, "--window", min=1, help="Bases around each variant to embed (default: the store's tiling window)."),
    strand: str = typer.Option("+", "--strand", help="Embed the windows on this strand (+ or -)."),
    k: int = typer.Option(10, "-k", min=1, help="Neighbours compared between the reference and alternate windows (Jaccard)."),
    depth: int = typer.Option(100, "--depth", min=1, help="Search this deep for the reference locus' rank (empty beyond it)."),
    vcf_output: Optional[Path] = typer.Option(None, "--vcf-output", dir_okay=False, help="Also write the input VCF with GE_SHIFT, GE_L2, GE_RANK, GE_JACCARD INFO fields (.gz: bgzipped)."),
    format: OutputFormat = typer.Option(OutputFormat.tsv, "--format", "-f", help="Output format of the report."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to this file instead of stdout (never inside the store)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No warnings."),
):
    """Embed each variant's window with and without the ALT allele and report the shift."""
    from genoembed.search import query_source
    from genoembed.store import Store
    from genoembed.variants import annotate_vcf, read_variants, score_variants

    configure_logging(quiet)
    refuse_inside_store(output, vcf_output)
    if strand not in ("+", "-"):
        raise typer.BadParameter("--strand must be + or -")
    opened = Store.open(store)
    found = read_variants(vcf, region=region, genome=query_source(opened))
    if not found:
        raise InputError(f"{vcf}: no SNV or indel ALT alleles{' in ' + region if region else ''}")
    report = score_variants(opened, found, window=window, k=k, depth=depth, strand=strand)
    if vcf_output is not None:
        annotate_vcf(vcf, vcf_output, report, region=region)
    if format is OutputFormat.tsv:  # shifts of one SNV are ~1e-4: keep 6 significant digits, not 4 decimals
        report = _precise(report)
    emit_table(report, format, output, title=f"{report.num_rows} variant alleles")


def _precise(report: pa.Table) -> pa.Table:
    """Float columns as ``%.6g`` text, so the TSV keeps small shifts."""
    columns = [pa.array([None if v is None else f"{v:.6g}" for v in column.to_pylist()], pa.string())
               if pa.types.is_floating(column.type) else column for column in report.columns]
    return pa.Table.from_arrays(columns, names=report.column_names)
