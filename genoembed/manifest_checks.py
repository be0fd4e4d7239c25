"""The checks of a manifest read from disk: every field a reader uses has the type and range it needs, and
every path stays inside the store, so a damaged manifest is one clear error (the problems listed), never a
traceback (:func:`genoembed.manifest.read_manifest` runs them; the sealed files' genomes and shards too)."""

from __future__ import annotations

import json

SEALED = "manifest.d"  # immutable files of sealed genomes: manifest.d/genomes-NNNNN.json


# Widest vector a store may declare: far above any model's, low enough that a schema or buffer of that
# width can be made (a damaged ``dim`` of 1e12 overflowed Arrow's list size).
MAX_DIM = 1 << 20


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def expecting(problems: list[str]):
    """``expect(where, value, kind, what)``: True when ``value`` is a ``kind``, else a problem noted."""
    def expect(where: str, value, kind, what: str) -> bool:
        ok = _is_int(value) if kind is int else isinstance(value, kind)
        if not ok:
            problems.append(f"{where} is {json.dumps(value)[:40]}, expected {what}")
        return ok

    return expect


def manifest_problems(manifest: dict) -> list[str]:
    """Every way a (current-format) manifest is malformed, so a corrupt one is one clear error, not a traceback."""
    problems = []
    expect = expecting(problems)
    if expect("dim", manifest.get("dim"), int, "a positive integer") and not 1 <= manifest["dim"] <= MAX_DIM:
        problems.append(f"dim is {manifest['dim']}, expected a positive integer up to {MAX_DIM}")
    for key in ("next_tile_id", "next_shard"):
        expect(key, manifest.get(key), int, "an integer")
    if expect("provenance", manifest.get("provenance"), dict, "an object"):
        provenance = manifest["provenance"]
        for key in ("embedder", "tiling"):
            expect(f"provenance.{key}", provenance.get(key), dict, "an object")
        tiling = provenance.get("tiling")
        if isinstance(tiling, dict):  # tiles are cut and searched with these (search, track, variants, explain)
            for key in ("window", "stride"):
                if expect(f"provenance.tiling.{key}", tiling.get(key), int, "a positive integer") and tiling[key] < 1:
                    problems.append(f"provenance.tiling.{key} is {tiling[key]}, expected a positive integer")
            if tiling.get("strands") not in ("+", "-", "both"):
                problems.append(f"provenance.tiling.strands is {json.dumps(tiling.get('strands'))[:40]}, "
                                "expected \"+\", \"-\" or \"both\"")
        if provenance.get("embedding_dtype", "float32") not in ("float32", "float16"):
            problems.append(f"provenance.embedding_dtype is {json.dumps(provenance['embedding_dtype'])[:40]}, "
                            "expected \"float32\" or \"float16\"")
        embedder = provenance.get("embedder")
        # the embedder is rebuilt from these fields on every search (genoembed.embedders.load_embedder)
        if isinstance(embedder, dict) and expect("provenance.embedder.kind", embedder.get("kind"), str, "a name") \
                and embedder["kind"] == "kmer" and "k" in embedder:
            if expect("provenance.embedder.k", embedder["k"], int, "a positive integer") and embedder["k"] < 1:
                problems.append(f"provenance.embedder.k is {embedder['k']}, expected a positive integer")
    genome_and_shard_problems(manifest, expect, problems)
    if expect("sealed", manifest.get("sealed", []), list, "a list of sealed genome files"):
        for number, sealed in enumerate(manifest.get("sealed", [])):
            where = f"sealed[{number}]"
            if expect(where, sealed, dict, "an object") and expect(f"{where}.path", sealed.get("path"), str, "a path"):
                if not sealed["path"].startswith(f"{SEALED}/"):
                    problems.append(f"{where}.path {sealed['path']!r} is not a file under {SEALED}/")
                _check_store_path(sealed["path"], where, problems)
                expect(f"{where}.sha256", sealed.get("sha256"), str, "a checksum")
                for key in ("genomes", "shards"):
                    expect(f"{where}.{key}", sealed.get(key), int, "a count")
    expect("next_sealed", manifest.get("next_sealed", 0), int, "an integer")
    for section in ("annotations", "searches"):
        # a missing section is empty; readers take `annotations` as an object, so a null or a list there is
        # damage (a null `searches` is read as none, as before)
        entries = manifest.get(section, {}) if section == "annotations" else manifest.get(section) or {}
        if expect(section, entries, dict, "an object"):
            for name, entry in entries.items():
                if expect(f"{section}.{name}", entry, dict, "an object") and \
                        expect(f"{section}.{name}.path", entry.get("path"), str, "a path"):
                    _check_store_path(entry["path"], f"{section}.{name}", problems)
                if section == "annotations" and isinstance(entry, dict):
                    _check_annotation_genome(entry, f"{section}.{name}", problems)
                    expect(f"{section}.{name}.rows", entry.get("rows"), int, "a row count")
    index = manifest.get("index")
    if index is not None and expect("index", index, dict, "an object or null"):
        if expect("index.path", index.get("path"), str, "a path"):
            _check_store_path(index["path"], "index", problems)
        expect("index.sha256", index.get("sha256"), str, "a checksum")
        if index.get("metric", "ip") not in ("ip", "l2"):
            problems.append(f"index.metric is {json.dumps(index['metric'])[:40]}, expected \"ip\" or \"l2\"")
        below, limit = index.get("tile_ids_below", 0), manifest.get("next_tile_id")
        if expect("index.tile_ids_below", below, int, "a tile id") and isinstance(limit, int) and not 0 <= below <= limit:
            problems.append(f"index.tile_ids_below is {below}, expected a tile id up to next_tile_id {limit}")
        # index parts (base and appended deltas) and the trained index they are cloned from; absent before parts
        if expect("index.parts", index.get("parts", []), list, "a list of index files"):
            for number, part in enumerate(index.get("parts", [])):
                where = f"index.parts[{number}]"
                if expect(where, part, dict, "an object") and expect(f"{where}.path", part.get("path"), str, "a path"):
                    _check_store_path(part["path"], where, problems)
                    expect(f"{where}.sha256", part.get("sha256"), str, "a checksum")
                    expect(f"{where}.ntotal", part.get("ntotal"), int, "an integer")
        trained = index.get("trained", {"path": "index/trained.faiss"})
        if expect("index.trained", trained, dict, "an object") and \
                expect("index.trained.path", trained.get("path"), str, "a path"):
            _check_store_path(trained["path"], "index.trained", problems)
    return problems


def genome_and_shard_problems(part: dict, expect, problems: list[str]) -> None:
    """The ``genomes`` and ``shards`` of a manifest, or of a sealed file."""
    genomes = part.get("genomes")
    if expect("genomes", genomes, dict, "an object"):
        for name, entry in genomes.items():
            if expect(f"genomes.{name}", entry, dict, "an object"):
                if expect(f"genomes.{name}.contig_lengths", entry.get("contig_lengths"), dict, "an object"):
                    for chrom, length in entry["contig_lengths"].items():
                        if not _is_int(length) or length < 0:
                            problems.append(f"genomes.{name}.contig_lengths.{chrom} is {json.dumps(length)[:40]}, "
                                            "expected a length in bases")
                expect(f"genomes.{name}.first_tile_id", entry.get("first_tile_id"), int, "an integer")
                expect(f"genomes.{name}.sha256", entry.get("sha256"), str, "a checksum")
                expect(f"genomes.{name}.name", entry.get("name"), str, "the genome's name")
                expect(f"genomes.{name}.path", entry.get("path"), str, "the FASTA's path")
                if expect(f"genomes.{name}.circular", entry.get("circular"), list, "a list of contig names"):
                    for chrom in entry["circular"]:
                        if not isinstance(chrom, str) or chrom not in entry.get("contig_lengths", {}):
                            problems.append(f"genomes.{name}.circular names {json.dumps(chrom)[:40]}, not one of "
                                            "the genome's contigs")
                copy = entry.get("sequence")
                if copy is not None and expect(f"genomes.{name}.sequence", copy, dict, "an object") and \
                        expect(f"genomes.{name}.sequence.path", copy.get("path"), str, "a path"):
                    _check_store_path(copy["path"], f"genomes.{name}.sequence", problems)
                    expect(f"genomes.{name}.sequence.sha256", copy.get("sha256"), str, "a checksum")
    shards = part.get("shards")
    if expect("shards", shards, list, "a list"):
        for number, shard in enumerate(shards):
            where = f"shards[{number}]"
            if not expect(where, shard, dict, "an object"):
                continue
            if expect(f"{where}.path", shard.get("path"), str, "a path"):
                _check_store_path(shard["path"], where, problems)
            for key in ("rows", "first_tile_id", "last_tile_id"):
                expect(f"{where}.{key}", shard.get(key), int, "an integer")
            expect(f"{where}.genome", shard.get("genome"), str, "a genome name")
            expect(f"{where}.sha256", shard.get("sha256"), str, "a checksum")


def _check_annotation_genome(entry: dict, where: str, problems: list[str]) -> None:
    """An annotation set names its genome (null only for a format-2 set whose genome was ambiguous: its rows
    may lie on several genomes, each row's ``genome`` says which)."""
    genome = entry.get("genome")
    if not (isinstance(genome, str) or (genome is None and "genome" in entry)):
        problems.append(f"{where}.genome is {json.dumps(genome)[:40]}, expected a genome name")
    candidates = entry.get("genome_candidates", [])
    if not isinstance(candidates, list) or not all(isinstance(name, str) for name in candidates):
        problems.append(f"{where}.genome_candidates is {json.dumps(candidates)[:40]}, expected a list of genome names")


def _check_store_path(path: str, where: str, problems: list[str]) -> None:
    """Paths in a manifest are relative and stay inside the store (no absolute path, no ``..``)."""
    parts = [part for part in path.split("/") if part not in ("", ".")]  # str ops: a pangenome lists 10^4 paths
    if not parts or path.startswith("/") or ".." in parts:
        problems.append(f"{where}.path {path!r} points outside the store")
