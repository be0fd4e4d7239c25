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
from genoembed.manifest_checks import SEALED, expecting, genome_and_shard_problems, manifest_problems

FORMAT_VERSION = 6
MANIFEST = "manifest.json"
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
    for key in stale_sealed(root, manifest, [(path, cached[1]) for path, cached in _SEALED_FILES.items()]):
        del _SEALED_FILES[key[0]]
    for key in stale_sealed(root, manifest, _SEALED_GENOME_FILES):
        del _SEALED_GENOME_FILES[key]
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
        genome_and_shard_problems(content, expecting(problems), problems)
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


def stale_sealed(root: Path, manifest: dict, cached) -> list[tuple[str, str]]:
    """The ``cached`` (path, sha256) keys of ``root``'s sealed files that ``manifest``, just read, does not list:
    what a process caches of sealed files is forgotten at each read, so a long-lived reader (a server) holds the
    files of the newest snapshot, not every file that folds and removes retired (a reader still on an older
    snapshot has its entries in its manifest, and reads a file again only to list its paths)."""
    folder, listed = str(root / SEALED) + os.sep, {(str(root / d["path"]), d["sha256"]) for d in manifest.get("sealed") or ()}
    return [key for key in cached if key[0].startswith(folder) and tuple(key) not in listed]


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
