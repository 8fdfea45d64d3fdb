package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/state"
)

// CassandraConfig configures the Cassandra store.
type CassandraConfig struct {
	// Keyspace is musicd's own keyspace, where the tables queue_defs and queue_jobs live.
	Keyspace string
	// Write is the consistency of writes and of the commit of lightweight transactions: a job
	// acknowledged at it survives the loss of a site when it spans sites (QUORUM, EACH_QUORUM).
	// Default QUORUM.
	Write gocql.Consistency
	// Read is the consistency of the reads that find candidate jobs; a claim's lightweight
	// transaction decides, so a stale read costs a retry, never a double claim. Default
	// LOCAL_QUORUM.
	Read gocql.Consistency
	// Serial is the Paxos consistency of claims and every other change of an existing job:
	// SERIAL makes a claim exclusive across sites; LOCAL_SERIAL only within one. Default SERIAL.
	Serial gocql.Consistency
	// Timeout bounds each statement. Default 10s.
	Timeout time.Duration
}

func (c CassandraConfig) withDefaults() CassandraConfig {
	if c.Write == 0 {
		c.Write = gocql.Quorum
	}
	if c.Read == 0 {
		c.Read = gocql.LocalQuorum
	}
	if c.Serial == 0 {
		c.Serial = gocql.Serial
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	return c
}

// CassandraStore keeps queues in two tables of musicd's keyspace:
//
//	queue_defs (namespace, name, definition)              one row per queue, created by LWT
//	queue_jobs ((queue, shard), kind, sprio, sdue, id)    one partition per shard
//
// A shard's partition holds its ready and claimed jobs first (kind 0, by priority descending
// then due time; a claim sets the row's token in place), then dead letters, dedup ids, completed
// ids and index rows (kinds 2-5, by id; an index row's payload is the slot of its job's row),
// then lease rows (kind 6, by lease end).
// queue is namespace.name/<creation time>, so a queue dropped and created again never sees the
// old one's rows.
type CassandraStore struct {
	s   *gocql.Session
	cfg CassandraConfig
	ks  string
}

var _ Store = (*CassandraStore)(nil)

// NewCassandraStore creates the tables if needed.
func NewCassandraStore(ctx context.Context, s *gocql.Session, cfg CassandraConfig) (*CassandraStore, error) {
	cfg = cfg.withDefaults()
	if cfg.Keyspace == "" {
		return nil, errors.New("queue: cassandra store: Keyspace is required")
	}
	st := &CassandraStore{s: s, cfg: cfg, ks: `"` + cfg.Keyspace + `"`}
	for _, stmt := range []string{
		`CREATE TABLE IF NOT EXISTS ` + st.ks + `.queue_defs (namespace text, name text, definition text, PRIMARY KEY (namespace, name))`,
		`CREATE TABLE IF NOT EXISTS ` + st.ks + `.queue_jobs (queue text, shard int, kind int, sprio int, sdue bigint, id text,
			payload blob, priority int, attempts int, enqueued bigint, due bigint, holder text, claim_token text,
			lease_until bigint, error text, died bigint,
			PRIMARY KEY ((queue, shard), kind, sprio, sdue, id))
			WITH CLUSTERING ORDER BY (kind ASC, sprio DESC, sdue ASC, id ASC)`,
	} {
		if err := journal.ExecDDL(ctx, s, stmt); err != nil {
			return nil, state.CassandraError(ctx, err, "create the queue tables in keyspace "+cfg.Keyspace)
		}
	}
	return st, nil
}

func (st *CassandraStore) query(ctx context.Context, cl gocql.Consistency, stmt string, args ...any) (*gocql.Query, context.CancelFunc) {
	qctx, cancel := context.WithTimeout(ctx, st.cfg.Timeout)
	return st.s.Query(stmt, args...).WithContext(qctx).Consistency(cl).SerialConsistency(st.cfg.Serial), cancel
}

func storageKey(d Def) string { return d.Key() + "/" + strconv.FormatInt(d.Created, 36) }

// CreateQueue implements Store.
func (st *CassandraStore) CreateQueue(ctx context.Context, d Def) (Def, error) {
	raw, err := json.Marshal(d)
	if err != nil {
		return Def{}, err
	}
	q, cancel := st.query(ctx, st.cfg.Write, `INSERT INTO `+st.ks+`.queue_defs (namespace, name, definition) VALUES (?, ?, ?) IF NOT EXISTS`,
		d.Namespace, d.Name, string(raw))
	defer cancel()
	prev := map[string]any{}
	applied, err := q.MapScanCAS(prev)
	if err != nil {
		return Def{}, state.CassandraError(ctx, err, "create queue "+d.Key())
	}
	if applied {
		return d, nil
	}
	def, _ := prev["definition"].(string)
	var cur Def
	if err := json.Unmarshal([]byte(def), &cur); err != nil {
		return Def{}, fmt.Errorf("queue %s: stored definition: %w", d.Key(), err)
	}
	return cur, fmt.Errorf("%w: queue %s", state.ErrExists, d.Key())
}

// DropQueue implements Store.
func (st *CassandraStore) DropQueue(ctx context.Context, namespace, name string) error {
	d, err := st.Queue(ctx, namespace, name)
	if err != nil {
		return err
	}
	q, cancel := st.query(ctx, st.cfg.Write, `DELETE FROM `+st.ks+`.queue_defs WHERE namespace = ? AND name = ? IF EXISTS`, namespace, name)
	applied, err := q.MapScanCAS(map[string]any{})
	cancel()
	if err != nil {
		return state.CassandraError(ctx, err, "drop queue "+d.Key())
	}
	if !applied {
		return fmt.Errorf("%w: queue %s", state.ErrNotFound, d.Key())
	}
	key := storageKey(d)
	for shard := range d.Shards {
		q, cancel := st.query(ctx, st.cfg.Write, `DELETE FROM `+st.ks+`.queue_jobs WHERE queue = ? AND shard = ?`, key, shard)
		err := q.Exec()
		cancel()
		if err != nil {
			return state.CassandraError(ctx, err, fmt.Sprintf("drop queue %s: shard %d", d.Key(), shard))
		}
	}
	return nil
}

// Queue implements Store.
func (st *CassandraStore) Queue(ctx context.Context, namespace, name string) (Def, error) {
	q, cancel := st.query(ctx, st.cfg.Write, `SELECT definition FROM `+st.ks+`.queue_defs WHERE namespace = ? AND name = ?`, namespace, name)
	defer cancel()
	var raw string
	if err := q.Scan(&raw); err != nil {
		if errors.Is(err, gocql.ErrNotFound) {
			return Def{}, fmt.Errorf("%w: queue %s.%s", state.ErrNotFound, namespace, name)
		}
		return Def{}, state.CassandraError(ctx, err, "read queue "+namespace+"."+name)
	}
	var d Def
	if err := json.Unmarshal([]byte(raw), &d); err != nil {
		return Def{}, fmt.Errorf("queue %s.%s: stored definition: %w", namespace, name, err)
	}
	return d, nil
}

// Queues implements Store; namespace "" lists every queue.
func (st *CassandraStore) Queues(ctx context.Context, namespace string) ([]Def, error) {
	stmt, args := `SELECT definition FROM `+st.ks+`.queue_defs WHERE namespace = ?`, []any{namespace}
	if namespace == "" {
		stmt, args = `SELECT definition FROM `+st.ks+`.queue_defs`, nil
	}
	q, cancel := st.query(ctx, st.cfg.Write, stmt, args...)
	defer cancel()
	it := q.Iter()
	var out []Def
	var raw string
	for it.Scan(&raw) {
		var d Def
		if err := json.Unmarshal([]byte(raw), &d); err != nil {
			_ = it.Close()
			return nil, fmt.Errorf("queues of %s: stored definition: %w", namespace, err)
		}
		out = append(out, d)
	}
	if err := it.Close(); err != nil {
		return nil, state.CassandraError(ctx, err, "list queues of "+namespace)
	}
	return out, nil
}

const cassJobCols = `kind, sprio, sdue, id, payload, priority, attempts, enqueued, due, holder, claim_token, lease_until, error, died`

// insertStmt returns the statement and values that write j (at its slot) into the shard. Columns
// whose value is empty or zero are left out (they read back as such), except a job row's token:
// fewer cells make the
// conditional batches of claims cheaper for Cassandra. Every slot a row is inserted at was
// empty (rows move between slots), so no earlier value shows through.
func (st *CassandraStore) insertStmt(d Def, shard int, j *Job, ifNotExists bool) (string, []any) {
	cols := `queue, shard, kind, sprio, sdue, id`
	args := []any{storageKey(d), shard, int(j.slot.Kind), j.slot.Priority, j.slot.Due, j.slot.ID}
	add := func(col string, v any, zero bool) {
		if !zero {
			cols += `, ` + col
			args = append(args, v)
		}
	}
	add(`payload`, j.Payload, j.Payload == nil)
	add(`priority`, j.Priority, j.Priority == 0)
	add(`attempts`, j.Attempts, j.Attempts == 0)
	add(`enqueued`, j.Enqueued, j.Enqueued == 0)
	add(`due`, j.Due, j.Due == 0)
	add(`holder`, j.Holder, j.Holder == "")
	// A job row's token is written even when empty: an in-place change of a ready or dead row
	// is conditioned on it being empty (see Move).
	add(`claim_token`, j.Token, j.Token == "" && !j.slot.Kind.isJob())
	add(`lease_until`, j.LeaseUntil, j.LeaseUntil == 0)
	add(`error`, j.Error, j.Error == "")
	add(`died`, j.Died, j.Died == 0)
	stmt := `INSERT INTO ` + st.ks + `.queue_jobs (` + cols + `) VALUES (?` + strings.Repeat(`, ?`, len(args)-1) + `)`
	if ifNotExists {
		stmt += ` IF NOT EXISTS`
	}
	if j.slot.Kind.expires() {
		stmt += ` USING TTL ` + strconv.Itoa(ttlSeconds(time.Duration(d.DedupWindow)))
	}
	return stmt, args
}

// ttlSeconds is the Cassandra TTL that keeps a row for at least w. Cassandra counts a TTL from
// the current whole second, so a row written with TTL n lives between n-1 and n seconds: one
// second more, and w rounded up, make the window a lower bound.
func ttlSeconds(w time.Duration) int {
	return int((w+time.Second-1)/time.Second) + 1
}

// Insert implements Store.
func (st *CassandraStore) Insert(ctx context.Context, d Def, j Job, mode insertMode) (bool, error) {
	j.slot = slot{Kind: kindReady, Priority: j.Priority, Due: j.Due, ID: j.ID}
	stmt, args := st.insertStmt(d, j.Shard, &j, false)
	istmt, iargs := st.insertStmt(d, j.Shard, indexRow(j.slot), mode != insertNew)
	bctx, cancel := context.WithTimeout(ctx, st.cfg.Timeout)
	defer cancel()
	b := st.s.Batch(gocql.UnloggedBatch).WithContext(bctx).Consistency(st.cfg.Write).SerialConsistency(st.cfg.Serial)
	if mode == insertNew {
		// One partition: the unlogged batch is applied atomically.
		b.Query(stmt, args...)
		b.Query(istmt, iargs...)
		if err := b.Exec(); err != nil {
			return false, state.CassandraError(ctx, err, "enqueue into "+d.Key())
		}
		return false, nil
	}
	if mode == insertDedup {
		marker := Job{slot: slot{Kind: kindDedup, ID: j.ID}, Enqueued: j.Enqueued}
		mstmt, margs := st.insertStmt(d, j.Shard, &marker, true)
		b.Query(mstmt, margs...)
	}
	b.Query(istmt, iargs...)
	b.Query(stmt, args...)
	applied, iter, err := b.MapExecCAS(map[string]any{})
	if iter != nil {
		_ = iter.Close()
	}
	if err != nil {
		return false, state.CassandraError(ctx, err, "enqueue "+j.ID+" into "+d.Key())
	}
	return !applied, nil
}

// scanJobs reads the rows of it that keep accepts (nil: all), at most max of them (max < 0: no
// bound).
func scanJobs(it *gocql.Iter, shard, max int, keep func(*Job) bool) []Job {
	var out []Job
	for len(out) != max {
		var j Job
		var k int
		if !it.Scan(&k, &j.slot.Priority, &j.slot.Due, &j.slot.ID, &j.Payload, &j.Priority, &j.Attempts, &j.Enqueued,
			&j.Due, &j.Holder, &j.Token, &j.LeaseUntil, &j.Error, &j.Died) {
			return out
		}
		j.slot.Kind, j.Shard, j.ID = kind(k), shard, j.slot.ID
		if keep == nil || keep(&j) {
			out = append(out, j)
		}
	}
	return out
}

func (st *CassandraStore) selectJobs(ctx context.Context, cl gocql.Consistency, what string, shard int, stmt string, args ...any) ([]Job, error) {
	q, cancel := st.query(ctx, cl, `SELECT `+cassJobCols+` FROM `+st.ks+`.queue_jobs WHERE queue = ? AND shard = ? AND `+stmt, args...)
	defer cancel()
	it := q.Iter()
	out := scanJobs(it, shard, -1, nil)
	if err := it.Close(); err != nil {
		return nil, state.CassandraError(ctx, err, what)
	}
	return out, nil
}

// Ready implements Store: it pages through the claimed rows in the range (their number is
// bounded by the jobs held at once), in pages of twice limit, so that the claimed rows within
// the floor margin rarely need a second page.
func (st *CassandraStore) Ready(ctx context.Context, d Def, shard, priority int, from, to int64, limit int) ([]Job, error) {
	q, cancel := st.query(ctx, st.cfg.Read, `SELECT `+cassJobCols+` FROM `+st.ks+`.queue_jobs WHERE queue = ? AND shard = ? AND kind = 0 AND sprio = ? AND sdue >= ? AND sdue <= ?`,
		storageKey(d), shard, priority, from, to)
	defer cancel()
	it := q.PageSize(2 * limit).Iter()
	out := scanJobs(it, shard, limit, func(j *Job) bool { return !j.claimed() })
	if err := it.Close(); err != nil {
		return nil, state.CassandraError(ctx, err, "read ready jobs of "+d.Key())
	}
	return out, nil
}

// Rows implements Store.
func (st *CassandraStore) Rows(ctx context.Context, d Def, shard int, k kind, after string, limit int) ([]Job, error) {
	return st.selectJobs(ctx, st.cfg.Read, "read jobs of "+d.Key(), shard,
		`kind = ? AND sprio = 0 AND sdue = 0 AND id > ? LIMIT ?`, storageKey(d), shard, int(k), after, limit)
}

// Leases implements Store.
func (st *CassandraStore) Leases(ctx context.Context, d Def, shard int, before int64, limit int) ([]Job, error) {
	rows, err := st.selectJobs(ctx, st.cfg.Read, "read the leases of "+d.Key(), shard,
		`kind = ? AND sprio = 0 AND sdue < ? LIMIT ?`, storageKey(d), shard, int(kindLease), before, limit)
	if err != nil {
		return nil, err
	}
	return claimsOfLeases(rows)
}

// Scan implements Store.
func (st *CassandraStore) Scan(ctx context.Context, d Def, shard, limit int) ([]Job, error) {
	return st.selectJobs(ctx, st.cfg.Read, "read jobs of "+d.Key(), shard, `kind <= ? LIMIT ?`, storageKey(d), shard, int(kindDead), limit)
}

// Get implements Store.
func (st *CassandraStore) Get(ctx context.Context, d Def, shard int, s slot) (*Job, error) {
	js, err := st.selectJobs(ctx, st.cfg.Serial, "read job "+s.ID+" of "+d.Key(), shard,
		`kind = ? AND sprio = ? AND sdue = ? AND id = ?`, storageKey(d), shard, int(s.Kind), s.Priority, s.Due, s.ID)
	if err != nil || len(js) == 0 {
		return nil, err
	}
	return &js[0], nil
}

// ClaimAll implements Store: one conditional batch of the shard's partition.
func (st *CassandraStore) ClaimAll(ctx context.Context, d Def, shard int, from []slot, claims []*Job) (bool, []bool, error) {
	if len(from) != len(claims) || len(from) == 0 {
		return false, nil, fmt.Errorf("queue: ClaimAll of %d ready rows to %d claims", len(from), len(claims))
	}
	key := storageKey(d)
	bctx, cancel := context.WithTimeout(ctx, st.cfg.Timeout)
	defer cancel()
	b := st.s.Batch(gocql.UnloggedBatch).WithContext(bctx).Consistency(st.cfg.Write).SerialConsistency(st.cfg.Serial)
	for i, f := range from {
		c := claims[i]
		b.Query(`UPDATE `+st.ks+`.queue_jobs SET claim_token = ?, lease_until = ?, holder = ?, attempts = ? WHERE queue = ? AND shard = ? AND kind = ? AND sprio = ? AND sdue = ? AND id = ? IF claim_token = ?`,
			c.Token, c.LeaseUntil, c.Holder, c.Attempts, key, shard, int(f.Kind), f.Priority, f.Due, f.ID, "")
		stmt, args := st.insertStmt(d, shard, leaseRow(&Job{slot: f, ID: f.ID, Token: c.Token, LeaseUntil: c.LeaseUntil}), false)
		b.Query(stmt, args...)
	}
	row := map[string]any{}
	applied, iter, err := b.MapExecCAS(row)
	if err != nil {
		if iter != nil {
			_ = iter.Close()
		}
		return false, nil, state.CassandraError(ctx, err, "claim jobs of "+d.Key())
	}
	if applied {
		if iter != nil {
			_ = iter.Close()
		}
		return true, nil, nil
	}
	// Not applied: Cassandra returns the conditioned rows that exist, each with its primary key
	// and token.
	exist := make([]bool, len(from))
	for iter != nil {
		if id, ok := row["id"].(string); ok {
			tok, _ := row["claim_token"].(string)
			for i, f := range from {
				if f.ID == id && tok == "" {
					exist[i] = true
				}
			}
		}
		clear(row)
		if !iter.MapScan(row) {
			break
		}
	}
	if iter != nil {
		if err := iter.Close(); err != nil {
			return false, nil, state.CassandraError(ctx, err, "claim jobs of "+d.Key())
		}
	}
	return false, exist, nil
}

// Move implements Store.
func (st *CassandraStore) Move(ctx context.Context, d Def, shard int, from slot, c cond, to ...*Job) (bool, *Job, error) {
	key := storageKey(d)
	where := ` WHERE queue = ? AND shard = ? AND kind = ? AND sprio = ? AND sdue = ? AND id = ?`
	whereArgs := []any{key, shard, int(from.Kind), from.Priority, from.Due, from.ID}
	// The row's token is always written (empty when not claimed), so this condition also says
	// that the row exists (Cassandra 2.1.0 has no UPDATE ... IF EXISTS).
	ifc, ifArgs := ` IF claim_token = ?`, []any{c.token}
	bctx, cancel := context.WithTimeout(ctx, st.cfg.Timeout)
	defer cancel()
	b := st.s.Batch(gocql.UnloggedBatch).WithContext(bctx).Consistency(st.cfg.Write).SerialConsistency(st.cfg.Serial)
	inPlace := false
	for _, j := range to {
		if j != nil && j.slot == from {
			inPlace = true
		}
	}
	if !inPlace {
		b.Query(`DELETE FROM `+st.ks+`.queue_jobs`+where+ifc, append(whereArgs, ifArgs...)...)
	}
	for _, j := range to {
		if j == nil {
			continue
		}
		if j.slot == from {
			set, args := `claim_token = ?, lease_until = ?`, []any{j.Token, j.LeaseUntil}
			if j.Payload != nil {
				set, args = set+`, payload = ?, priority = ?`, append(args, j.Payload, j.Priority)
			}
			args = append(append(args, whereArgs...), ifArgs...)
			b.Query(`UPDATE `+st.ks+`.queue_jobs SET `+set+where+ifc, args...)
		} else {
			stmt, args := st.insertStmt(d, shard, j, false)
			b.Query(stmt, args...)
		}
	}
	// The index and lease rows, in the same conditional batch (no condition of their own).
	switch ix, del := indexAfterMove(from, to); {
	case del:
		b.Query(`DELETE FROM `+st.ks+`.queue_jobs WHERE queue = ? AND shard = ? AND kind = ? AND sprio = 0 AND sdue = 0 AND id = ?`,
			key, shard, int(kindIndex), from.ID)
	case ix != nil:
		stmt, args := st.insertStmt(d, shard, ix, false)
		b.Query(stmt, args...)
	}
	del, add := leasesAfterMove(from, c, to)
	if del != nil {
		b.Query(`DELETE FROM `+st.ks+`.queue_jobs WHERE queue = ? AND shard = ? AND kind = ? AND sprio = 0 AND sdue = ? AND id = ?`,
			key, shard, int(kindLease), del.Due, del.ID)
	}
	for _, l := range add {
		stmt, args := st.insertStmt(d, shard, l, false)
		b.Query(stmt, args...)
	}
	prev := map[string]any{}
	applied, iter, err := b.MapExecCAS(prev)
	if iter != nil {
		_ = iter.Close()
	}
	if err != nil {
		return false, nil, state.CassandraError(ctx, err, "change job "+from.ID+" of "+d.Key())
	}
	if applied {
		return true, nil, nil
	}
	// The condition failed: Cassandra returns the row's conditioned column, or none when the row
	// does not exist.
	tok, ok := prev["claim_token"].(string)
	if !ok {
		return false, nil, nil
	}
	return false, &Job{Shard: shard, slot: from, ID: from.ID, Token: tok}, nil
}
