-- Progress of `idnode import` runs, so an interrupted import resumes after its last
-- committed chunk. Each chunk updates its job row in the chunk's own transaction: the
-- row never claims more than is written, and nothing is written twice.
CREATE TABLE imports (
    job          text        PRIMARY KEY,  -- SHA-256 of the file's size, head and tail
    path         text        NOT NULL,
    byte_offset  bigint      NOT NULL DEFAULT 0,  -- where the next unread row starts
    line         bigint      NOT NULL DEFAULT 0,  -- the last line read
    errors_size  bigint      NOT NULL DEFAULT 0,  -- length of the error report at that point
    applied      bigint      NOT NULL DEFAULT 0,
    failed       bigint      NOT NULL DEFAULT 0,
    done         boolean     NOT NULL DEFAULT false,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
