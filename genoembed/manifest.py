"""The manifest: the one record of what a store holds, read as a checked snapshot and committed atomically.

The manifest lists shards (rows, sha256, tile-id ranges), genomes, provenance, the vector index and
annotation sets. :func:`read_manifest` migrates older formats (named migrations, run in order) and checks
every field, so a malformed manifest is one clear error, never a traceback; :func:`write_manifest`
replaces ``manifest.json`` atomically (temp name, fsync, rename: :func:`atomic_file`), which is what makes
each commit a snapshot readers can keep. Writers hold :func:`genoembed.store.write_lock` around a commit.

On disk (format 5 on) complete genomes are *sealed*: once :data:`SEAL_GENOMES` of them are listed in
``manifest.json`` itself, their entries and shards move to an immutable file ``manifest.d/genomes-N.json``
that ``manifest.json`` names with its sha256 (``sealed``); sealed files are folded like a binary counter
(each genome is rewritten O(log n) times over a store's life). So a commit writes the genomes being written
and a small top-level file, not every genome of a pangenome, and a process reads (sha256, parse, checks)
each sealed file once. In memory the manifest is one dict as before: ``genomes`` and ``shards`` hold every
genome and shard, sealed or not; a sealed one is a :class:`SealedEntry`, shared by every read of its file in
the process, so it refuses changes (edit a copy, ``dict(entry)``, and put that in its place).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

from genoembed.errors import StoreError
from genoembed.files import atomic_write_bytes

FORMAT_VERSION = 6
MANIFEST = "manifest.json"
SEALED = "manifest.d"  # immutable files of sealed genomes: manifest.d/genomes-NNNNN.json
# Complete genomes listed in manifest.json itself before they are sealed into a file of their own: small
# stores keep one readable manifest, a pangenome's commits stay the size of this many genomes.
SEAL_GENOMES = 8


def file_sha256(path: Path) -> str:
    from genoembed.genome import file_checksum

    return file_checksum(path)


def read_manifest(root: Path) -> dict:
    """The store's committed manifest, migrated to the current format and checked (all problems at once)."""
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"{root}: not a genoembed store (no {MANIFEST}); build one with `genoembed index`")
    try:
        with open(manifest_path, "rb") as handle:
            stamp, data = _stamp(os.fstat(handle.fileno())), handle.read()
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreError(f"{manifest_path}: corrupt manifest ({error}); rebuild the store") from None
    except OSError as error:
        raise StoreError(f"{manifest_path}: cannot read ({error.strerror or error}); check its permissions") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{manifest_path}: corrupt manifest (a JSON {type(manifest).__name__}, not an object); "
                         "rebuild the store")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(f"{manifest_path}: corrupt manifest (format_version {version!r} is not a positive "
                         "integer); rebuild the store")
    if version > FORMAT_VERSION:
        raise StoreError(f"{manifest_path}: store format {version} is newer than this genoembed "
                         f"(reads format {FORMAT_VERSION}); upgrade genoembed")
    try:
        for step in range(version, FORMAT_VERSION):
            manifest = MIGRATIONS[step](manifest)
    except (KeyError, TypeError, AttributeError) as error:
        raise StoreError(f"{manifest_path}: corrupt format-{version} manifest (cannot upgrade it: missing or "
                         f"malformed {error}); rebuild the store") from None
    problems = [] if _WRITTEN.get(str(manifest_path)) == stamp else manifest_problems(manifest)
    if problems:
        raise StoreError(f"{manifest_path}: corrupt manifest ({_listed(problems)}); rebuild the store")
    return _with_sealed(root, manifest)


def _listed(problems: list[str]) -> str:
    return f"{'; '.join(problems[:5])}{f'; and {len(problems) - 5} more' if len(problems) > 5 else ''}"


def m001_single_genome(manifest: dict) -> dict:
    """Format 1 -> 2: format 1 stores held one genome, recorded in the provenance; give them a ``genomes`` section."""
    genome = manifest["provenance"].pop("genome")
    rows = sum(shard["rows"] for shard in manifest["shards"])
    manifest["genomes"] = {genome["name"]: {**genome, "first_tile_id": 0, "status": manifest.get("status")}}
    for shard in manifest["shards"]:
        shard["genome"] = genome["name"]
    manifest.update(format_version=2, next_tile_id=rows, next_shard=len(manifest["shards"]))
    if manifest.get("index"):
        manifest["index"]["genomes"] = [genome["name"]]
    return manifest


def m002_annotation_genomes(manifest: dict) -> dict:
    """Format 2 -> 3: annotation sets belong to one genome (``genome``; contig names repeat across genomes).

    Format-2 annotation files have no ``genome`` column and are not rewritten here: a reader takes no lock and
    may not write (a read-only store must keep opening), and their sha256 stays what the manifest recorded.
    Instead each entry is marked ``genome_in_file: false`` and the SQL ``annotations`` view supplies the
    column (:func:`genoembed.sql.annotation_owners`). The genome is assigned when it is unambiguous: a store
    holding one genome gives it to every set. A set of a several-genome store gets ``genome: null`` and the
    genomes it could be on (``genome_candidates``); each row then belongs to the one candidate holding its
    contig, and rows on a contig name several candidates share join nothing (re-add the file with
    ``genoembed annotate --genome``). The first writer commits the migrated manifest, so a genome appended
    later never claims these rows.
    """
    complete = [name for name, entry in manifest["genomes"].items() if entry.get("status") == "complete"]
    for entry in (manifest.get("annotations") or {}).values():
        if isinstance(entry, dict) and "genome" not in entry:
            entry.update(genome=complete[0] if len(complete) == 1 else None, genome_in_file=False)
            if len(complete) != 1:
                entry["genome_candidates"] = complete
    manifest["format_version"] = 3
    return manifest


def m003_topology(manifest: dict) -> dict:
    """Format 3 -> 4: genomes record their circular contigs (none were known before) and may carry a copy of
    their sequence (``sequence``; older stores have none and read their FASTA, see ``genoembed verify
    --embed-sequences``)."""
    for entry in manifest["genomes"].values():
        entry.setdefault("circular", [])
    manifest["format_version"] = 4
    return manifest


def m004_sealed_genomes(manifest: dict) -> dict:
    """Format 4 -> 5: complete genomes may be sealed into immutable files (``sealed``); a format-4 manifest
    seals none (every genome stays in ``manifest.json``) until the next writer commits."""
    manifest.update(sealed=[], next_sealed=0, format_version=5)
    return manifest


def m005_index_watermark(manifest: dict) -> dict:
    """Format 5 -> 6: the index records the tile ids it covers (``tile_ids_below``: every complete genome's tiles
    with smaller ids) instead of every genome's name, a list each append rewrote whole in ``manifest.json``. The
    bound is where the first genome the list leaves out starts (none: the next unassigned id), and at most the end
    of the id ranges its parts cover (a genome sealed before the append that completed it indexed it)."""
    index = manifest.get("index")
    if index and "tile_ids_below" not in index:  # an entry without the list: bounded by its parts alone
        listed = index.pop("genomes", None)
        bounds = [entry["first_tile_id"] for name, entry in manifest["genomes"].items()
                  if (listed is not None and name not in listed) or entry.get("status") != "complete"]
        covered = [part["tile_ids"][1] for part in index.get("parts") or () if "tile_ids" in part]
        bounds += [max(covered)] if covered else []
        index["tile_ids_below"] = min(bounds, default=manifest["next_tile_id"])
    manifest["format_version"] = 6
    return manifest


# Named migrations, run in order: MIGRATIONS[n] turns a format-n manifest into format n + 1.
MIGRATIONS = {1: m001_single_genome, 2: m002_annotation_genomes, 3: m003_topology, 4: m004_sealed_genomes,
              5: m005_index_watermark}


# Widest vector a store may declare: far above any model's, low enough that a schema or buffer of that
# width can be made (a damaged ``dim`` of 1e12 overflowed Arrow's list size).
MAX_DIM = 1 << 20


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expecting(problems: list[str]):
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
    expect = _expecting(problems)
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
    _genome_and_shard_problems(manifest, expect, problems)
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


def _genome_and_shard_problems(part: dict, expect, problems: list[str]) -> None:
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


def sequence_files(manifest: dict, genome: str | None = None) -> set[str]:
    """Store paths of the genome sequences the manifest lists (each BGZF file with its .fai and .gzi), of one
    genome or all: what readers may open, so what no sweep or orphan check may touch."""
    entries = [manifest["genomes"][genome]] if genome is not None else manifest["genomes"].values()
    return {entry["sequence"]["path"] + ext for entry in entries if entry.get("sequence")
            for ext in ("", ".fai", ".gzi")}


def write_manifest(root: Path, manifest: dict) -> None:
    """Commit ``manifest`` atomically (callers hold the writer lock): complete genomes past
    :data:`SEAL_GENOMES` are sealed first (their file written before the ``manifest.json`` naming it), and
    ``manifest``'s ``sealed`` list is updated to what was committed. Written compact: ``indent`` makes
    ``json`` fall back to its pure-Python encoder; `genoembed info` is the readable view."""
    manifest["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    sealed, next_sealed, top = _sealed_and_top(root, manifest)
    atomic_write_bytes(root / MANIFEST, json.dumps({**top, "sealed": sealed, "next_sealed": next_sealed},
                                                   separators=(",", ":")).encode())
    _WRITTEN[str(root / MANIFEST)] = _stamp(os.stat(root / MANIFEST))
    manifest.update(sealed=sealed, next_sealed=next_sealed, format_version=FORMAT_VERSION)


def _sealed_and_top(root: Path, manifest: dict) -> tuple[list[dict], int, dict]:
    """(sealed files, next sealed number, the rest of the manifest): sealed files whose genomes and shards
    are unchanged are kept (a prefix: the first changed one and those after it are dissolved); then the
    complete genomes that follow are sealed into a new file once there are :data:`SEAL_GENOMES` of them,
    folded with the newest kept files while those hold no more genomes than it (a binary counter)."""
    genomes, shards = manifest["genomes"], manifest["shards"]
    names = list(genomes)
    kept, covered, covered_shards = [], 0, 0
    for descriptor in manifest.get("sealed") or ():
        content = _sealed_content(root, descriptor)
        held, held_shards = content["genomes"], content["shards"]
        # list comparisons run in C and take an entry that is the cached one (the usual case) as equal at once
        if names[covered:covered + len(held)] != list(held) or \
                [genomes[name] for name in held] != list(held.values()) or \
                shards[covered_shards:covered_shards + len(held_shards)] != held_shards:
            break
        kept.append(descriptor)
        covered, covered_shards = covered + len(held), covered_shards + len(held_shards)
    complete = []
    for name in names[covered:]:
        if genomes[name].get("status") != "complete":
            break
        complete.append(name)
    next_sealed = manifest.get("next_sealed", 0)
    inline_shards = shards[covered_shards:]
    if len(complete) >= SEAL_GENOMES:
        folded = []
        while kept and kept[-1]["genomes"] <= len(complete) + sum(d["genomes"] for d in folded):
            folded.insert(0, kept.pop())
        sealing = set(complete)
        content = {"genomes": {}, "shards": []}
        for descriptor in folded:
            old = _sealed_content(root, descriptor)
            content["genomes"].update(old["genomes"])
            content["shards"] += old["shards"]
            _SEALED_FILES.pop(str(root / descriptor["path"]), None)  # retired: its readers may read it again
            _SEALED_GENOME_FILES.pop((str(root / descriptor["path"]), descriptor["sha256"]), None)
        content["genomes"].update((name, genomes[name]) for name in complete)
        content["shards"] += [shard for shard in inline_shards if shard["genome"] in sealing]
        inline_shards = [shard for shard in inline_shards if shard["genome"] not in sealing]
        kept.append(_write_sealed(root, f"{SEALED}/genomes-{next_sealed:05d}.json", content))
        next_sealed += 1
        covered += len(complete)
    top = {key: value for key, value in manifest.items() if key not in ("genomes", "shards", "sealed", "next_sealed")}
    top.update(format_version=FORMAT_VERSION, genomes={name: genomes[name] for name in names[covered:]},
               shards=inline_shards)
    return kept, next_sealed, top


def _write_sealed(root: Path, path: str, content: dict) -> dict:
    """Write a sealed file (and keep it, as read back, for this process's reads); its ``sealed`` entry."""
    data = json.dumps(content, separators=(",", ":")).encode()
    (root / SEALED).mkdir(exist_ok=True)
    atomic_write_bytes(root / path, data)
    descriptor = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "genomes": len(content["genomes"]),
                  "shards": len(content["shards"])}
    _SEALED_FILES[str(root / path)] = (_stamp(os.stat(root / path)), descriptor["sha256"],
                                       json.loads(data, object_hook=SealedEntry))
    return descriptor


def _sealed_content(root: Path, descriptor: dict) -> dict:
    """A sealed file's ``genomes`` and ``shards``, read, checked against its sha256 and validated once per
    process (the file never changes: a new version gets a new name)."""
    path = root / descriptor["path"]
    try:
        with open(path, "rb") as handle:
            stamp = _stamp(os.fstat(handle.fileno()))
            cached = _SEALED_FILES.get(str(path))
            if cached and cached[0] == stamp and cached[1] == descriptor["sha256"]:
                return cached[2]
            data = handle.read()
    except OSError as error:
        raise StoreError(f"{path}: cannot read this sealed part of the manifest ({error.strerror or error}); "
                         "restore it or rebuild the store") from None
    if hashlib.sha256(data).hexdigest() != descriptor["sha256"]:
        raise StoreError(f"{path}: sealed part of the manifest changed or is corrupt (sha256 differs from "
                         f"{MANIFEST}); restore it or rebuild the store")
    try:
        content = json.loads(data, object_hook=SealedEntry)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreError(f"{path}: corrupt sealed part of the manifest ({error}); rebuild the store") from None
    problems = []
    if not isinstance(content, dict):
        problems.append(f"a JSON {type(content).__name__}, not an object")
    else:
        _genome_and_shard_problems(content, _expecting(problems), problems)
        if not problems and (len(content["genomes"]), len(content["shards"])) != \
                (descriptor["genomes"], descriptor["shards"]):
            problems.append(f"{len(content['genomes'])} genomes and {len(content['shards'])} shards, "
                            f"{MANIFEST} says {descriptor['genomes']} and {descriptor['shards']}")
    if problems:
        raise StoreError(f"{path}: corrupt sealed part of the manifest ({_listed(problems)}); rebuild the store")
    _SEALED_FILES[str(path)] = (stamp, descriptor["sha256"], content)
    return content


def _with_sealed(root: Path, manifest: dict) -> dict:
    """``manifest`` (as ``manifest.json`` holds it) with the genomes and shards of its sealed files put before
    its own (the cached, read-only entries: no copy, so a read costs the genomes not yet sealed)."""
    if not manifest.get("sealed"):
        return manifest
    genomes, shards = {}, []
    for descriptor in manifest["sealed"]:
        content = _sealed_content(root, descriptor)
        genomes.update(content["genomes"])
        shards += content["shards"]
    clash = next((name for name in manifest["genomes"] if name in genomes), None)
    if clash is not None:
        raise StoreError(f"{root / MANIFEST}: corrupt manifest (genome {clash!r} is listed twice, there and in a "
                         "sealed file); rebuild the store")
    genomes.update(manifest["genomes"])
    manifest.update(genomes=genomes, shards=shards + manifest["shards"])
    return manifest


class SealedEntry(dict):
    """An object of a sealed file (a genome's entry, a shard's, their parts), as JSON read it: shared by every
    read of that file in this process, so it refuses changes; edit a copy (``dict(entry)``) and put the copy
    in its place, which :func:`write_manifest` sees as a change to seal again."""

    def _refuse(self, *_args, **_options):
        raise TypeError("a sealed manifest entry is shared by every reader in this process; put an edited copy "
                        "(dict(entry)) in its place instead")

    __setitem__ = __delitem__ = __ior__ = update = pop = popitem = setdefault = clear = _refuse

    def __reduce__(self):
        return SealedEntry, (dict(self),)


def genome_files(root: Path, manifest: dict) -> set[str]:
    """Store paths of every shard and genome sequence (with its .fai and .gzi) ``manifest`` (as read) lists;
    a sealed file's are worked out once per process."""
    files, sealed = set(), 0
    for descriptor in manifest.get("sealed") or ():
        key = (str(root / descriptor["path"]), descriptor["sha256"])
        if key not in _SEALED_GENOME_FILES:
            content = _sealed_content(root, descriptor)
            _SEALED_GENOME_FILES[key] = frozenset({shard["path"] for shard in content["shards"]} |
                                                  sequence_files(content))
        files |= _SEALED_GENOME_FILES[key]
        sealed += descriptor["genomes"]
    inline = {"genomes": dict(list(manifest["genomes"].items())[sealed:])}  # sealed files hold the first genomes
    return files | {shard["path"] for shard in manifest["shards"] if shard["genome"] in inline["genomes"]} | \
        sequence_files(inline)


def sealed_files(manifest: dict) -> set[str]:
    """Store paths of the sealed files the manifest lists: what readers may open, so what no sweep may touch."""
    return {descriptor["path"] for descriptor in manifest.get("sealed") or ()}


# Sealed files this process read or wrote: path -> (file identity, sha256, content); and (path, sha256) -> the
# store paths of the shards and sequences a sealed file lists.
_SEALED_FILES: dict[str, tuple] = {}
_SEALED_GENOME_FILES: dict[tuple[str, str], frozenset[str]] = {}


# Manifests this process committed (path -> file identity): reading one back skips the field checks, which cost
# 0.06 s per read at 1,000 genomes and ran four times per append. Any other file at that path is checked.
_WRITTEN: dict[str, tuple] = {}


def _stamp(stat: os.stat_result) -> tuple:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns
