-- 0011 ingest_jobs: the rq ingest jobs whose batches have committed, and what each did. A job's id is
-- claimed in the transaction that commits its batch (its own, or that of a job that carried it while it
-- waited in the queue). A job that runs again (its worker died after the commit, a worker's
-- transaction carried it, another worker took it meanwhile) finds its id taken, waits for that
-- transaction while it is still open, and returns the stored counts instead of ingesting again: its
-- counts stay its own and its rejections are parked once. A job that parks its one event claims its id
-- the same way. Rows older than 90 days are pruned by the workers.
CREATE TABLE ingest_jobs (
    job_id       text PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now(),
    result       jsonb
);
CREATE INDEX ingest_jobs_committed_at ON ingest_jobs (committed_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON ingest_jobs TO usagebill_worker;
