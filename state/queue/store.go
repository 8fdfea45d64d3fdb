package queue

import "context"

// Store keeps queue definitions and jobs: Cassandra tables in distributed mode, Pebble in
// embedded mode; both pass the conformance suite in store_conformance_test.go. Every method is
// safe for concurrent use and bounded by ctx; errors wrap the state package's sentinels (a
// dependency failure wraps state.ErrUnavailable, whose outcome may be unknown for a write).
//
// The rows of one shard form one Cassandra partition. Every change to an existing job is one
// conditional write of that partition (a lightweight transaction), so changes to one job are
// linearizable from any site; inserts of jobs with generated ids are plain writes of rows no one
// else writes. Each live job has an index row under its id, written with the job in the same
// atomic write (see kindIndex), so that a job is found by id.
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

	// Insert adds j as a ready job, with its index row, atomically. mode says what an id that is
	// in use does: insertNew (a generated id) does not look; insertDedup also records j.ID for
	// d.DedupWindow, and changes nothing, returning dup = true, if the id is recorded or a job
	// with it lives (ready, claimed or dead); insertUnique changes nothing (dup = true) if a job
	// with the id lives, and records nothing. The last two are one conditional write.
	Insert(ctx context.Context, d Def, j Job, mode insertMode) (dup bool, err error)
	// Ready returns at most limit ready jobs that are not claimed, of one shard and priority,
	// whose due time is within [from, to], earliest first. It reads the front of the partition
	// from from, past the claimed jobs there (as many as are held at once).
	Ready(ctx context.Context, d Def, shard, priority int, from, to int64, limit int) ([]Job, error)
	// Rows returns at most limit rows of one kind (dead, index) of a shard, by id, after the id
	// after ("" to start).
	Rows(ctx context.Context, d Def, shard int, k kind, after string, limit int) ([]Job, error)
	// Leases returns at most limit claims of a shard whose lease ended before before, earliest
	// first: each with the slot of the job's row, its ID, Token and LeaseUntil (not the job's
	// other fields). It is a bounded read of the shard's lease rows (see kindLease).
	Leases(ctx context.Context, d Def, shard int, before int64, limit int) ([]Job, error)
	// Scan returns at most limit jobs of a shard, in the partition's order: ready and claimed
	// jobs (by priority, highest first, then due time), then dead letters (by id). It is one
	// bounded read.
	Scan(ctx context.Context, d Def, shard, limit int) ([]Job, error)
	// Get reads one row linearizably (a Paxos read in Cassandra): nil if there is none. It is how
	// a caller learns the outcome of a Move that failed with an unknown outcome.
	Get(ctx context.Context, d Def, shard int, s slot) (*Job, error)
	// Move replaces the row at from (a job's slot in shard) by the rows of to, if the row at from
	// exists and satisfies c; atomically. A nil element of to is skipped; a row of to at from's
	// slot updates the row in place: its claim (Token and LeaseUntil), and, when its Payload is
	// not nil, its Payload and Priority. In the same atomic write, Move keeps the job's index
	// row exact: it points at the row of to that is the job (ready or dead, with from's id), or
	// is removed when there is none (completed, deleted); and its lease rows: the one of the
	// claim c.token names goes, and a row of to with a token gets one. When the condition fails
	// it returns ok = false and, when the row exists, its token (nil when there is none).
	Move(ctx context.Context, d Def, shard int, from slot, c cond, to ...*Job) (ok bool, cur *Job, err error)
	// ClaimAll claims several ready jobs of one shard in place, in one atomic write, if none of
	// their rows (from[i]) is claimed: each row gets claims[i]'s Token, LeaseUntil, Holder and
	// Attempts, and a lease row. Else it changes nothing, returns ok = false, and reports in
	// exist which of the rows still exist unclaimed.
	ClaimAll(ctx context.Context, d Def, shard int, from []slot, claims []*Job) (ok bool, exist []bool, err error)
}

// insertMode is how Insert treats an id in use.
type insertMode int

const (
	// insertNew: the id is new (generated); the job is written without a condition.
	insertNew insertMode = iota
	// insertDedup: the id is remembered for the queue's dedup window; while it is, or while a job
	// with the id lives, an insert changes nothing.
	insertDedup
	// insertUnique: while a job with the id lives, an insert changes nothing; nothing is
	// remembered after the job is gone.
	insertUnique
)

// locate reads the index row of job id linearizably: the slot of the job's row, or nil if no job
// with that id lives.
func locate(ctx context.Context, st Store, d Def, shard int, id string) (*slot, error) {
	ix, err := st.Get(ctx, d, shard, slot{Kind: kindIndex, ID: id})
	if err != nil || ix == nil {
		return nil, err
	}
	s, err := decodeSlot(id, ix.Payload)
	if err != nil {
		return nil, err
	}
	return &s, nil
}

// indexAfterMove is the index row a Move from from to to leaves: nil to keep the row as it is
// (the job stays in place), or the new row; del reports that the job is gone.
func indexAfterMove(from slot, to []*Job) (ix *Job, del bool) {
	for _, j := range to {
		if j != nil && j.slot.ID == from.ID && j.slot.Kind.isJob() {
			if j.slot == from {
				return nil, false
			}
			return indexRow(j.slot), false
		}
	}
	return nil, true
}

// cond is the condition of a Move beyond the row's existence.
type cond struct {
	// token: the row's claim token must equal it; "": the row must not be claimed.
	token string
	// leaseUntil (with token): the end of the claim's lease, which names its lease row.
	leaseUntil int64
}

// holds reports whether j satisfies c.
func (c cond) holds(j *Job) bool {
	return j != nil && j.Token == c.token
}

// leasesAfterMove is what a Move from from under c does to lease rows: the lease row of the
// claim c names goes (del; nil when c names none, or when to writes the same row again), and
// each job of to that is claimed gets one (add).
func leasesAfterMove(from slot, c cond, to []*Job) (del *slot, add []*Job) {
	for _, j := range to {
		if j != nil && j.claimed() && j.slot.Kind.isJob() {
			add = append(add, leaseRow(j))
		}
	}
	if c.token == "" {
		return nil, add
	}
	s := slot{Kind: kindLease, Due: c.leaseUntil, ID: from.ID}
	for _, l := range add {
		if l.slot == s {
			return nil, add
		}
	}
	return &s, add
}

// claimsOfLeases turns lease rows into the claims they name (see Store.Leases).
func claimsOfLeases(rows []Job) ([]Job, error) {
	out := make([]Job, 0, len(rows))
	for _, l := range rows {
		at, err := decodeSlot(l.ID, l.Payload)
		if err != nil {
			return nil, err
		}
		out = append(out, Job{Shard: l.Shard, slot: at, ID: l.ID, Token: l.Token, LeaseUntil: l.LeaseUntil})
	}
	return out, nil
}
