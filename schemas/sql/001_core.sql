-- Core tables of the identifier node.
--
-- handles: one row per identifier holding its whole record, so one index
-- lookup answers a resolution. Keys are ASCII-lower-cased (Handle matching is
-- case-insensitive); `handle` keeps the spelling it was created with.
-- `values` is `json`, not `jsonb`: it keeps the exact text the node wrote (the
-- served form of the values), so a record whose values are all public is
-- answered with those bytes as they are; `all_public` and `public_ttl` (the
-- smallest TTL of the public values) are computed when the record is written. The
-- primary key starts with prefix_key so the table can later be
-- hash-partitioned by prefix (PARTITION BY HASH (prefix_key)) or distributed
-- with Citus on that column without changing any query.
CREATE TABLE handles (
    prefix_key  text        NOT NULL,
    suffix_key  text        NOT NULL,
    handle      text        NOT NULL,
    "values"    json        NOT NULL,
    all_public  boolean     NOT NULL,
    public_ttl  integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (prefix_key, suffix_key)
);

-- Prefixes homed on this node. Their records live in `handles` as 0.NA/<prefix>.
CREATE TABLE prefixes (
    prefix_key  text        PRIMARY KEY,
    prefix      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Every change, appended in the transaction that makes it.
CREATE TABLE audit_log (
    seq         bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    operation   text        NOT NULL,
    handle      text        NOT NULL,
    indexes     integer[]
);
CREATE INDEX audit_log_handle ON audit_log (lower(handle), seq);
