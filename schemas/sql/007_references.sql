-- Traceability (registry/trace.py reads this table).
--
-- handle_refs: one row per reference a publicly readable value makes to another
-- identifier: an entry of its `references` list (RFC 3651 §3.1) or of its data
-- when the format is `vlist`. `idx` and `type` name the referencing value;
-- `to_prefix_key`/`to_suffix_key` are the referenced handle with ASCII letters
-- folded (as `handles` keys are), `to_index` the referenced index (0: the whole
-- handle). Walking down reads the records themselves; walking up ("where was
-- this batch used") reads this table by its target. Private values are never
-- written here. The target need not exist, nor be homed on this node.
CREATE TABLE handle_refs (
    from_prefix_key  text    NOT NULL,
    from_suffix_key  text    NOT NULL,
    idx              integer NOT NULL,
    type             text    NOT NULL,
    to_prefix_key    text    NOT NULL,
    to_suffix_key    text    NOT NULL,
    to_index         integer NOT NULL
);

-- Only a record whose stored JSON holds a references list or a vlist value can
-- make a reference: every other record is passed over on its text, without
-- being parsed (the stored JSON is the node's own compact encoding).
CREATE FUNCTION handle_may_refer(p_values json) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT strpos(p_values::text, '"references":') > 0
        OR strpos(p_values::text, '"format":"vlist"') > 0
$$;

-- The references of one record (its key and its stored "values" array). A value
-- naming one target twice gives two rows: readers take each edge once.
CREATE FUNCTION handle_refs_of(p_prefix text, p_suffix text, p_values json)
RETURNS TABLE (from_prefix_key text, from_suffix_key text, idx integer, type text,
               to_prefix_key text, to_suffix_key text, to_index integer)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_prefix, p_suffix, s.idx, s.type,
           left(s.target, s.slash - 1), substr(s.target, s.slash + 1), s.to_index
    FROM (
        SELECT t.idx, t.type, t.target, strpos(t.target, '/') AS slash, t.to_index
        FROM (
            SELECT (v->>'index')::integer AS idx, v->>'type' AS type,
                   translate(r->>'handle', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                             'abcdefghijklmnopqrstuvwxyz') AS target,
                   coalesce((r->>'index')::integer, 0) AS to_index
            FROM jsonb_array_elements(handle_values_jsonb(p_values)) AS v,
                 jsonb_array_elements(
                     CASE WHEN v->'data'->>'format' = 'vlist'
                           AND jsonb_typeof(v->'data'->'value') = 'array'
                          THEN v->'data'->'value' ELSE '[]'::jsonb END
                     || CASE WHEN jsonb_typeof(v->'references') = 'array'
                             THEN v->'references' ELSE '[]'::jsonb END) AS r
            WHERE coalesce(substr(v->>'permissions', 3, 1), '1') = '1'
              AND jsonb_typeof(r->'handle') = 'string'
            OFFSET 0  -- fold each target once
        ) AS t
        OFFSET 0
    ) AS s
    WHERE s.slash > 1
$$;

-- Statement-level triggers with transition tables, as for handle_terms: a COPY
-- of a million rows keeps the references with one set-based statement.
CREATE FUNCTION handles_refs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO handle_refs
    SELECT f.* FROM new_rows AS n, handle_refs_of(n.prefix_key, n.suffix_key, n."values") AS f
    WHERE handle_may_refer(n."values");
    RETURN NULL;
END
$$;

CREATE FUNCTION handles_refs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM handle_refs AS r USING old_rows AS o
    WHERE r.from_prefix_key = o.prefix_key AND r.from_suffix_key = o.suffix_key
      AND handle_may_refer(o."values");
    RETURN NULL;
END
$$;

-- An update rewrites the references of the rows that had or have some.
CREATE FUNCTION handles_refs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM handle_refs AS r USING old_rows AS o
    WHERE r.from_prefix_key = o.prefix_key AND r.from_suffix_key = o.suffix_key
      AND handle_may_refer(o."values");
    INSERT INTO handle_refs
    SELECT f.* FROM new_rows AS n, handle_refs_of(n.prefix_key, n.suffix_key, n."values") AS f
    WHERE handle_may_refer(n."values");
    RETURN NULL;
END
$$;

CREATE FUNCTION handles_refs_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE handle_refs;
    RETURN NULL;
END
$$;

-- No write may slip between the triggers' creation and the backfill.
LOCK TABLE handles IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER handles_refs_insert AFTER INSERT ON handles
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION handles_refs_inserted();
CREATE TRIGGER handles_refs_update AFTER UPDATE ON handles
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION handles_refs_updated();
CREATE TRIGGER handles_refs_delete AFTER DELETE ON handles
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION handles_refs_deleted();
CREATE TRIGGER handles_refs_truncate AFTER TRUNCATE ON handles
    FOR EACH STATEMENT EXECUTE FUNCTION handles_refs_truncated();

INSERT INTO handle_refs
SELECT f.* FROM handles AS h, handle_refs_of(h.prefix_key, h.suffix_key, h."values") AS f
WHERE handle_may_refer(h."values");

-- Who references a handle: the walk up reads the referencing records' keys here.
CREATE INDEX handle_refs_target ON handle_refs (to_prefix_key, to_suffix_key);
-- A record's references, to replace or delete them with the record.
CREATE INDEX handle_refs_record ON handle_refs (from_prefix_key, from_suffix_key);
