-- Search and listing that scale (registry/search.py reads these tables).
--
-- handle_counts: the live number of handles per prefix, so a listing's
-- totalCount is a sum of a few rows instead of count(*) over millions. Each
-- prefix has up to 16 rows (`slot`, chosen by the writing backend), so
-- concurrent writes to one prefix do not queue on a single counter row until
-- they commit; the count is sum(n) over the prefix's rows.
CREATE TABLE handle_counts (
    prefix_key  text     NOT NULL,
    slot        smallint NOT NULL,
    n           bigint   NOT NULL,
    PRIMARY KEY (prefix_key, slot)
);

-- handle_terms: one row per publicly readable value whose data is a string
-- (format "string"): its type and its lower-cased text, cut to at most 256
-- characters (fewer when the handle and type are so long that the index entry
-- would pass PostgreSQL's b-tree limit). `whole` says the term is the whole
-- lower-cased value; a match on a cut term is checked against the full value.
-- Private values are never written here.
CREATE TABLE handle_terms (
    prefix_key  text    NOT NULL,
    suffix_key  text    NOT NULL,
    idx         integer NOT NULL,
    type_key    text    NOT NULL,
    term        text    COLLATE "C" NOT NULL,
    whole       boolean NOT NULL
);

-- A record's stored values as jsonb, parsed once (the `json` operators re-parse the
-- text at every step). jsonb cannot hold U+0000, so an escaped NUL in a value
-- (`\u0000` after an even run of backslashes) is read as U+FFFD.
CREATE FUNCTION handle_values_jsonb(p_values json) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN strpos(p_values::text, '\u0000') = 0 THEN p_values::jsonb
           ELSE regexp_replace(p_values::text, '(?<!\\)((?:\\\\)*)\\u0000', '\1\\ufffd', 'g')::jsonb
           END
$$;

-- The terms of one record (its key and its stored "values" array).
CREATE FUNCTION handle_terms_of(p_prefix text, p_suffix text, p_values json)
RETURNS TABLE (prefix_key text, suffix_key text, idx integer, type_key text, term text,
               whole boolean)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_prefix, p_suffix, s.idx, s.type_key, left(s.lowered, s.room), length(s.lowered) <= s.room
    FROM (
        SELECT (v->>'index')::integer AS idx,
               lower(v->>'type') AS type_key,
               lower(v->'data'->>'value') AS lowered,
               -- characters of at most 4 bytes that fit beside the other key columns
               least(256, (2400 - octet_length(lower(v->>'type')) - octet_length(p_prefix)
                          - octet_length(p_suffix)) / 4) AS room
        FROM jsonb_array_elements(handle_values_jsonb(p_values)) AS v
        WHERE coalesce(substr(v->>'permissions', 3, 1), '1') = '1'
          AND v->'data'->>'format' = 'string'
          AND jsonb_typeof(v->'data'->'value') = 'string'
        OFFSET 0  -- compute each value's columns once
    ) AS s
    WHERE s.room > 0
$$;

-- Statement-level triggers with transition tables: a COPY or an INSERT ... SELECT
-- of a million rows maintains the terms and counts with a few set-based statements.
CREATE FUNCTION handles_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO handle_terms (prefix_key, suffix_key, idx, type_key, term, whole)
    SELECT f.* FROM new_rows AS n, handle_terms_of(n.prefix_key, n.suffix_key, n."values") AS f;
    INSERT INTO handle_counts AS c (prefix_key, slot, n)
    SELECT prefix_key, pg_backend_pid() % 16, count(*) FROM new_rows
    GROUP BY prefix_key ORDER BY prefix_key
    ON CONFLICT (prefix_key, slot) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION handles_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM handle_terms AS t USING old_rows AS o
    WHERE t.prefix_key = o.prefix_key AND t.suffix_key = o.suffix_key;
    INSERT INTO handle_counts AS c (prefix_key, slot, n)
    SELECT prefix_key, pg_backend_pid() % 16, -count(*) FROM old_rows
    GROUP BY prefix_key ORDER BY prefix_key
    ON CONFLICT (prefix_key, slot) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

-- An update rewrites the terms of the rows whose key or values changed (one
-- join of the old and new rows); the counts change only when a key moved to
-- another prefix.
CREATE FUNCTION handles_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH changed AS MATERIALIZED (
        SELECT o.prefix_key AS old_prefix, o.suffix_key AS old_suffix,
               n.prefix_key, n.suffix_key, n."values"
        FROM old_rows AS o FULL JOIN new_rows AS n
          ON n.prefix_key = o.prefix_key AND n.suffix_key = o.suffix_key
        WHERE o."values"::text IS DISTINCT FROM n."values"::text
    ), gone AS (
        DELETE FROM handle_terms AS t USING changed AS c
        WHERE t.prefix_key = c.old_prefix AND t.suffix_key = c.old_suffix
    )
    INSERT INTO handle_terms (prefix_key, suffix_key, idx, type_key, term, whole)
    SELECT f.* FROM changed AS c, handle_terms_of(c.prefix_key, c.suffix_key, c."values") AS f
    WHERE c.prefix_key IS NOT NULL;
    INSERT INTO handle_counts AS c (prefix_key, slot, n)
    SELECT prefix_key, pg_backend_pid() % 16, sum(d) FROM (
        SELECT prefix_key, 1 AS d FROM new_rows
        UNION ALL SELECT prefix_key, -1 FROM old_rows) AS moved
    GROUP BY prefix_key HAVING sum(d) <> 0 ORDER BY prefix_key
    ON CONFLICT (prefix_key, slot) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION handles_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE handle_terms, handle_counts;
    RETURN NULL;
END
$$;

-- No write may slip between the triggers' creation and the backfill.
LOCK TABLE handles IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER handles_terms_insert AFTER INSERT ON handles
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION handles_inserted();
CREATE TRIGGER handles_terms_update AFTER UPDATE ON handles
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION handles_updated();
CREATE TRIGGER handles_terms_delete AFTER DELETE ON handles
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION handles_deleted();
CREATE TRIGGER handles_terms_truncate AFTER TRUNCATE ON handles
    FOR EACH STATEMENT EXECUTE FUNCTION handles_truncated();

INSERT INTO handle_terms (prefix_key, suffix_key, idx, type_key, term, whole)
SELECT f.* FROM handles AS h, handle_terms_of(h.prefix_key, h.suffix_key, h."values") AS f;
INSERT INTO handle_counts (prefix_key, slot, n)
SELECT prefix_key, 0, count(*) FROM handles GROUP BY prefix_key;

-- Exact and prefix matches of a type's terms, in the order search pages through
-- them (term, then handle key); the term's "C" collation makes a prefix a range.
-- `whole` rides along so a pattern is tested on the index alone.
CREATE INDEX handle_terms_match
    ON handle_terms (type_key, term, prefix_key, suffix_key, idx) INCLUDE (whole);
-- A record's terms, to replace or delete them with the record.
CREATE INDEX handle_terms_record ON handle_terms (prefix_key, suffix_key);
