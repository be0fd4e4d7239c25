"""The SQL that parses GTF and GFF3 in DuckDB (:class:`genoembed.gff.FeatureFile` runs it), one builder per step.

Each builder returns statement text for a cursor whose temp table ``ge_rows`` comes first (every data line,
numbered as the file numbers it); the steps after it key rows into multi-row features, find groups whose rows
disagree, merge groups (parts, attributes) and give exons to their parents, ending in ``ge_features``.
"""

from __future__ import annotations

import re

from genoembed import schema

# GTF's ``key "value";`` / ``key value;`` attribute items, as genoembed has always read them
GTF_ATTRIBUTE = re.compile(r'\s*([^\s;"]+)\s+(?:"((?:[^"\\]|\\.)*)"|([^;\s"][^;\s]*))\s*(?:;|$)')


# attributes stay two lists (attr_k, attr_v) up to Arrow, where they become the map (gff.attribute_maps)
FEATURE_SELECT = 'chrom, start, "end", strand, kind AS type, name, feature_id, parent, source, attr_k, attr_v, parts'


def quoted(names: list[str]) -> list[str]:
    return [f'"{name}"' for name in names]
_WHITESPACE = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"  # str.strip()'s ASCII whitespace
_STRIP = f"trim({{0}}, {_WHITESPACE})"
# trim() walks the whole value (~250 MB/s): only values that start or end with whitespace are trimmed (a
# test of the first and last byte: a regex for the same took a pass over the value)
_EDGE_STRIP = ("CASE WHEN " + " OR ".join(f"{test}({{0}}, chr({code}))" for test in ("starts_with", "suffix")
                                         for code in (32, 9, 10, 11, 12, 13)) + " THEN " + _STRIP + " ELSE {0} END")
_GFF_INTEGER = "regexp_full_match({0}, '\\s*-?[0-9]+\\s*')"


# A GTF attribute column written the usual way (``key "value"; key value;``, single spaces, no ``;``, ``\``,
# space or quote inside a value): read with plain string functions; any other goes through GTF_ATTRIBUTE.
_GTF_PLAIN = r'([^\s;"]+ ("[^"\\; ]*"|[^;\s"]+)(; |;$|$))*'


def gff_rows_sql(lines: str, dialect: str) -> str:
    """``ge_rows``: every data line (number, text, ok) and, where ok, its fields and attributes (repeated keys
    merged: GTF comma-joins, GFF3 keeps the last; then ``gff_source``/``score``/``phase`` where set), as
    :func:`gff_columns` and the attribute readers read them. Speed: a GTF attribute column of the usual
    shape (:data:`_GTF_PLAIN`, one DFA pass) is cut by string replacement and one split; only other lines
    take the capturing :data:`GTF_ATTRIBUTE` (a CASE branch runs only on its rows), and only rows with a
    repeated key, or a key named like a column, are merged by lambdas."""
    attributes = _EDGE_STRIP.format("f[9]")
    if dialect == "gtf":
        pattern = GTF_ATTRIBUTE.pattern.replace("'", "''")
        plain = _GTF_PLAIN.replace("'", "''")
        text = f"CASE WHEN {attributes} = '.' THEN '' ELSE {attributes} END"
        items = f"""CASE WHEN a_text = '' THEN []::VARCHAR[]
                         WHEN NOT contains(a_text, '\\') AND regexp_full_match(a_text, '{plain}')
                         THEN string_split(replace(replace(a_text || ' ', '"', ''), '; ', ' '), ' ')[:-2] END"""
        keys = f"""CASE WHEN a_items IS NOT NULL THEN list_slice(a_items, 1, len(a_items), 2)
                        ELSE regexp_extract_all(a_text, '{pattern}', 1) END AS a_keys,
                   CASE WHEN a_items IS NOT NULL THEN list_slice(a_items, 2, len(a_items), 2)
                        ELSE list_transform(regexp_extract_all(a_text, '{pattern}', 3), lambda x, i: coalesce(
                             x, regexp_extract_all(a_text, '{pattern}', 2)[i])) END AS a_values"""
        # a CASE, not OR: DuckDB evaluates both sides of an OR on every row, and the regex is the costly one
        attributes_ok = (f"CASE WHEN a_items IS NOT NULL THEN true ELSE len(array_to_string(regexp_extract_all("
                         f"a_text, '{pattern}', 0), '')) = len(a_text) END AND list_contains(a_keys, 'gene_id')")
        repeated = "array_to_string(list_filter(a_values, lambda y, j: a_keys[j] = a_keys[i]), ',')"
        chrom, kind = "f[1]", "f[3]"
        before_fasta = ""
        in_runs = "NOT a_named AND a_one_run_a_key AND NOT a_no_repeat AND NOT contains(a_text, chr(1))"
    else:
        text = f"CASE WHEN {attributes} IN ('', '.') THEN '' ELSE {attributes} END"
        items = f"list_filter(string_split(a_text, ';'), lambda x: {_STRIP.format('x')} <> '')"
        tag = _STRIP.format("split_part(x, '=', 1)")
        keys = (f"list_transform(a_items, lambda x: url_decode({tag})) AS a_keys, "
                "list_transform(a_items, lambda x: url_decode(x[position('=' IN x) + 1:])) AS a_values")
        attributes_ok = "coalesce(list_bool_and(list_transform(a_items, lambda x: contains(x, '='))), true)"
        repeated = "list_filter(a_values, lambda y, j: a_keys[j] = a_keys[i])[-1]"
        chrom, kind = "url_decode(f[1])", "url_decode(f[3])"
        in_runs = "false"
        before_fasta = ("AND line < (SELECT coalesce(min(line), 9223372036854775807) FROM lines "
                        "WHERE starts_with(text, '##FASTA') OR starts_with(text, '>'))")
    integer = "TRY_CAST({0} AS BIGINT)".format
    columns_ok = (f"len(f) = 9 AND {_GFF_INTEGER.format('f[4]')} AND {_GFF_INTEGER.format('f[5]')} "
                  f"AND {integer(_STRIP.format('f[4]'))} BETWEEN 1 AND {integer(_STRIP.format('f[5]'))} "
                  "AND f[7] IN ('+', '-', '.', '?')")
    columns = {"gff_source": "f[2]", "score": "f[6]", "phase": "f[8]"}
    override = " ".join(f"WHEN a_keys[i] = '{key}' AND {value} <> '.' THEN {value}" for key, value in columns.items())
    added_keys = ", ".join(f"CASE WHEN {value} <> '.' AND NOT list_contains(a_keys, '{key}') THEN ['{key}'] "
                           "ELSE []::VARCHAR[] END" for key, value in columns.items())
    added_values = ", ".join(f"CASE WHEN {value} <> '.' AND NOT list_contains(a_keys, '{key}') THEN [{value}] "
                             "ELSE []::VARCHAR[] END" for key, value in columns.items())
    first = "list_filter(range(1, len(a_keys) + 1), lambda i: list_position(a_keys, a_keys[i]) = i)"
    return f"""
CREATE TEMP TABLE ge_rows AS
WITH lines AS ({lines}),
data AS (
    SELECT line, text, string_split(text, chr(9)) AS f FROM lines
    WHERE text IS NOT NULL AND NOT regexp_full_match(text, '[\\s\\x0b]*') AND NOT starts_with(text, '#')
          {before_fasta}),
checked AS (SELECT *, {columns_ok} AS columns_ok FROM data),
read AS (SELECT *, CASE WHEN columns_ok THEN {text} END AS a_text FROM checked),
itemised AS (SELECT *, {items} AS a_items FROM read),
split AS (SELECT *, {keys} FROM itemised),
shaped AS (
    SELECT *, list_has_any(a_keys, ['gff_source', 'score', 'phase']) AS a_named,
           list_transform(range(1, len(a_keys) + 1), lambda i: i = 1 OR a_keys[i] <> a_keys[i - 1]) AS a_run_starts
    FROM split),
distinct_runs AS (
    -- every key in one run of items: each run starts at its key's first place (a per-row list_distinct, the
    -- obvious test, built a hash set per row at three times the cost); no repeat: that and no run longer than 1
    SELECT *, coalesce(list_bool_and(list_transform(a_keys, lambda k, i: NOT a_run_starts[i]
                                                    OR list_position(a_keys, k) = i)), true) AS a_one_run_a_key,
           coalesce(list_bool_and(a_run_starts), true) AS a_no_repeat
    FROM shaped),
runs AS (
    -- GTF: a key repeated in one run of items (GENCODE's tag "basic"; tag "CCDS") merges by one join and one
    -- split (GFF3 keeps a repeated tag's last value, in runs too)
    SELECT *, {in_runs} AS a_in_runs
    FROM distinct_runs),
checked_attributes AS (SELECT *, coalesce(columns_ok AND {attributes_ok}, false) AS ok FROM runs),
parsed AS (
SELECT line, CASE WHEN NOT ok THEN text END AS text, ok,
       {chrom} AS chrom, {kind} AS kind, {integer(_STRIP.format('f[4]'))} - 1 AS start,
       {integer(_STRIP.format('f[5]'))} AS "end",
       CASE f[7] WHEN '?' THEN '.' ELSE f[7] END AS strand,
       list_concat(CASE WHEN NOT a_named AND a_one_run_a_key AND a_no_repeat THEN a_keys
                        WHEN a_in_runs THEN list_filter(a_keys, lambda x, i: a_run_starts[i])
                        ELSE list_transform({first}, lambda i: a_keys[i]) END,
                   {added_keys}) AS attr_k,
       list_concat(CASE WHEN NOT a_named AND a_one_run_a_key AND a_no_repeat THEN a_values
                        WHEN a_in_runs THEN string_split(array_to_string(list_transform(a_values, lambda x, i:
                             CASE WHEN a_run_starts[i] THEN chr(1) ELSE ',' END || x), '')[2:], chr(1))
                        ELSE list_transform({first}, lambda i: CASE {override}
                             WHEN list_contains(a_keys[i + 1:], a_keys[i]) THEN {repeated} ELSE a_values[i] END) END,
                   {added_values}) AS attr_v
FROM checked_attributes)
SELECT *, {_keyed_fields(dialect)} FROM parsed"""


def _attribute(name: str) -> str:
    return f"attr_v[list_position(attr_k, '{name}')]"


def gff_groups_sql() -> str:
    """``ge_groups`` (rows of one multi-row feature: first row, count) and ``ge_conflicts`` (a group whose rows
    disagree on seqid or type: its first disagreeing row)."""
    return """
CREATE TEMP TABLE ge_groups AS
SELECT group_key, any_value(group_id) AS group_id, min(line) AS first_line, arg_min(chrom, line) AS first_chrom,
       arg_min(kind, line) AS first_kind, count(*) AS rows
FROM ge_keyed WHERE group_key IS NOT NULL GROUP BY group_key;
CREATE TEMP TABLE ge_conflicts AS
SELECT g.first_line, struct_pack(group_id := any_value(g.group_id), first_line := g.first_line,
                                 first_chrom := any_value(g.first_chrom), first_kind := any_value(g.first_kind),
                                 other_line := min(r.line), other_chrom := arg_min(r.chrom, r.line),
                                 other_kind := arg_min(r.kind, r.line)) AS c
FROM ge_keyed r JOIN ge_groups g USING (group_key)
WHERE r.chrom <> g.first_chrom OR r.kind <> g.first_kind
GROUP BY g.group_key, g.first_line"""


def gff_features_sql(dialect: str, source: str) -> list[str]:
    """Statements that make ``ge_features``: one row per feature (a multi-row feature in the place of its
    first row, with its parts and merged attributes: a value every row has is kept, values that differ are
    comma-joined in part order, '' where a row lacks the key), and exon parts for their parents.

    Each step is a temp table (DuckDB spills those), and the last, a view, streams ``ge_keyed`` past small
    tables into whatever reads it (a copy of every row cost 6 % of the time and spilled at GENCODE's size): a
    step over every row and its attributes at once ran out of a 1 GB limit at GENCODE's size.
    Groups whose rows list the same keys (GENCODE's CDS/UTR rows) merge per position; others key by key."""
    if dialect == "gtf":
        exon_parents = f"[{_attribute('transcript_id')}]"
        owner = "CASE WHEN f.kind = 'transcript' THEN f.feature_id END"
    else:
        exon_parents = "list_distinct(string_split(coalesce(parent, ''), ','))"
        owner = "CASE WHEN NOT suffix(lower(f.kind), 'gene') THEN f.feature_id END"
    return [
        """CREATE TEMP TABLE ge_members AS
SELECT k.*, g.first_line FROM ge_keyed k JOIN ge_groups g USING (group_key) WHERE g.rows > 1""",
        """CREATE TEMP TABLE ge_joined AS
SELECT first_line AS line, arg_min(chrom, line) AS chrom, min(start) AS start, max("end") AS "end",
       CASE WHEN count(DISTINCT strand) = 1 THEN any_value(strand) ELSE '.' END AS strand,
       arg_min(kind, line) AS kind, arg_min(name, line) AS name, arg_min(feature_id, line) AS feature_id,
       arg_min(parent, line) AS parent, list(struct_pack(start, "end", strand) ORDER BY line) AS parts,
       min(attr_k) = max(attr_k) AS same_keys, arg_min(attr_k, line) AS attr_k,
       list(attr_v ORDER BY line) AS rows_v
FROM ge_members GROUP BY first_line""",
        """CREATE TEMP TABLE ge_merged AS
SELECT * EXCLUDE (same_keys, rows_v, attr_k),
       attr_k, list_transform(range(1, len(attr_k) + 1), lambda i: CASE
           WHEN len(list_distinct(list_transform(rows_v, lambda r: r[i]))) = 1 THEN rows_v[1][i]
           ELSE array_to_string(list_transform(rows_v, lambda r: r[i]), ',') END) AS attr_v
FROM ge_joined WHERE same_keys
UNION ALL BY NAME
SELECT j.* EXCLUDE (same_keys, rows_v, attr_k), a.attr_k, a.attr_v
FROM ge_joined j JOIN (
    WITH entries AS (
        SELECT first_line, line, unnest(attr_k) AS key, unnest(attr_v) AS value,
               unnest(range(1, len(attr_k) + 1)) AS position
        FROM ge_members WHERE first_line IN (SELECT line FROM ge_joined WHERE NOT same_keys)),
    first_seen AS (SELECT first_line, key, min(line * 65536 + position) AS seen FROM entries GROUP BY ALL),
    every_value AS (
        SELECT m.first_line, f.key, f.seen, m.line, coalesce(e.value, '') AS value
        FROM (SELECT DISTINCT first_line, line FROM entries) m JOIN first_seen f USING (first_line)
        LEFT JOIN entries e ON e.first_line = m.first_line AND e.line = m.line AND e.key = f.key),
    per_key AS (
        SELECT first_line, key, any_value(seen) AS seen,
               CASE WHEN count(DISTINCT value) = 1 THEN any_value(value)
                    ELSE string_agg(value, ',' ORDER BY line) END AS value
        FROM every_value GROUP BY first_line, key)
    SELECT first_line, list(key ORDER BY seen) AS attr_k, list(value ORDER BY seen) AS attr_v
    FROM per_key GROUP BY first_line) a ON a.first_line = j.line""",
        f"""CREATE TEMP TABLE ge_exon_parts AS
WITH exons AS (
    SELECT unnest({exon_parents}) AS owner, line, struct_pack(start, "end", strand) AS part FROM (
        SELECT k.line, k.start, k."end", k.strand, k.parent, k.attr_k, k.attr_v FROM ge_keyed k
        LEFT JOIN ge_groups g USING (group_key) WHERE k.kind = 'exon' AND coalesce(g.rows, 1) = 1
        UNION ALL
        SELECT line, start, "end", strand, parent, attr_k, attr_v FROM ge_merged WHERE kind = 'exon'))
SELECT owner, list(part ORDER BY line) AS parts FROM exons
WHERE owner IS NOT NULL AND owner <> '' GROUP BY owner HAVING count(*) > 1""",
        f"""CREATE TEMP VIEW ge_features AS
SELECT f.* EXCLUDE (parts), CASE WHEN f.parts IS NULL AND f.kind <> 'exon' THEN e.parts ELSE f.parts END AS parts,
       '{source.replace("'", "''")}' AS source
FROM (SELECT k.line, k.chrom, k.start, k."end", k.strand, k.kind, k.name, k.feature_id, k.parent, k.attr_k,
             k.attr_v, NULL::{schema.PARTS_SQL_TYPE} AS parts
      FROM ge_keyed k LEFT JOIN ge_groups g USING (group_key) WHERE coalesce(g.rows, 1) = 1
      UNION ALL BY NAME SELECT * FROM ge_merged) f
LEFT JOIN ge_exon_parts e ON e.owner = ({owner})"""]


def _keyed_fields(dialect: str) -> str:
    """name, feature_id, parent and the key of the multi-row feature a row belongs to (GTF: transcript_id and
    type, for types other than gene/transcript/exon; GFF3: ID), computed with the rows (one table less)."""
    if dialect == "gtf":
        gene, transcript = _attribute("gene_id"), _attribute("transcript_id")
        return f"""CASE WHEN list_contains(attr_k, 'gene_name') THEN {_attribute('gene_name')} ELSE {gene} END AS name,
       CASE kind WHEN 'gene' THEN {gene} WHEN 'transcript' THEN {transcript} ELSE {_attribute('exon_id')} END
           AS feature_id,
       CASE kind WHEN 'gene' THEN NULL WHEN 'transcript' THEN {gene} ELSE coalesce({transcript}, {gene}) END AS parent,
       {transcript} AS group_id,
       CASE WHEN {transcript} IS NOT NULL AND kind NOT IN ('gene', 'transcript', 'exon')
            THEN {transcript} || chr(0) || kind END AS group_key"""
    identifier = _attribute("ID")
    return f"""coalesce({', '.join(f"nullif({_attribute(key)}, '')" for key in ('Name', 'gene', 'locus_tag', 'ID'))})
           AS name,
       {identifier} AS feature_id, {_attribute('Parent')} AS parent, {identifier} AS group_id,
       {identifier} AS group_key"""


# ``ge_keyed``: the good rows of ``ge_rows``, with the fields :func:`_keyed_fields` names
KEYED_SQL = "CREATE TEMP VIEW ge_keyed AS SELECT * EXCLUDE (text, ok) FROM ge_rows WHERE ok"
