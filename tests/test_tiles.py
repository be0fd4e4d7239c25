"""genoembed.tiles: tile grid, streaming plan, per-tile statistics and filtering policies."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from Bio import SeqIO
from Bio.Seq import reverse_complement as bio_reverse_complement
from hypothesis import given, settings
from hypothesis import strategies as st

from genoembed import schema
from genoembed.errors import InputError
from genoembed.genome import Genome, open_genome
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import SoftMask, Strands, TilingSpec, count_tiles, plan_tiles, select_contigs, tile_starts

CHLOROPLAST = Path(__file__).parent.parent / "genoembed" / "data" / "demo" / "NC_000932.fa"


@pytest.fixture(autouse=True)
def cache(fresh_cache) -> Path:
    return fresh_cache


def _records() -> dict[str, str]:
    """Contigs with soft-masked runs, N runs, IUPAC codes, and one contig shorter than any window used."""
    records = random_genome({"chr1": 4321, "chr2": 2600, "chr3": 1000, "short": 90}, seed=3)
    chr1 = records["chr1"]
    records["chr1"] = (chr1[:300] + chr1[300:900].lower() + "N" * 250 + chr1[1150:1400] + "RYKMSWNNnn" * 20
                       + chr1[1600:2000] + chr1[2000:2150].lower() + chr1[2150:])
    chr2 = records["chr2"]
    records["chr2"] = chr2[:1000] + "n" * 120 + chr2[1120:]
    assert [len(s) for s in records.values()] == [4321, 2600, 1000, 90]
    return records


@pytest.fixture
def genome(tmp_path) -> Genome:
    return open_genome(write_fasta(tmp_path / "tiles.fa", _records(), line_width=61))


def _table(genome: Genome, spec: TilingSpec, batch_rows: int = 2048) -> pa.Table:
    return pa.Table.from_batches(list(plan_tiles(genome, spec, batch_rows=batch_rows)),
                                 schema=schema.TILES_WITH_SEQUENCE)


def _oracle(sequence: str) -> tuple[float, float, float]:
    """(gc among unambiguous bases, non-ACGT fraction, lowercase fraction), pure Python."""
    n = sum(base not in "ACGTacgt" for base in sequence)
    gc = sum(base in "GCgc" for base in sequence)
    lower = sum(base.islower() for base in sequence)
    unambiguous = len(sequence) - n
    return (gc / unambiguous if unambiguous else 0.0), n / len(sequence), lower / len(sequence)


def _expected_tiles(records: dict[str, str], spec: TilingSpec) -> list[dict]:
    """The whole plan, computed independently of tiles.py (grid by a while loop, stats by _oracle)."""
    rows = []
    for chrom in spec.contigs or records:
        sequence = records[chrom]
        if len(sequence) < spec.window:
            continue
        starts, start = [], 0
        while start + spec.window <= len(sequence):
            starts.append(start)
            start += spec.stride
        if starts[-1] + spec.window != len(sequence):
            starts.append(len(sequence) - spec.window)
        for start in starts:
            piece = sequence[start:start + spec.window]
            gc, n_fraction, lower = _oracle(piece)
            if n_fraction > spec.max_n_fraction:
                continue
            if spec.soft_mask is SoftMask.skip and lower > spec.max_soft_masked_fraction:
                continue
            if spec.soft_mask is SoftMask.upper:
                piece = piece.upper()
            for strand in spec.strand_list:
                rows.append({"chrom": chrom, "start": start, "end": start + spec.window, "strand": strand,
                             "gc": gc, "n_fraction": n_fraction, "soft_masked_fraction": lower,
                             "sequence": piece if strand == "+" else bio_reverse_complement(piece)})
    return rows


def _assert_matches_oracle(table: pa.Table, records: dict[str, str], spec: TilingSpec) -> None:
    expected = _expected_tiles(records, spec)
    actual = table.to_pylist()
    assert len(actual) == len(expected)
    assert [r["tile_id"] for r in actual] == list(range(len(expected)))
    for got, want in zip(actual, expected):
        key = (want["chrom"], want["start"], want["strand"])
        for column in ("chrom", "start", "end", "strand", "sequence"):
            assert got[column] == want[column], (key, column)
        for column in ("gc", "n_fraction", "soft_masked_fraction"):
            assert got[column] == pytest.approx(want[column], abs=1e-6), (key, column)


# --- tile_starts --------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(length=st.integers(0, 5000), window=st.integers(1, 700), stride=st.integers(1, 900))
def test_tile_starts_properties(length, window, stride):
    starts = tile_starts(length, window, stride)
    assert starts.dtype == np.int64
    if length < window:
        assert len(starts) == 0
        return
    assert starts[0] == 0
    assert np.all(np.diff(starts) > 0), "strictly increasing"
    assert np.all(starts >= 0) and np.all(starts + window <= length), "every tile inside the contig"
    assert starts[-1] + window == length, "last tile flush with the end"
    gaps = np.diff(starts)
    assert np.all(gaps[:-1] == stride), "spacing is the stride ..."
    if len(gaps):
        assert 0 < gaps[-1] <= stride, "... except possibly the final flush tile, which is closer"
    # no redundant flush tile: it is added only when the stride grid misses the end
    assert len(starts) == (length - window) // stride + 1 + ((length - window) % stride != 0)
    if stride <= window:
        covered = np.zeros(length, dtype=bool)
        for start in starts:
            covered[start:start + window] = True
        assert covered.all(), "every base of [0, length) is covered"


def test_tile_starts_examples():
    assert tile_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert tile_starts(11, 4, 3).tolist() == [0, 3, 6, 7]
    assert tile_starts(4, 4, 100).tolist() == [0]
    assert tile_starts(3, 4, 1).tolist() == []
    assert tile_starts(0, 1, 1).tolist() == []
    assert tile_starts(25, 10, 20).tolist() == [0, 15]  # stride > window still ends flush


@pytest.mark.parametrize(("window", "stride"), [(0, 1), (1, 0), (-5, 2), (5, -1)])
def test_tile_starts_rejects_non_positive(window, stride):
    with pytest.raises(InputError, match=rf"window={window} and stride={stride} must both be positive"):
        tile_starts(100, window, stride)


# --- TilingSpec -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"window": 0}, r"window=0 must be a positive number of bases"),
    ({"window": -10}, r"window=-10 must be a positive"),
    ({"stride": 0}, r"stride=0 must be > 0 \(use stride=window for no overlap\)"),
    ({"stride": -1}, r"stride=-1 must be > 0"),
    ({"max_n_fraction": 1.5}, r"max_n_fraction=1.5 must be between 0 and 1"),
    ({"max_n_fraction": -0.1}, r"max_n_fraction=-0.1 must be between 0 and 1"),
    ({"max_soft_masked_fraction": 2.0}, r"max_soft_masked_fraction=2.0 must be between 0 and 1"),
    ({"strands": "x"}, r"strands='x' must be one of '\+', '-', 'both'"),
    ({"soft_mask": "drop"}, r"soft_mask='drop' must be one of 'upper', 'keep', 'skip'"),
])
def test_spec_validation(options, message):
    with pytest.raises(InputError, match=message):
        TilingSpec(**options)


def test_spec_normalises_and_describes():
    spec = TilingSpec(window=100, stride=50, strands="both", soft_mask="skip", contigs=["b", "a"])
    assert spec.strands is Strands.both and spec.soft_mask is SoftMask.skip and spec.contigs == ("b", "a")
    assert spec.strand_list == ("+", "-")
    assert TilingSpec(strands="-").strand_list == ("-",)
    assert spec.describe() == {"window": 100, "stride": 50, "strands": "both", "max_n_fraction": 0.1,
                               "soft_mask": "skip", "max_soft_masked_fraction": 0.5, "contigs": ["b", "a"]}
    hash(spec)  # frozen and hashable (used as a key by callers)


# --- plan_tiles: identity and invariance ------------------------------------------------------------


def test_plan_matches_independent_oracle_all_policies(genome):
    records = _records()
    for spec in (
        TilingSpec(window=200, stride=150, max_n_fraction=1.0),
        TilingSpec(window=200, stride=150, strands="both", max_n_fraction=0.05),
        TilingSpec(window=333, stride=100, strands="-", soft_mask="keep", max_n_fraction=0.3),
        TilingSpec(window=250, stride=400, soft_mask="skip", max_soft_masked_fraction=0.2, max_n_fraction=1.0),
        TilingSpec(window=1000, stride=1000, strands="both", soft_mask="keep", max_n_fraction=0.0),
    ):
        _assert_matches_oracle(_table(genome, spec), records, spec)


def test_tile_ids_dense_and_keys_unique(genome):
    spec = TilingSpec(window=300, stride=120, strands="both", max_n_fraction=0.2)
    table = _table(genome, spec)
    assert table.schema == schema.TILES_WITH_SEQUENCE
    assert schema.validate_table(table, schema.TILES_WITH_SEQUENCE, "plan") == []
    assert table["tile_id"].to_pylist() == list(range(table.num_rows))
    keys = list(zip(*(table[c].to_pylist() for c in ("chrom", "start", "end", "strand"))))
    assert len(set(keys)) == len(keys)
    assert set(table["genome"].to_pylist()) == {"tiles"}
    assert set(table["chrom"].to_pylist()) == {"chr1", "chr2", "chr3"}
    assert all(len(s) == 300 for s in table["sequence"].to_pylist())


@pytest.mark.parametrize("strands", ["+", "both"])
def test_plan_is_stable_across_runs_and_batch_sizes(genome, strands):
    spec = TilingSpec(window=150, stride=70, strands=strands, max_n_fraction=0.1, soft_mask="skip")
    reference = _table(genome, spec)
    assert reference.num_rows > 50
    assert _table(genome, spec).equals(reference)
    for batch_rows in (1, 7, 2048):
        batches = list(plan_tiles(genome, spec, batch_rows=batch_rows))
        assert pa.Table.from_batches(batches).equals(reference), batch_rows
        sizes = [b.num_rows for b in batches]
        assert all(size == batch_rows for size in sizes[:-1]) and 0 < sizes[-1] <= batch_rows, batch_rows


def test_strand_both_minus_is_reverse_complement_of_plus(genome):
    table = _table(genome, TilingSpec(window=240, stride=100, strands="both", soft_mask="keep", max_n_fraction=1.0))
    rows = table.to_pylist()
    assert len(rows) % 2 == 0
    for plus, minus in zip(rows[0::2], rows[1::2]):
        assert (plus["strand"], minus["strand"]) == ("+", "-")
        assert minus["tile_id"] == plus["tile_id"] + 1
        for column in ("chrom", "start", "end", "gc", "n_fraction", "soft_masked_fraction"):
            assert plus[column] == minus[column]
        assert minus["sequence"] == bio_reverse_complement(plus["sequence"])
        assert plus["sequence"] == genome.fetch(plus["chrom"], plus["start"], plus["end"])


def test_count_tiles_equals_rows_when_nothing_filtered(genome):
    for spec in (TilingSpec(window=100, stride=100, max_n_fraction=1.0),
                 TilingSpec(window=257, stride=31, strands="both", max_n_fraction=1.0, soft_mask="keep"),
                 TilingSpec(window=1000, stride=1, max_n_fraction=1.0, contigs=("chr3", "chr2"))):
        assert count_tiles(genome, spec) == _table(genome, spec).num_rows
    filtered = TilingSpec(window=100, stride=100, max_n_fraction=0.0)
    assert count_tiles(genome, filtered) > _table(genome, filtered).num_rows, "count_tiles is an upper bound"


def test_batches_and_fetches_stay_bounded(genome, monkeypatch):
    # memory bound: no batch over batch_rows, and no fetch larger than the windows one batch needs
    spec = TilingSpec(window=100, stride=30, strands="both", max_n_fraction=1.0)
    fetched: list[int] = []
    original = Genome.fetch

    def recording_fetch(self, chrom, start, end, strand="+"):
        fetched.append(end - start)
        return original(self, chrom, start, end, strand)

    monkeypatch.setattr(Genome, "fetch", recording_fetch)
    for batch_rows in (1, 2, 9, 64):
        fetched.clear()
        batches = list(plan_tiles(genome, spec, batch_rows=batch_rows))
        assert max(b.num_rows for b in batches) <= batch_rows
        windows_per_fetch = max(1, batch_rows // 2)
        assert max(fetched) <= (windows_per_fetch - 1) * spec.stride + spec.window, batch_rows
    assert len(fetched) > 1


def test_plan_is_lazy(genome, monkeypatch):
    calls = []
    original = Genome.fetch
    monkeypatch.setattr(Genome, "fetch", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    plan = plan_tiles(genome, TilingSpec(window=100, stride=100, max_n_fraction=1.0), batch_rows=4)
    assert calls == []
    first = next(plan)
    assert first.num_rows == 4 and len(calls) == 1


@pytest.mark.parametrize("batch_rows", [0, -3])
def test_batch_rows_must_be_positive(genome, batch_rows):
    with pytest.raises(InputError, match=rf"batch_rows={batch_rows} must be a positive"):
        next(plan_tiles(genome, TilingSpec(window=100, stride=100), batch_rows=batch_rows))


# --- statistics -----------------------------------------------------------------------------------


def test_statistics_on_hand_made_tiles(tmp_path):
    #          0         1         2
    sequence = "GGCCAATTNNacgtRYggcc" + "A" * 20
    genome = open_genome(write_fasta(tmp_path / "hand.fa", {"x": sequence}))
    rows = _table(genome, TilingSpec(window=10, stride=10, max_n_fraction=1.0, soft_mask="keep")).to_pylist()
    assert [r["sequence"] for r in rows] == ["GGCCAATTNN", "acgtRYggcc", "A" * 10, "A" * 10]
    assert rows[0]["gc"] == pytest.approx(4 / 8) and rows[0]["n_fraction"] == pytest.approx(0.2)
    assert rows[0]["soft_masked_fraction"] == 0
    assert rows[1]["gc"] == pytest.approx(6 / 8) and rows[1]["n_fraction"] == pytest.approx(0.2)
    assert rows[1]["soft_masked_fraction"] == pytest.approx(0.8)
    assert rows[2]["gc"] == 0 and rows[2]["n_fraction"] == 0


def test_all_n_tile_has_zero_gc(tmp_path):
    genome = open_genome(write_fasta(tmp_path / "n.fa", {"x": "N" * 50 + "GC" * 25}))
    rows = _table(genome, TilingSpec(window=50, stride=50, max_n_fraction=1.0)).to_pylist()
    assert [(r["gc"], r["n_fraction"]) for r in rows] == [(0.0, 1.0), (1.0, 0.0)]


# --- filtering policies -----------------------------------------------------------------------------


def test_n_policy_drops_tiles_above_max_n_fraction(genome):
    records = _records()
    everything = _table(genome, TilingSpec(window=200, stride=50, max_n_fraction=1.0)).to_pylist()
    for limit in (0.0, 0.1, 0.5):
        spec = TilingSpec(window=200, stride=50, max_n_fraction=limit)
        kept = _table(genome, spec).to_pylist()
        # the column is float32: 20/200 is stored as float32(0.1), which is a hair above the float64 limit 0.1
        assert all(r["n_fraction"] <= np.float32(limit) for r in kept)
        assert any(r["n_fraction"] == np.float32(limit) for r in kept) or limit != 0.1, "boundary tile kept"
        kept_keys = {(r["chrom"], r["start"]) for r in kept}
        dropped = [r for r in everything if (r["chrom"], r["start"]) not in kept_keys]
        assert dropped and all(r["n_fraction"] > limit for r in dropped), limit
        assert [r["tile_id"] for r in kept] == list(range(len(kept))), "ids stay dense after filtering"
        _assert_matches_oracle(_table(genome, spec), records, spec)


def test_soft_mask_upper_keep_skip(genome):
    base = {"window": 200, "stride": 100, "max_n_fraction": 1.0}
    upper = _table(genome, TilingSpec(**base, soft_mask="upper")).to_pylist()
    keep = _table(genome, TilingSpec(**base, soft_mask="keep")).to_pylist()
    skip = _table(genome, TilingSpec(**base, soft_mask="skip", max_soft_masked_fraction=0.25)).to_pylist()

    assert len(upper) == len(keep)
    assert any(r["soft_masked_fraction"] > 0.5 for r in upper), "fixture must contain soft-masked tiles"
    for u, k in zip(upper, keep):
        assert u["sequence"] == k["sequence"].upper() and not any(c.islower() for c in u["sequence"])
        assert u["soft_masked_fraction"] == k["soft_masked_fraction"], "the fraction is reported either way"
        assert k["sequence"] == genome.fetch(k["chrom"], k["start"], k["end"])
    assert any(any(c.islower() for c in k["sequence"]) for k in keep)

    assert 0 < len(skip) < len(keep)
    assert all(r["soft_masked_fraction"] <= 0.25 for r in skip)
    skipped = {(r["chrom"], r["start"]) for r in keep} - {(r["chrom"], r["start"]) for r in skip}
    assert skipped and all(r["soft_masked_fraction"] > 0.25 for r in keep if (r["chrom"], r["start"]) in skipped)


def test_everything_filtered_is_an_error(tmp_path):
    genome = open_genome(write_fasta(tmp_path / "masked.fa", {"a": "acgt" * 100, "b": "ACGTNNNNNN" * 40}))
    with pytest.raises(InputError, match=r"masked\.fa: every tile was filtered out \(max_n_fraction=0.5, "
                                         r"soft_mask=skip\); relax"):
        list(plan_tiles(genome, TilingSpec(window=100, stride=50, max_n_fraction=0.5, soft_mask="skip")))
    # the same genome under a looser policy does give tiles
    assert _table(genome, TilingSpec(window=100, stride=50, max_n_fraction=0.6, soft_mask="skip")).num_rows == 7


# --- contigs ----------------------------------------------------------------------------------------


def test_contig_subset_in_given_order(genome):
    spec = TilingSpec(window=200, stride=200, max_n_fraction=1.0, contigs=("chr3", "chr1"))
    assert select_contigs(genome, spec) == ["chr3", "chr1"]
    assert select_contigs(genome, TilingSpec()) == ["chr1", "chr2", "chr3", "short"]
    table = _table(genome, spec)
    chroms = table["chrom"].to_pylist()
    assert chroms == ["chr3"] * 5 + ["chr1"] * math.ceil(4321 / 200)
    _assert_matches_oracle(table, _records(), spec)


@pytest.mark.parametrize(("contigs", "message"), [
    (("chr1", "chrZ"), r"tiles\.fa: unknown contig 'chrZ' in tiling\.contigs; known: chr1, chr2, chr3, short"),
    (("chr1", "chr2", "chr1"), r"tiles\.fa: contig 'chr1' is listed more than once"),
    ((), r"tiles\.fa: tiling\.contigs is empty"),
])
def test_bad_contig_selection(genome, contigs, message):
    spec = TilingSpec(window=100, stride=100, contigs=contigs)
    with pytest.raises(InputError, match=message):
        count_tiles(genome, spec)
    with pytest.raises(InputError, match=message):
        list(plan_tiles(genome, spec))


def test_window_longer_than_every_contig(genome):
    with pytest.raises(InputError, match=r"tiles\.fa: window 5000 is longer than every selected contig "
                                         r"\(longest 4321 bp\); use --window <= 4321"):
        list(plan_tiles(genome, TilingSpec(window=5000, stride=100)))
    with pytest.raises(InputError, match=r"window 2000 is longer than every selected contig \(longest 1000 bp\)"):
        list(plan_tiles(genome, TilingSpec(window=2000, stride=100, contigs=("chr3", "short"))))


def test_short_contigs_are_skipped_with_a_warning(genome, caplog):
    with caplog.at_level(logging.WARNING, logger="genoembed.tiles"):
        table = _table(genome, TilingSpec(window=1500, stride=500, max_n_fraction=1.0))
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "2 contigs shorter than the 1500 bp window get no tiles (e.g. chr3)" in messages[0]
    assert "tiles.fa" in messages[0]
    assert set(table["chrom"].to_pylist()) == {"chr1", "chr2"}

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="genoembed.tiles"):
        _table(genome, TilingSpec(window=80, stride=80, max_n_fraction=1.0))
    assert not caplog.records, "no warning when every contig is long enough"


# --- real data --------------------------------------------------------------------------------------


def test_real_chloroplast_plan():
    record = SeqIO.read(CHLOROPLAST, "fasta")
    sequence = str(record.seq)
    genome = open_genome(CHLOROPLAST)
    spec = TilingSpec(window=1000, stride=500, strands="both", max_n_fraction=1.0)
    table = _table(genome, spec, batch_rows=1000)
    assert table.num_rows == count_tiles(genome, spec) == 2 * len(tile_starts(len(sequence), 1000, 500))
    rows = table.to_pylist()
    assert rows[-1]["end"] == len(sequence)
    for row in rows[::37]:
        forward = sequence[row["start"]:row["end"]].upper()
        expected = forward if row["strand"] == "+" else bio_reverse_complement(forward)
        assert row["sequence"] == expected
        gc, n_fraction, _ = _oracle(forward)
        assert row["gc"] == pytest.approx(gc, abs=1e-6) and row["n_fraction"] == pytest.approx(n_fraction, abs=1e-6)
