package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/musicd/musicd/state"
)

// EmbeddedStore keeps queues in a Pebble database of their own (embedded mode). One process owns
// it, so a mutex makes every change atomic; writes are durable on return (pebble.Sync).
//
// Keys:
//
//	'D' namespace 0 name                                 definition (JSON)
//	'J' storage key 0 shard(2) kind(1) ^prio(1) due(8) id  job (JSON)
//
// due is stored with its sign bit flipped so that byte order is numeric order; rows that expire
// (dedup and done ids) carry their expiry and read as absent after it.
type EmbeddedStore struct {
	db  *pebble.DB
	now func() time.Time
	mu  sync.Mutex // serializes changes (Insert, Move, CreateQueue, DropQueue)
}

var _ Store = (*EmbeddedStore)(nil)

// OpenEmbeddedStore opens (creating if needed) the store in dir. now is the clock that expires
// dedup ids.
func OpenEmbeddedStore(dir string, now func() time.Time, logger *slog.Logger) (*EmbeddedStore, error) {
	db, err := pebble.Open(dir, &pebble.Options{Logger: state.PebbleLogger(logger.With("component", "pebble"))})
	if err != nil {
		return nil, fmt.Errorf("queue: open embedded store %s: %w", dir, err)
	}
	return &EmbeddedStore{db: db, now: now}, nil
}

// Close closes the database.
func (st *EmbeddedStore) Close() error { return st.db.Close() }

func defKey(namespace, name string) []byte {
	return append(append(append([]byte{'D'}, namespace...), 0), name...)
}

func shardPrefix(d Def, shard int) []byte {
	k := append(append([]byte{'J'}, storageKey(d)...), 0)
	return binary.BigEndian.AppendUint16(k, uint16(shard))
}

func slotKey(d Def, shard int, s slot) []byte {
	k := append(shardPrefix(d, shard), byte(s.Kind), byte(255-s.Priority))
	k = binary.BigEndian.AppendUint64(k, uint64(s.Due)^(1<<63))
	return append(k, s.ID...)
}

// embJob is a job as the embedded store encodes it.
type embJob struct {
	Payload    []byte `json:"p,omitempty"`
	Priority   int    `json:"pr,omitempty"`
	Attempts   int    `json:"a,omitempty"`
	Enqueued   int64  `json:"e,omitempty"`
	Due        int64  `json:"d,omitempty"`
	Holder     string `json:"h,omitempty"`
	Token      string `json:"t,omitempty"`
	LeaseUntil int64  `json:"l,omitempty"`
	Error      string `json:"er,omitempty"`
	Died       int64  `json:"x,omitempty"`
	Expires    int64  `json:"ttl,omitempty"`
}

func (st *EmbeddedStore) encode(d Def, j *Job) ([]byte, error) {
	e := embJob{j.Payload, j.Priority, j.Attempts, j.Enqueued, j.Due, j.Holder, j.Token, j.LeaseUntil, j.Error, j.Died, 0}
	if j.slot.Kind.expires() {
		e.Expires = st.now().Add(time.Duration(d.DedupWindow)).UnixMicro()
	}
	return json.Marshal(e)
}

// decode returns the job stored under s, or nil if it expired.
func (st *EmbeddedStore) decode(shard int, s slot, v []byte) (*Job, error) {
	var e embJob
	if err := json.Unmarshal(v, &e); err != nil {
		return nil, fmt.Errorf("queue: corrupt job %s: %w", s.ID, err)
	}
	if e.Expires != 0 && e.Expires <= st.now().UnixMicro() {
		return nil, nil
	}
	return &Job{Shard: shard, slot: s, ID: s.ID, Payload: e.Payload, Priority: e.Priority, Attempts: e.Attempts,
		Enqueued: e.Enqueued, Due: e.Due, Holder: e.Holder, Token: e.Token, LeaseUntil: e.LeaseUntil, Error: e.Error, Died: e.Died}, nil
}

func parseSlot(prefixLen int, k []byte) (slot, bool) {
	rest := k[prefixLen:]
	if len(rest) < 10 {
		return slot{}, false
	}
	return slot{Kind: kind(rest[0]), Priority: 255 - int(rest[1]), Due: int64(binary.BigEndian.Uint64(rest[2:10]) ^ (1 << 63)), ID: string(rest[10:])}, true
}

func (st *EmbeddedStore) get(key []byte) ([]byte, bool, error) {
	v, closer, err := st.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer closer.Close()
	return bytes.Clone(v), true, nil
}

// CreateQueue implements Store.
func (st *EmbeddedStore) CreateQueue(_ context.Context, d Def) (Def, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	k := defKey(d.Namespace, d.Name)
	if v, ok, err := st.get(k); err != nil {
		return Def{}, err
	} else if ok {
		var cur Def
		if err := json.Unmarshal(v, &cur); err != nil {
			return Def{}, fmt.Errorf("queue %s: stored definition: %w", d.Key(), err)
		}
		return cur, fmt.Errorf("%w: queue %s", state.ErrExists, d.Key())
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return Def{}, err
	}
	return d, st.db.Set(k, raw, pebble.Sync)
}

// DropQueue implements Store.
func (st *EmbeddedStore) DropQueue(ctx context.Context, namespace, name string) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	d, err := st.Queue(ctx, namespace, name)
	if err != nil {
		return err
	}
	b := st.db.NewBatch()
	defer b.Close()
	if err := b.Delete(defKey(namespace, name), nil); err != nil {
		return err
	}
	lo := append(append([]byte{'J'}, storageKey(d)...), 0)
	hi := append(append([]byte{'J'}, storageKey(d)...), 1)
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// Queue implements Store.
func (st *EmbeddedStore) Queue(_ context.Context, namespace, name string) (Def, error) {
	v, ok, err := st.get(defKey(namespace, name))
	if err != nil {
		return Def{}, err
	}
	if !ok {
		return Def{}, fmt.Errorf("%w: queue %s.%s", state.ErrNotFound, namespace, name)
	}
	var d Def
	if err := json.Unmarshal(v, &d); err != nil {
		return Def{}, fmt.Errorf("queue %s.%s: stored definition: %w", namespace, name, err)
	}
	return d, nil
}

// Queues implements Store; namespace "" lists every queue.
func (st *EmbeddedStore) Queues(ctx context.Context, namespace string) ([]Def, error) {
	lo := append(append([]byte{'D'}, namespace...), 0)
	hi := append(append([]byte{'D'}, namespace...), 1)
	if namespace == "" {
		lo, hi = []byte{'D'}, []byte{'D' + 1}
	}
	it, err := st.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	var out []Def
	for it.First(); it.Valid(); it.Next() {
		var d Def
		if err := json.Unmarshal(it.Value(), &d); err != nil {
			_ = it.Close()
			return nil, fmt.Errorf("queues of %s: stored definition: %w", namespace, err)
		}
		out = append(out, d)
	}
	return out, it.Close()
}

// Insert implements Store.
func (st *EmbeddedStore) Insert(ctx context.Context, d Def, j Job, mode insertMode) (bool, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	b := st.db.NewBatch()
	defer b.Close()
	if mode != insertNew {
		if loc, err := locate(ctx, st, d, j.Shard, j.ID); err != nil {
			return false, err
		} else if loc != nil {
			return true, nil
		}
	}
	if mode == insertDedup {
		ms := slot{Kind: kindDedup, ID: j.ID}
		if cur, err := st.Get(ctx, d, j.Shard, ms); err != nil {
			return false, err
		} else if cur != nil {
			return true, nil
		}
		marker := Job{slot: ms, Enqueued: j.Enqueued}
		if err := st.set(b, d, j.Shard, &marker); err != nil {
			return false, err
		}
	}
	j.slot = slot{Kind: kindReady, Priority: j.Priority, Due: j.Due, ID: j.ID}
	if err := st.set(b, d, j.Shard, &j); err != nil {
		return false, err
	}
	if err := st.set(b, d, j.Shard, indexRow(j.slot)); err != nil {
		return false, err
	}
	return false, b.Commit(pebble.Sync)
}

// set adds the write of j at its slot to b.
func (st *EmbeddedStore) set(b *pebble.Batch, d Def, shard int, j *Job) error {
	raw, err := st.encode(d, j)
	if err != nil {
		return err
	}
	return b.Set(slotKey(d, shard, j.slot), raw, nil)
}

func (st *EmbeddedStore) scan(ctx context.Context, d Def, shard int, lo, hi []byte, limit int, keep func(*Job) bool) ([]Job, error) {
	it, err := st.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	prefixLen := len(shardPrefix(d, shard))
	var out []Job
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		s, ok := parseSlot(prefixLen, it.Key())
		if !ok {
			continue
		}
		j, err := st.decode(shard, s, it.Value())
		if err != nil {
			_ = it.Close()
			return nil, err
		}
		if j != nil && keep(j) {
			out = append(out, *j)
		}
	}
	return out, it.Close()
}

// Ready implements Store.
func (st *EmbeddedStore) Ready(ctx context.Context, d Def, shard, priority int, from, to int64, limit int) ([]Job, error) {
	lo := slotKey(d, shard, slot{Kind: kindReady, Priority: priority, Due: from})
	hi := slotKey(d, shard, slot{Kind: kindReady, Priority: priority, Due: to})
	hi = append(hi, 0xff) // every id at due == to
	return st.scan(ctx, d, shard, lo, hi, limit, func(j *Job) bool { return !j.claimed() })
}

// Leases implements Store.
func (st *EmbeddedStore) Leases(ctx context.Context, d Def, shard int, before int64, limit int) ([]Job, error) {
	lo := slotKey(d, shard, slot{Kind: kindLease, Due: 0})
	hi := slotKey(d, shard, slot{Kind: kindLease, Due: before})
	rows, err := st.scan(ctx, d, shard, lo, hi, limit, func(*Job) bool { return true })
	if err != nil {
		return nil, err
	}
	return claimsOfLeases(rows)
}

// Rows implements Store.
func (st *EmbeddedStore) Rows(ctx context.Context, d Def, shard int, k kind, after string, limit int) ([]Job, error) {
	lo := slotKey(d, shard, slot{Kind: k, ID: after})
	hi := append(slotKey(d, shard, slot{Kind: k}), 0xff)
	return st.scan(ctx, d, shard, lo, hi, limit, func(j *Job) bool { return j.ID > after })
}

// Scan implements Store.
func (st *EmbeddedStore) Scan(ctx context.Context, d Def, shard, limit int) ([]Job, error) {
	lo := append(shardPrefix(d, shard), byte(kindReady))
	hi := append(shardPrefix(d, shard), byte(kindDead)+1)
	return st.scan(ctx, d, shard, lo, hi, limit, func(*Job) bool { return true })
}

// Get implements Store.
func (st *EmbeddedStore) Get(_ context.Context, d Def, shard int, s slot) (*Job, error) {
	v, ok, err := st.get(slotKey(d, shard, s))
	if err != nil || !ok {
		return nil, err
	}
	return st.decode(shard, s, v)
}

// ClaimAll implements Store.
func (st *EmbeddedStore) ClaimAll(ctx context.Context, d Def, shard int, from []slot, claims []*Job) (bool, []bool, error) {
	if len(from) != len(claims) || len(from) == 0 {
		return false, nil, fmt.Errorf("queue: ClaimAll of %d ready rows to %d claims", len(from), len(claims))
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	exist := make([]bool, len(from))
	rows := make([]*Job, len(from))
	all := true
	for i, f := range from {
		cur, err := st.Get(ctx, d, shard, f)
		if err != nil {
			return false, nil, err
		}
		exist[i] = cur != nil && !cur.claimed()
		all = all && exist[i]
		rows[i] = cur
	}
	if !all {
		return false, exist, nil
	}
	b := st.db.NewBatch()
	defer b.Close()
	for i, c := range claims {
		j := rows[i]
		j.Token, j.LeaseUntil, j.Holder, j.Attempts = c.Token, c.LeaseUntil, c.Holder, c.Attempts
		if err := st.set(b, d, shard, j); err != nil {
			return false, nil, err
		}
		if err := st.set(b, d, shard, leaseRow(j)); err != nil {
			return false, nil, err
		}
	}
	return true, nil, b.Commit(pebble.Sync)
}

// Move implements Store.
func (st *EmbeddedStore) Move(ctx context.Context, d Def, shard int, from slot, c cond, to ...*Job) (bool, *Job, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	cur, err := st.Get(ctx, d, shard, from)
	if err != nil {
		return false, nil, err
	}
	if cur == nil {
		return false, nil, nil
	}
	if !c.holds(cur) {
		return false, &Job{Shard: shard, slot: from, ID: from.ID, Token: cur.Token}, nil
	}
	b := st.db.NewBatch()
	defer b.Close()
	if err := b.Delete(slotKey(d, shard, from), nil); err != nil {
		return false, nil, err
	}
	for _, j := range to {
		if j == nil {
			continue
		}
		if j.slot == from {
			updated := *cur
			updated.Token, updated.LeaseUntil = j.Token, j.LeaseUntil
			if j.Payload != nil {
				updated.Payload, updated.Priority = j.Payload, j.Priority
			}
			j = &updated
		}
		if err := st.set(b, d, shard, j); err != nil {
			return false, nil, err
		}
	}
	del, add := leasesAfterMove(from, c, to)
	if del != nil {
		if err := b.Delete(slotKey(d, shard, *del), nil); err != nil {
			return false, nil, err
		}
	}
	for _, l := range add {
		if err := st.set(b, d, shard, l); err != nil {
			return false, nil, err
		}
	}
	switch ix, del := indexAfterMove(from, to); {
	case del:
		if err := b.Delete(slotKey(d, shard, slot{Kind: kindIndex, ID: from.ID}), nil); err != nil {
			return false, nil, err
		}
	case ix != nil:
		if err := st.set(b, d, shard, ix); err != nil {
			return false, nil, err
		}
	}
	return true, nil, b.Commit(pebble.Sync)
}
