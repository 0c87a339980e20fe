-- 0018: the claim stays as fast with a long history of finished rows as with an empty table.
--
-- Each claimed or finished job leaves a dead entry in the claim index (partial on queued rows),
-- and a claim reads past them from the start of its job type until a vacuum removes them.
-- Autovacuum ran (0004: after 1 % of the table changed), but with a history of 1,000,000 rows
-- the pages holding dead rows are fewer than 2 % of the table, and VACUUM then skips the index
-- pass altogether ("index scan bypassed"): the dead entries stayed, and after some 7,000 jobs a
-- claim's index scan read 44 buffers instead of 2. On a small table the index pass runs, so only
-- a long history suffered.
--
-- vacuum_index_cleanup = on: every vacuum of the table removes the dead index entries. The
-- index pass reads each index of the table whole, the full ones (primary key, submitter)
-- included: about 10,000 pages (80 MB) with 1,000,000 rows, at most once per autovacuum
-- round (autovacuum_naptime, 1 min by default) while jobs are being run.
-- autovacuum_vacuum_scale_factor = 0, threshold 1000: vacuum after 1,000 dead rows (about 500
-- jobs) whatever the history, instead of after 10,000 with 1,000,000 rows.
-- fillfactor stays 80 (0004): a claim cannot be a HOT update (status is in the partial
-- indexes' predicates), but the free room keeps a job's new row versions on its own page.
ALTER TABLE background_jobs SET (vacuum_index_cleanup = on,
                                 autovacuum_vacuum_scale_factor = 0,
                                 autovacuum_vacuum_threshold = 1000);
