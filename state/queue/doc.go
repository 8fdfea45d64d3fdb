// Package queue is musicQ: a geo-distributed work queue in which each job is performed by exactly
// one worker.
//
// A queue's jobs are spread over shards (one Cassandra partition each). Finding the next job is
// one bounded read of the front of a shard; claiming it is one lightweight transaction that
// moves the job from the shard's ready rows to its claimed rows with a new random token, so
// exactly one claimant wins from any site. Complete, release and extend are conditional on that
// token and on the lease not having run out; an elected reaper returns jobs whose lease ran out
// (or dead-letters them after the queue's MaxAttempts). Claims that find nothing wait for a
// notice (NATS in the daemon) that a job is due, polling as a fallback.
//
// Store is implemented on Cassandra (distributed mode) and Pebble (embedded mode); both pass one
// conformance suite. See docs/queue.md.
package queue
