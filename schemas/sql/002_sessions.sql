-- Sessions of the Handle challenge-response (`/api/sessions`), shared by every
-- serving process. A session starts anonymous with a nonce; once an answer to
-- that nonce proves an identity, `identity` holds it. Times are epoch seconds
-- from the node's clock; idle sessions are swept by the node.
CREATE TABLE sessions (
    id          text PRIMARY KEY,
    nonce       bytea NOT NULL,
    identity    text,
    proof       bytea,
    created_at  double precision NOT NULL,
    used_at     double precision NOT NULL
);

CREATE INDEX sessions_used_at ON sessions (used_at);
