// Package queue is musicQ: a geo-distributed work queue in which each job is performed by exactly
// one worker.
//
// A queue's jobs are spread over shards (one Cassandra partition each). Finding the next job is
// one bounded read of the front of a shard; claiming it is one lightweight transaction that
// sets a token on the job's row in place (if it has none) and writes a lease row keyed by the
// lease's end, so exactly one claimant wins from any site. A daemon's claims of the moment share
// their lightweight transactions (group commit, Config.MaxClaims). Complete, release and extend are conditional on that
// token and on the lease not having run out; an elected reaper returns jobs whose lease ran out
// (or dead-letters them after the queue's MaxAttempts). Claims that find nothing wait for a
// notice (NATS in the daemon) that a job is due, polling as a fallback.
//
// # Jobs by id
//
// Every live job (ready, claimed or dead) has an index row under its id in its shard's
// partition, pointing at the job's row. The store writes it in the same atomic write as every
// insert and move of the job (enqueue, release, reap, complete, retry, dead-letter, update,
// delete; a claim does not move the job), so it is always exact. Job
// reads a job by id (the index row, then the row, both linearizably); UpdateJob changes a ready
// or dead job's payload and priority (a ready job moves to its new level, keeping its due time);
// DeleteJob removes a ready or dead job. Both are one conditional write on the job's row, as a
// claim is, so a claim and a change never both succeed: a claimed job is refused (ErrClaimed)
// until its claim ends. Jobs lists every job of a small queue (at most MaxScan, one bounded read
// per shard). An enqueue with an id is refused (a duplicate) while a job with that id lives,
// beyond the dedup window; NewJob.Unique drops the dedup window, so that the id is free again
// once its job is gone.
//
// Store is implemented on Cassandra (distributed mode) and Pebble (embedded mode); both pass one
// conformance suite. See docs/queue.md.
package queue
