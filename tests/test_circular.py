"""Circular contigs: topology from headers, annotations and --circular; tiles, reads, regions and
alignments through the origin."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from genoembed.build import index
from genoembed.cli import app
from genoembed.errors import InputError
from genoembed.genome import open_genome
from genoembed.search import Query, region_queries, search
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec, plan_tiles, tile_starts
from genoembed.topology import annotation_circular, circular_gap, circular_overlaps, header_says_circular
from genoembed.manifest import FORMAT_VERSION

from conftest import PLASMID_FASTA, PLASMID_GENBANK

runner = CliRunner()
PLASMID = "gi|45478711|ref|NC_005816.1|"
LENGTH = 9609


def test_headers_that_mark_a_record_circular():
    assert header_says_circular("length=4641652 depth=1.00x circular=true")  # Unicycler, Trycycler
    assert header_says_circular("[gcode=11] [topology=circular] [completeness=complete]")  # NCBI modifiers, Bakta
    assert not header_says_circular("length=5000 circular=false")
    assert not header_says_circular("Yersinia pestis plasmid pPCP1, complete sequence")
    assert not header_says_circular("notcircular=true")


def test_open_genome_reads_topology_from_headers(tmp_path):
    path = write_fasta(tmp_path / "asm.fa", {"1 length=3000 depth=1.00x circular=true": "ACGT" * 750,
                                             "2 length=4000 depth=1.00x": "ACGG" * 1000,
                                             "p1 [topology=circular]": "ATTA" * 500})
    genome = open_genome(path)
    assert genome.circular == {"1", "p1"}
    assert open_genome(path).circular == {"1", "p1"}  # from the cached index the second time


def test_annotation_files_mark_contigs_circular(tmp_path):
    assert annotation_circular(PLASMID_GENBANK) == {"NC_005816", "NC_005816.1"}
    gff = tmp_path / "a.gff3"
    gff.write_text("##gff-version 3\n##sequence-region p1 1 5000\n"
                   "p1\tBakta\tregion\t1\t5000\t.\t+\t.\tID=p1;Is_circular=true\n"
                   "c1\tBakta\tregion\t1\t9000\t.\t+\t.\tID=c1\n"
                   "c2\tBakta\tregion\t1\t9000\t.\t+\t.\tID=c2;Is_circular=false\n")
    assert annotation_circular(gff) == {"p1"}
    bed = tmp_path / "a.bed"
    bed.write_text("p1\t0\t10\n")
    assert annotation_circular(bed) == set()


def test_circular_tiles_go_round_the_origin():
    assert tile_starts(2600, 1000, 500).tolist() == [0, 500, 1000, 1500, 1600]
    assert tile_starts(2600, 1000, 500, circular=True).tolist() == [0, 500, 1000, 1500, 2000, 2500]
    assert tile_starts(900, 1000, 500, circular=True).tolist() == []


def test_wrapping_tiles_hold_the_sequence_across_the_origin():
    genome = open_genome(PLASMID_FASTA).with_circular([PLASMID])
    tiles = next(plan_tiles(genome, TilingSpec(window=1000, stride=500), batch_rows=100)).to_pylist()
    assert [tile["start"] for tile in tiles] == list(range(0, LENGTH, 500))
    last = tiles[-1]
    assert (last["start"], last["end"]) == (9500, 10500)
    plain = open_genome(PLASMID_FASTA)
    assert last["sequence"] == (plain.fetch(PLASMID, 9500, LENGTH) + plain.fetch(PLASMID, 0, 891)).upper()
    assert genome.fetch(PLASMID, 9500, 10500) == plain.fetch(PLASMID, 9500, LENGTH) + plain.fetch(PLASMID, 0, 891)
    with pytest.raises(InputError, match="across the origin"):
        genome.fetch(PLASMID, 9500, 9500 + LENGTH + 1)
    with pytest.raises(InputError, match="outside"):
        plain.fetch(PLASMID, 9500, 10500)


def test_unknown_circular_name_is_refused(tmp_path):
    with pytest.raises(InputError, match="--circular 'nope'"):
        index(PLASMID_FASTA, tmp_path / "s", tiling=TilingSpec(window=1000, stride=500), circular=["nope"])
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def plasmid_stores(tmp_path_factory):
    """The plasmid with the default model, once linear and once circular (1 kb tiles every 500 bp)."""
    root = tmp_path_factory.mktemp("plasmid")
    tiling = TilingSpec(window=1000, stride=500)
    linear = index(PLASMID_FASTA, root / "linear", tiling=tiling)
    circular = index(PLASMID_FASTA, root / "circular", tiling=tiling, circular=[PLASMID])
    return linear, circular


def test_a_read_across_the_origin_scores_like_an_interior_read(plasmid_stores):
    linear, circular = plasmid_stores
    genome = open_genome(PLASMID_FASTA)
    # every read starts 250 bp into a tile of the grid, so each overlaps its best tile by 750 bp
    across = Query("across", genome.fetch(PLASMID, 9250, LENGTH) + genome.fetch(PLASMID, 0, 641))
    inside = [Query(f"inside{start}", genome.fetch(PLASMID, start, start + 1000)) for start in range(250, 8500, 500)]
    best = {row["query"]: row for row in search(circular, [across, *inside], k=1).to_pylist()}
    assert (best["across"]["start"], best["across"]["end"]) in ((9000, 10000), (9500, 10500))
    interior = [best[query.name]["score"] for query in inside]
    assert min(interior) <= best["across"]["score"] <= max(interior)
    before = {row["query"]: row for row in search(linear, [across, *inside], k=1).to_pylist()}
    assert before["across"]["score"] < min(interior)  # no tile spans the origin there
    assert before["across"]["score"] < best["across"]["score"] - 0.05
    assert [before[query.name]["score"] for query in inside] == pytest.approx(interior, abs=1e-5)


def test_manifest_records_the_circular_contigs(plasmid_stores):
    linear, circular = plasmid_stores
    assert next(iter(circular.genomes.values()))["circular"] == [PLASMID]
    assert next(iter(linear.genomes.values()))["circular"] == []
    ends = [tile["end"] for tile in circular.tiles(np.arange(circular.num_tiles)).to_pylist()]
    assert max(ends) == 10500 and circular.num_tiles == 20 and linear.num_tiles == 19


def test_region_across_the_origin(plasmid_stores):
    linear, circular = plasmid_stores
    genome = open_genome(PLASMID_FASTA)
    query = region_queries(circular.genome(), [f"{PLASMID}:9001-200"])[0]
    assert (query.start, query.end) == (9000, LENGTH + 200)
    assert query.sequence == (genome.fetch(PLASMID, 9000, LENGTH) + genome.fetch(PLASMID, 0, 200)).upper()
    with pytest.raises(InputError, match="only a circular contig allows"):
        region_queries(linear.genome(), [f"{PLASMID}:9001-200"])
    hits = search(circular, [f"{PLASMID}:9001-200"], k=3, exclude_self=True).to_pylist()
    for hit in hits:  # exclude_self drops every tile overlapping the query round the origin
        assert bool(circular_overlaps(9000, LENGTH + 200, hit["start"], hit["end"], LENGTH)) is False


def test_cli_region_across_the_origin_and_alignment(plasmid_stores):
    pytest.importorskip("parasail", reason="the align extra is not installed")
    _, circular = plasmid_stores
    result = runner.invoke(app, ["search", str(circular.root), "--region", f"{PLASMID}:9301-700", "-k", "1",
                                 "--tiles", "--align", "--format", "jsonl", "--no-save"])
    assert result.exit_code == 0, result.output
    hit = json.loads(result.output.strip().splitlines()[0])
    assert hit["identity"] == 1.0
    assert (hit["target_start"], hit["target_end"]) == (9300, LENGTH + 700)


def test_circle_arithmetic_against_a_base_set_oracle():
    rng = np.random.default_rng(7)
    for _ in range(300):
        length = int(rng.integers(5, 40))
        a_start, b_start = (int(x) for x in rng.integers(0, length, 2))
        a_end = a_start + int(rng.integers(1, length + 1))
        b_end = b_start + int(rng.integers(1, length + 1))
        bases_a = {p % length for p in range(a_start, a_end)}
        bases_b = {p % length for p in range(b_start, b_end)}
        assert bool(circular_overlaps(a_start, a_end, b_start, b_end, length)) == bool(bases_a & bases_b)
        gap = min(min((q - p) % length, (p - q) % length) for p in bases_a for q in bases_b)
        expected = 0 if bases_a & bases_b else gap - 1  # bases strictly between the two
        assert int(circular_gap(a_start, a_end, b_start, b_end, length)) == expected


def test_recipe_circular_key(tmp_path):
    fasta = write_fasta(tmp_path / "g.fa", random_genome({"chrom": 3000, "plasmid": 2100}, seed=1))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[genome]\nfasta = "{fasta}"\ncircular = ["plasmid"]\n[model]\nname = "kmer:4"\n'
                      '[tiling]\nwindow = 1000\nstride = 500\n[index]\nfactory = "Flat"\n')
    result = runner.invoke(app, ["index", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["genomes"]["g"]["circular"] == ["plasmid"]
    result = runner.invoke(app, ["index", "--fasta", str(fasta), "-o", str(tmp_path / "s"), "--model", "kmer:4",
                                 "--window", "1000", "--stride", "500", "--circular", "plasmid", "--circular",
                                 "chrom", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["genomes"]["g"]["circular"] == ["chrom", "plasmid"]
    shutil.rmtree(tmp_path / "s")


def test_format_2_manifest_migrates_to_linear_contigs_without_a_sequence_copy(plasmid_stores, tmp_path):
    _, circular = plasmid_stores
    old = tmp_path / "old"
    shutil.copytree(circular.root, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 2
    for entry in manifest["genomes"].values():
        del entry["circular"], entry["sequence"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(old / "sequences")
    from genoembed.store import Store

    store = Store.open(old)
    assert store.manifest["format_version"] == FORMAT_VERSION and store.genomes["NC_005816"]["circular"] == []
    assert store.genome().circular == frozenset() and store.genome().path == PLASMID_FASTA  # read from the FASTA
    result = runner.invoke(app, ["info", str(old)])
    assert result.exit_code == 0 and "no copy of its sequence in the store" in result.output
    result = runner.invoke(app, ["info", str(circular.root)])
    assert f"sequence in the store; circular: {PLASMID}" in result.output


def _gff3(path, features, length, region=True):
    lines = ["##gff-version 3", f"##sequence-region {PLASMID} 1 {length}"]
    if region:
        lines.append(f"{PLASMID}\ttest\tregion\t1\t{length}\t.\t+\t.\tID=r1;Is_circular=true")
    lines += [f"{PLASMID}\ttest\tgene\t{start + 1}\t{end}\t.\t{strand}\t.\tID={name};Name={name}"
              for name, start, end, strand in features]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_gff3_feature_across_the_origin_accepted_on_circular_refused_on_linear(plasmid_stores, tmp_path):
    from genoembed.annotate import add_annotations

    linear, circular = plasmid_stores
    gff = _gff3(tmp_path / "origin.gff3", [("ori", 9400, LENGTH + 300, "+")], LENGTH)
    with pytest.raises(InputError) as refused:
        add_annotations(linear, gff, name="origin")
    assert "\n" not in str(refused.value)
    assert (f"1 feature extend past the end of their contig (e.g. {PLASMID!r} has a feature ending at "
            f"{LENGTH + 300:,} but is {LENGTH:,} bp); only a circular contig's may, across its origin (index it with "
            "--circular)") in str(refused.value)
    assert "origin" not in linear.manifest.get("annotations", {})
    too_far = _gff3(tmp_path / "far.gff3", [("far", 9400, 9400 + LENGTH + 1, "+")], LENGTH)
    with pytest.raises(InputError, match="1 feature extend past the end"):  # more than once round
        add_annotations(circular, too_far, name="far")
    try:
        add_annotations(circular, gff, name="origin")
        from genoembed.sql import run_sql

        row = run_sql(circular, "SELECT start, \"end\" FROM annotations WHERE feature_id = 'ori'").to_pylist()
        assert row == [{"start": 9400, "end": LENGTH + 300}]
        result = runner.invoke(app, ["search", str(circular.root), "--sequence", circular.genome().fetch(
            PLASMID, 0, 1000), "-k", "1", "--tiles", "-f", "jsonl", "--no-save"])  # the tile at 0 meets ori's 2nd part
        assert result.exit_code == 0, result.output
        hit = json.loads(result.output.splitlines()[0])
        assert hit["start"] == 0 and "ori" in hit["overlapping"].split(", ")
    finally:
        circular.record("annotations", "origin", None)


def test_features_split_at_the_origin_span_it_not_the_molecule(plasmid_stores, tmp_path):
    from genoembed.annotate import add_annotations
    from genoembed.sql import run_sql

    _, circular = plasmid_stores
    gff = tmp_path / "split.gff3"
    gff.write_text("##gff-version 3\n"
                   f"{PLASMID}\ttest\tCDS\t9001\t{LENGTH}\t.\t+\t0\tID=cds1\n"
                   f"{PLASMID}\ttest\tCDS\t1\t200\t.\t+\t0\tID=cds1\n")
    try:
        add_annotations(circular, gff, name="split")
        row = run_sql(circular, "SELECT start, \"end\" FROM annotations WHERE feature_id = 'cds1'").to_pylist()
        assert row == [{"start": 9000, "end": LENGTH + 200}]
    finally:
        circular.record("annotations", "split", None)


def test_wrapped_overlap_and_nearest_against_a_base_set_oracle(plasmid_stores, tmp_path):
    from genoembed.annotate import add_annotations
    from genoembed.sql import run_sql

    _, circular = plasmid_stores
    rng = np.random.default_rng(11)
    features = []
    for number in range(25):
        start = int(rng.integers(0, LENGTH))
        features.append((f"f{number}", start, start + int(rng.integers(20, 1500)), "+-"[number % 2]))
    features.append(("ori", LENGTH - 100, LENGTH + 100, "+"))
    gff = _gff3(tmp_path / "random.gff3", features, LENGTH, region=False)
    regions = [f"{PLASMID}:{int(s) + 1}-{(int(s) + 1000) % LENGTH or LENGTH}" for s in rng.integers(0, LENGTH, 12)]
    try:
        add_annotations(circular, gff, name="random")
        search(circular, regions, k=4, save_as="wrapped")
        hits = run_sql(circular, "SELECT query, rank, start, \"end\" FROM hits_wrapped").to_pylist()
        assert any(hit["end"] > LENGTH for hit in hits)  # some hits run through the origin
        overlaps = {(r["query"], r["rank"], r["feature_feature_id"]): int(r["overlap_bp"]) for r in run_sql(
            circular, "SELECT query, rank, feature_feature_id, overlap_bp FROM hit_features_wrapped").to_pylist()}
        nearest = {(r["query"], r["rank"], r["feature_feature_id"], abs(r["distance"])) for r in run_sql(
            circular, "SELECT query, rank, feature_feature_id, distance FROM hit_nearest_wrapped").to_pylist()}

        def bases(start, end):
            return {position % LENGTH for position in range(start, end)}

        expected_overlaps, expected_nearest = {}, set()
        for hit in hits:
            covered = bases(hit["start"], hit["end"])
            distances = {}
            for name, start, end, _ in features:
                shared = len(covered & bases(start, end))
                if shared:
                    expected_overlaps[hit["query"], hit["rank"], name] = shared
                distances[name] = 0 if shared else int(circular_gap(hit["start"], hit["end"], start, end, LENGTH)) + 1
            best = min(distances.values())
            expected_nearest |= {(hit["query"], hit["rank"], name, best) for name, d in distances.items() if d == best}
        assert overlaps == expected_overlaps
        assert nearest == expected_nearest
        # search's feature columns (a numpy index, not these SQL views) follow the same rules
        from genoembed.annotate import annotate_hits

        tiles = run_sql(circular, "SELECT * FROM hits_wrapped")
        for row in annotate_hits(circular, tiles).to_pylist():
            key = (row["query"], row["rank"])
            shared = sorted(name for (*hit, name) in expected_overlaps if tuple(hit) == key)
            assert (row["overlapping"] or "") == ", ".join(shared)
            assert (key[0], key[1], row["nearest"], abs(row["nearest_distance"])) in expected_nearest
    finally:
        circular.record("annotations", "random", None)


def test_explain_tracks_across_the_origin_are_cut_there(plasmid_stores, tmp_path):
    _, circular = plasmid_stores
    result = runner.invoke(app, ["explain", str(circular.root), "-r", f"{PLASMID}:9301-700", "--hit", "1",
                                 "-o", str(tmp_path / "why"), "-f", "tsv", "--no-plot"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in (tmp_path / "why.query.bedgraph").read_text().splitlines()[1:]]
    spans = [(int(start), int(end)) for _, start, end, _ in rows]
    assert spans[0][0] == 9300 and max(end for _, end in spans) == LENGTH and any(start == 0 for start, _ in spans)
    assert sum(end - start for start, end in spans) == LENGTH - 9300 + 700
    pyBigWig = pytest.importorskip("pyBigWig")
    with pyBigWig.open(str(tmp_path / "why.query.bw")) as track:
        assert track.header()["nBasesCovered"] == LENGTH - 9300 + 700
