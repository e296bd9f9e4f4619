-- Data templates: per prefix, versioned JSON Schemas that records under the prefix must satisfy.
--
-- Every change appends a version (1, 2, ...); nothing is updated in place, so
-- `GET /api/templates/<prefix>?version=K` can show any earlier one. A NULL `schema`
-- is a version that removed the template. `schema` is `json`, not `jsonb`: it keeps
-- the author's key order (the order of `properties` is the order of the fields a
-- reader sees). `prefix_key` is the prefix with ASCII letters folded, as in `prefixes`.
-- Writes read the newest version of their prefix by the primary key (a backward scan).
CREATE TABLE templates (
    prefix_key  text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    prefix      text        NOT NULL,
    schema      json,
    created_at  timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    PRIMARY KEY (prefix_key, version)
);
