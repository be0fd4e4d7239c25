"""genoembed variants: embedding shifts of SNVs/indels, annotated VCFs, haplotype queries, real E. coli calls."""

from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SHARED_DATA
from genoembed.cli import app
from genoembed.errors import InputError
from genoembed.search import query_source
from genoembed.variants import (Variant, apply_variants, calls_from_cs, haplotype_queries, read_variants,
                                score_variants, variant_window, window_pair, write_vcf)

pysam = pytest.importorskip("pysam")
CHROM = "NC_000932.1"
runner = CliRunner()


def snv(genome, pos: int, rng=None) -> Variant:
    ref = genome.fetch(CHROM, pos, pos + 1).upper()
    choices = [b for b in "ACGT" if b != ref]
    return Variant(CHROM, pos, ref, choices[0] if rng is None else str(rng.choice(choices)))


def write_text_vcf(path, body: str, samples: tuple[str, ...] = ()) -> None:
    header = ["##fileformat=VCFv4.2", f"##contig=<ID={CHROM},length=154478>",
              '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
              "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"]
                        + (["FORMAT", *samples] if samples else []))]
    path.write_text("\n".join(header) + "\n" + body)


def test_apply_variants_snv_indels_and_overlap():
    sequence = "ACGTACGTAC"
    assert apply_variants(sequence, 100, [Variant("c", 101, "C", "T")]) == "ATGTACGTAC"
    assert apply_variants(sequence, 100, [Variant("c", 102, "GTA", "G")]) == "ACGCGTAC"
    assert apply_variants(sequence, 100, [Variant("c", 100, "A", "AGG")]) == "AGGCGTACGTAC"
    assert apply_variants(sequence, 100, [Variant("c", 99, "TA", "T"), Variant("c", 200, "A", "C")]) == sequence
    with pytest.raises(InputError, match="overlaps"):
        apply_variants(sequence, 100, [Variant("c", 102, "GTA", "G"), Variant("c", 103, "T", "A")])


def test_window_is_centred_and_stays_inside_the_contig():
    assert variant_window(Variant("c", 5000, "A", "C"), 1000, 10_000) == (4500, 5500)
    assert variant_window(Variant("c", 10, "A", "C"), 1000, 10_000) == (0, 1000)
    assert variant_window(Variant("c", 9990, "A", "C"), 1000, 10_000) == (9000, 10_000)
    assert variant_window(Variant("c", 5000, "A" * 1500, "A"), 1000, 10_000) == (5000, 6500)  # holds the REF


def test_variant_outside_the_window_shifts_nothing(chloroplast_store):
    genome = query_source(chloroplast_store)
    embedder = chloroplast_store.embedder()
    reference, altered = window_pair(genome, [snv(genome, 20_000)], CHROM, 10_000, 11_000)
    assert reference == altered
    vectors = embedder.embed([reference, altered])
    from genoembed.variants import shift

    cosine_shift, l2 = shift(vectors[:1], vectors[1:])
    assert cosine_shift[0] == 0.0 and l2[0] == 0.0


def test_shift_grows_with_the_number_of_snvs_in_a_window(chloroplast_store):
    genome = query_source(chloroplast_store)
    embedder = chloroplast_store.embedder()
    rng = np.random.default_rng(7)
    from genoembed.variants import shift

    means = []
    for size in (1, 2, 4, 8, 16):
        shifts = []
        for start in range(5_000, 145_000, 7_000):  # 20 windows
            positions = rng.choice(np.arange(start, start + 1000), size=size, replace=False)
            reference, altered = window_pair(genome, [snv(genome, int(p), rng) for p in positions],
                                             CHROM, start, start + 1000)
            vectors = embedder.embed([reference, altered])
            shifts.append(shift(vectors[:1], vectors[1:])[0][0])
        means.append(float(np.mean(shifts)))
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_minus_strand_windows_are_reverse_complements(chloroplast_store):
    genome = query_source(chloroplast_store)
    variant = snv(genome, 30_000)
    plus = window_pair(genome, [variant], CHROM, 29_500, 30_500, "+")
    minus = window_pair(genome, [variant], CHROM, 29_500, 30_500, "-")
    from genoembed.seqio import reverse_complement

    assert minus == tuple(reverse_complement(s) for s in plus)


@pytest.fixture
def calls(tmp_path, chloroplast_store):
    """A VCF with an SNV, a deletion, a multi-allelic record with a symbolic ALT, and an insertion."""
    genome = query_source(chloroplast_store)
    base = lambda p: genome.fetch(CHROM, p - 1, p).upper()  # noqa: E731 - 1-based VCF position
    other = lambda p: "A" if base(p) != "A" else "C"  # noqa: E731
    deleted = genome.fetch(CHROM, 40_000, 40_004).upper()
    lines = [f"{CHROM}\t10001\tsnv1\t{base(10001)}\t{other(10001)}\t.\tPASS\t.",
             f"{CHROM}\t40001\tdel1\t{deleted}\t{deleted[0]}\t.\tPASS\t.",
             f"{CHROM}\t70001\tmulti\t{base(70001)}\t{other(70001)},<DEL>,{base(70001)}TT\t.\tPASS\t.",
             f"{CHROM}\t120001\tins1\t{base(120001)}\t{base(120001)}GATTACA\t.\tPASS\t."]
    path = tmp_path / "calls.vcf"
    write_text_vcf(path, "\n".join(lines) + "\n")
    return path


def test_multiallelic_records_give_one_row_per_alt_and_skip_symbolic(calls, chloroplast_store, caplog):
    with caplog.at_level(logging.WARNING):
        variants = read_variants(calls, genome=query_source(chloroplast_store))
    assert [(v.id, v.allele) for v in variants] == [("snv1", 1), ("del1", 1), ("multi", 1), ("multi", 3),
                                                    ("ins1", 1)]
    assert "skipped 1 symbolic" in caplog.text
    report = score_variants(chloroplast_store, variants).to_pylist()
    assert len(report) == 5
    assert all(0 < row["shift"] < 0.05 and row["l2"] > 0 for row in report)
    assert all(row["ref_rank"] is not None and row["ref_rank"] <= 4 for row in report)  # both strands tiled
    assert all(0 <= row["jaccard"] <= 1 for row in report)


def test_cli_writes_tsv_and_an_annotated_vcf_pysam_reads_back(calls, chloroplast_store, tmp_path):
    tsv, annotated = tmp_path / "shift.tsv", tmp_path / "annotated.vcf.gz"
    result = runner.invoke(app, ["variants", str(chloroplast_store.root), "--vcf", str(calls), "-o", str(tsv),
                                 "--vcf-output", str(annotated), "-q"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert rows[0][:5] == ["chrom", "pos", "id", "ref", "alt"] and len(rows) == 6
    with pysam.VariantFile(str(annotated)) as vcf:
        assert {"GE_SHIFT", "GE_L2", "GE_RANK", "GE_JACCARD"} <= set(vcf.header.info)
        records = {record.id: record for record in vcf}
    assert len(records["multi"].info["GE_SHIFT"]) == 3 and records["multi"].info["GE_SHIFT"][1] is None
    assert records["snv1"].info["GE_SHIFT"][0] == pytest.approx(float(rows[1][8]), rel=1e-4)


def test_plain_and_bgzipped_tabix_vcf_give_equal_results(calls, chloroplast_store, tmp_path):
    indexed = pysam.tabix_index(str(shutil.copy(calls, tmp_path / "copy.vcf")), preset="vcf", force=True)
    region = f"{CHROM}:30001-130000"
    plain = score_variants(chloroplast_store, read_variants(calls, region=region))
    zipped = score_variants(chloroplast_store, read_variants(indexed, region=region))
    assert plain.num_rows == 4 and plain.equals(zipped)


def test_ref_mismatch_is_a_one_line_error_naming_the_record(tmp_path, chloroplast_store):
    genome = query_source(chloroplast_store)
    wrong = "A" if genome.fetch(CHROM, 500, 501).upper() != "A" else "C"
    path = tmp_path / "wrong.vcf"
    write_text_vcf(path, f"{CHROM}\t501\t.\t{wrong}\tG\t.\tPASS\t.\n")
    result = runner.invoke(app, ["variants", str(chloroplast_store.root), "--vcf", str(path)])
    assert result.exit_code == 2
    assert f"record {CHROM}:501: REF {wrong} does not match the genome" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_search_with_a_sample_haplotype(tmp_path, chloroplast_store):
    genome = query_source(chloroplast_store)
    ref = genome.fetch(CHROM, 50_100, 50_101).upper()
    alt = "A" if ref != "A" else "C"
    path = tmp_path / "samples.vcf"
    write_text_vcf(path, f"{CHROM}\t50101\t.\t{ref}\t{alt}\t.\tPASS\t.\tGT\t1|0\t0|1\n", samples=("S1", "S2"))
    region = f"{CHROM}:50001-51000"
    first, second = (haplotype_queries(chloroplast_store, [region], path, sample)[0] for sample in ("S1", "S2"))
    reference = genome.fetch(CHROM, 50_000, 51_000).upper()
    assert second.sequence == reference and first.sequence == reference[:100] + alt + reference[101:]
    assert first.name == f"{region}|S1" and (first.start, first.end) == (50_000, 51_000)
    result = runner.invoke(app, ["search", str(chloroplast_store.root), "-r", region, "--vcf", str(path),
                                 "--sample", "S1", "--no-save", "--no-annotate", "-f", "tsv", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert f"{region}|S1" in result.output
    missing = runner.invoke(app, ["search", str(chloroplast_store.root), "-r", region, "--vcf", str(path),
                                  "--sample", "S9", "--no-save"])
    assert missing.exit_code == 2 and "no sample 'S9'" in missing.output


ECOLI = SHARED_DATA / "ecoli_k12"


@pytest.fixture(scope="module")
def ecoli(tmp_path_factory):
    """MG1655 store (k-mer 5, 1 kb tiles) and a VCF of DH1 vs MG1655 called from minimap2 cs tags."""
    if shutil.which("minimap2") is None or not (ECOLI / "DH1.fasta.gz").is_file():
        pytest.skip("needs minimap2 and the shared E. coli genomes")
    from genoembed.build import index
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.tiles import TilingSpec

    root = tmp_path_factory.mktemp("ecoli")
    store = index(ECOLI / "MG1655-K12.fasta.gz", root / "mg1655", embedder=KmerEmbedder(k=5),
                  tiling=TilingSpec(window=1000, stride=500))
    paf = subprocess.run(["minimap2", "-t", "1", "-cx", "asm5", "--cs", str(ECOLI / "MG1655-K12.fasta.gz"),
                          str(ECOLI / "DH1.fasta.gz")], check=True, capture_output=True, text=True).stdout
    genome = query_source(store)
    calls = calls_from_cs(paf.splitlines(), genome.fetch)
    return store, write_vcf(root / "dh1.vcf", calls, genome.contigs)


def test_real_dh1_vs_mg1655_calls_match_the_reference_and_shift(ecoli):
    store, vcf = ecoli
    variants = read_variants(vcf, genome=query_source(store))  # every REF checked against MG1655
    snvs = [v for v in variants if len(v.ref) == len(v.alt) == 1]
    assert len(snvs) > 50 and len(variants) > len(snvs)  # DH1 differs by SNVs and small indels
    report = score_variants(store, variants[:40]).to_pylist()
    assert all(row["shift"] > 0 for row in report)
    assert sum(row["ref_rank"] == 1 for row in report) >= 30  # one SNV rarely moves a window off its locus
