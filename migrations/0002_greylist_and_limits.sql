-- Greylisting state and rate-limit state. Times are Unix seconds (REAL).

-- One row per (client_net, sender, recipient). passed_at is NULL while the
-- triplet waits for its retry. version grows on every write, so a writer
-- can tell whether the row changed since it read it.
CREATE TABLE triplets (
    client_net TEXT    NOT NULL,
    sender     TEXT    NOT NULL,
    recipient  TEXT    NOT NULL,
    first_seen REAL    NOT NULL,
    last_seen  REAL    NOT NULL,
    passed_at  REAL,
    version    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (client_net, sender, recipient)
);
CREATE INDEX triplets_waiting ON triplets (first_seen) WHERE passed_at IS NULL;
CREATE INDEX triplets_passed ON triplets (last_seen) WHERE passed_at IS NOT NULL;

-- Clients whose mail passed greylisting: passes counts at most once per
-- counting period; a client with enough passes is auto-allowed.
CREATE TABLE clients (
    client_net   TEXT    NOT NULL UNIQUE,
    passes       INTEGER NOT NULL,
    last_counted REAL    NOT NULL,
    last_seen    REAL    NOT NULL
);
CREATE INDEX clients_last_seen ON clients (last_seen);

-- GCRA state of each limit rule and key: the theoretical arrival time and
-- the last transaction admitted.
CREATE TABLE limits (
    rule        TEXT NOT NULL,
    key         TEXT NOT NULL,
    tat         REAL NOT NULL,
    transaction_id TEXT NOT NULL,
    UNIQUE (rule, key)
);
CREATE INDEX limits_tat ON limits (tat);
