package queue

import "context"

// Store keeps queue definitions and jobs: Cassandra tables in distributed mode, Pebble in
// embedded mode; both pass the conformance suite in store_conformance_test.go. Every method is
// safe for concurrent use and bounded by ctx; errors wrap the state package's sentinels (a
// dependency failure wraps state.ErrUnavailable, whose outcome may be unknown for a write).
//
// The rows of one shard form one Cassandra partition. Every change to an existing job is one
// conditional write of that partition (a lightweight transaction), so changes to one job are
// linearizable from any site; inserts of new jobs are plain writes of rows no one else writes.
type Store interface {
	// CreateQueue stores d unless a queue of that name exists: then it returns the stored
	// definition and state.ErrExists.
	CreateQueue(ctx context.Context, d Def) (Def, error)
	// DropQueue removes the definition and every row of the queue. state.ErrNotFound if there is
	// no such queue.
	DropQueue(ctx context.Context, namespace, name string) error
	// Queue returns a definition. state.ErrNotFound if there is no such queue.
	Queue(ctx context.Context, namespace, name string) (Def, error)
	// Queues lists the queues of a namespace, by name; "" lists every queue.
	Queues(ctx context.Context, namespace string) ([]Def, error)

	// Insert adds j as a ready job. With dedup, it also records j.ID for d.DedupWindow, atomically
	// with the insert: if the id is recorded already it changes nothing and returns dup = true.
	Insert(ctx context.Context, d Def, j Job, dedup bool) (dup bool, err error)
	// Ready returns at most limit ready jobs of one shard and priority whose due time is within
	// [from, to], earliest first. It is a bounded read of the front of the partition.
	Ready(ctx context.Context, d Def, shard, priority int, from, to int64, limit int) ([]Job, error)
	// Rows returns at most limit rows of one kind (claimed, dead) of a shard, by id, after the id
	// after ("" to start).
	Rows(ctx context.Context, d Def, shard int, k kind, after string, limit int) ([]Job, error)
	// Get reads one row linearizably (a Paxos read in Cassandra): nil if there is none. It is how
	// a caller learns the outcome of a Move that failed with an unknown outcome.
	Get(ctx context.Context, d Def, shard int, s slot) (*Job, error)
	// Move replaces the row at from (a slot of shard) by the rows of to, if the row at from
	// exists and satisfies c; atomically. A nil element of to is skipped; a row of to at from's
	// slot updates the row's claim (Token and LeaseUntil) in place. When the condition fails it
	// returns ok = false and, when the row exists, its token (nil when there is none).
	Move(ctx context.Context, d Def, shard int, from slot, c cond, to ...*Job) (ok bool, cur *Job, err error)
}

// cond is the condition of a Move beyond the row's existence.
type cond struct {
	// token: the row's claim token must equal it ("": any).
	token string
}

// holds reports whether j satisfies c.
func (c cond) holds(j *Job) bool {
	return j != nil && (c.token == "" || j.Token == c.token)
}
