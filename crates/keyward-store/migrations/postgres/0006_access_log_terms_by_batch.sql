-- The access log's term index, split in two so that a flush appends instead of touching one
-- B-tree leaf per term. PostgreSQL flavour; must stay column-for-column identical to
-- migrations/sqlite/0006_access_log_terms_by_batch.sql.
--
-- verification_terms was keyed (workspace, term, batch): every flush inserted one row per
-- key it mentioned, each into a different leaf of an ever larger tree, so a flush of 1000
-- keys wrote ~1300 pages to the WAL (6x the batch and usage counts together) and SQLite's
-- commits and checkpoints held the core for milliseconds.

-- Exact: which batches mention an id or code. Keyed by batch first, so a flush's rows go
-- at the end of its workspace's range.
CREATE TABLE verification_batch_terms (
    workspace_id TEXT COLLATE "C" NOT NULL,
    batch_id     BIGINT  NOT NULL,
    term         TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (workspace_id, batch_id, term)
);
INSERT INTO verification_batch_terms (workspace_id, batch_id, term)
    SELECT workspace_id, batch_id, term FROM verification_terms;

-- Coarse: which segments of 64 consecutive batch ids mention a term at all, written once per
-- term and segment (a flush's insert of a row already present writes nothing), so a listing
-- finds a term's batches without scanning those of other terms.
CREATE TABLE verification_term_segments (
    workspace_id TEXT COLLATE "C" NOT NULL,
    term         TEXT COLLATE "C" NOT NULL,
    segment      BIGINT  NOT NULL,
    PRIMARY KEY (workspace_id, term, segment)
);
INSERT INTO verification_term_segments (workspace_id, term, segment)
    SELECT DISTINCT workspace_id, term, batch_id / 64 FROM verification_terms;
CREATE INDEX verification_term_segments_segment_idx ON verification_term_segments (segment);

DROP TABLE verification_terms;

-- A listing bounded in time turns its bounds into batch ids once, instead of reading every
-- segment of a busy term outside them.
CREATE INDEX verification_batches_last_time_idx ON verification_batches (workspace_id, last_time, id);
CREATE INDEX verification_batches_first_time_idx ON verification_batches (workspace_id, first_time, id);
