-- The tamper-evident audit log (filing): every change appends one entry in the
-- transaction that makes it, a Merkle tree of RFC 9162 is kept over the entries,
-- and signed checkpoints commit the node to the tree's root at a size.
--
-- Sequence numbers are gap-free and in commit order: a writer takes the next ones
-- from the single row of `audit_head`, whose row lock it holds until it commits
-- (a rolled-back writer gives its numbers back). Writers that NOTIFY, as every
-- write of this node does, already commit one at a time, so the lock costs little.
--
-- The log, the tree and the checkpoints are append-only in the database itself:
-- triggers refuse UPDATE, DELETE and TRUNCATE. See the README's production section
-- for running the node with a role that cannot drop those triggers.

ALTER TABLE audit_log RENAME TO audit_log_v1;
ALTER INDEX audit_log_pkey RENAME TO audit_log_v1_pkey;
ALTER INDEX audit_log_handle RENAME TO audit_log_v1_handle;

CREATE TABLE audit_log (
    seq         bigint      PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text        NOT NULL,
    client      text,                 -- the client's address; NULL: not known (CLI, migrated)
    operation   text        NOT NULL,
    handle      text        NOT NULL,
    handle_key  text        NOT NULL, -- ASCII-lower-cased, as handles are matched
    indexes     integer[],
    before      bytea,                -- SHA-256 of the canonical content before; NULL: none
    after       bytea,                -- SHA-256 of the canonical content after; NULL: deleted
    content     text                  -- the canonical content after the change (history)
);
CREATE INDEX audit_log_handle ON audit_log (handle_key, seq);
-- `at` grows with `seq` (taken under the head's lock), so a BRIN index finds a period cheaply
CREATE INDEX audit_log_at ON audit_log USING brin (at);

-- Earlier entries keep their order; they had no digests, client or content.
INSERT INTO audit_log (seq, at, actor, operation, handle, handle_key, indexes)
SELECT row_number() OVER (ORDER BY seq) - 1, at, actor, operation, handle, lower(handle), indexes
FROM audit_log_v1;
DROP TABLE audit_log_v1;

CREATE TABLE audit_head (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    size  bigint  NOT NULL
);
INSERT INTO audit_head (size) SELECT count(*) FROM audit_log;

-- Complete subtrees of the Merkle tree: the hash of leaves [idx * 2^level, (idx + 1) * 2^level).
-- Level 0 holds the leaf hashes. Filled behind the writers, in order, by the node's integrator.
CREATE TABLE audit_tree (
    level  smallint NOT NULL,
    idx    bigint   NOT NULL,
    hash   bytea    NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE audit_checkpoints (
    size       bigint      PRIMARY KEY,
    root       bytea       NOT NULL,
    at         timestamptz NOT NULL,
    body       text        NOT NULL,  -- the signed text: origin, size, root, time
    key_id     text        NOT NULL,
    signature  bytea       NOT NULL
);

-- The leaf data of an entry (RFC 9162: its leaf hash is SHA-256(0x00 || data)). Every
-- field in a fixed order: integers big-endian, text as UTF-8 with a 4-byte length,
-- absent (NULL) fields as the length -1. registry/verify.py builds the same bytes.
-- Declared STABLE, not IMMUTABLE (convert_to and extract from a timestamptz are STABLE), and
-- without sub-SELECTs, so PostgreSQL inlines them into the integrator's query: five times
-- faster than the first version, same bytes.
CREATE FUNCTION audit_text(t text) RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN t IS NULL THEN int4send(-1)
           ELSE int4send(octet_length(convert_to(t, 'UTF8'))) || convert_to(t, 'UTF8') END
$$;
CREATE FUNCTION audit_bytes(b bytea) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN b IS NULL THEN int4send(-1) ELSE int4send(length(b)) || b END
$$;
CREATE FUNCTION audit_ints(a integer[]) RETURNS bytea LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    packed bytea;
    i integer;
BEGIN
    IF a IS NULL THEN
        RETURN int4send(-1);
    END IF;
    packed := int4send(coalesce(cardinality(a), 0));
    FOREACH i IN ARRAY a LOOP
        packed := packed || int4send(i);
    END LOOP;
    RETURN packed;
END
$$;
CREATE FUNCTION audit_leaf(seq bigint, at timestamptz, actor text, client text, operation text,
                           handle text, indexes integer[], before bytea, after bytea)
RETURNS bytea LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT '\x01'::bytea                                          -- leaf format version
        || int8send(seq)
        || int8send((extract(epoch FROM at) * 1000000)::bigint)   -- microseconds since 1970
        || audit_text(actor) || audit_text(client) || audit_text(operation) || audit_text(handle)
        || audit_ints(indexes)
        || audit_bytes(before) || audit_bytes(after)
$$;

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_tree_append_only BEFORE UPDATE OR DELETE ON audit_tree
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_tree_no_truncate BEFORE TRUNCATE ON audit_tree
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
