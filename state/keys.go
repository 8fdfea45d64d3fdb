package state

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/musicd/musicd/journal"
)

// A key's identity: the hash of its primary key values names both its lock and its journal
// stream, so that any daemon derives them from the key, and a lock reference names its stream.
//
//	lock   kv.<keyspace>.<table>.<hash>
//	stream kv/<keyspace>/<table>/<hash>
//
// hash is the first 128 bits of SHA-256 over a canonical encoding of the key values, in hex.
// KeyStreamPrefix starts the journal stream of every key written under its lock:
// kv/<keyspace>/<table>/<hash of the key>.
const KeyStreamPrefix = "kv/"

// IsKeyStream reports whether stream is a key's stream (see KeyStreamPrefix).
func IsKeyStream(stream string) bool { return strings.HasPrefix(stream, KeyStreamPrefix) }

type keyID struct {
	keyspace, table, hash string
}

func newKeyID(t Table, key journal.Row) keyID {
	h := sha256.New()
	var b [8]byte
	for _, f := range key {
		v := f.Value
		h.Write([]byte{byte(v.Kind)})
		var payload []byte
		switch v.Kind {
		case journal.KindInt:
			binary.BigEndian.PutUint64(b[:], uint64(v.Int))
			payload = b[:]
		case journal.KindUint, journal.KindBool:
			binary.BigEndian.PutUint64(b[:], v.Uint)
			payload = b[:]
		case journal.KindFloat32, journal.KindFloat64:
			binary.BigEndian.PutUint64(b[:], math.Float64bits(v.Float))
			payload = b[:]
		case journal.KindBytes:
			payload = v.Bytes
		default:
			payload = []byte(v.Str)
		}
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(payload)))
		h.Write(n[:])
		h.Write(payload)
	}
	sum := h.Sum(nil)
	return keyID{keyspace: t.Keyspace, table: t.Name, hash: hex.EncodeToString(sum[:16])}
}

func (k keyID) lockName() string { return lockPrefix + k.keyspace + "." + k.table + "." + k.hash }
func (k keyID) stream() string   { return KeyStreamPrefix + k.keyspace + "/" + k.table + "/" + k.hash }

// keyIDOfLock parses a key lock's name.
func keyIDOfLock(name string) (keyID, error) {
	parts := strings.Split(strings.TrimPrefix(name, lockPrefix), ".")
	if !strings.HasPrefix(name, lockPrefix) || len(parts) != 3 || len(parts[2]) != 32 {
		return keyID{}, fmt.Errorf("%w: lock %q is not a key lock", ErrInvalid, name)
	}
	if ValidateIdentifier("keyspace", parts[0]) != nil || ValidateIdentifier("table", parts[1]) != nil {
		return keyID{}, fmt.Errorf("%w: lock %q is not a key lock", ErrInvalid, name)
	}
	if _, err := hex.DecodeString(parts[2]); err != nil {
		return keyID{}, fmt.Errorf("%w: lock %q is not a key lock", ErrInvalid, name)
	}
	return keyID{keyspace: parts[0], table: parts[1], hash: parts[2]}, nil
}

// keyState is what this process knows of a key stream: its head and the timestamp of its last
// entry, learned by catching up (every entry up to seq is applied to the table) or by appending.
type keyState struct {
	seq  uint64
	last journal.Timestamp
}

// bounded is a map of at most max entries, safe for concurrent use: when full, an arbitrary half
// is dropped. Used for caches whose miss costs a round trip, never a wrong answer.
type bounded[K comparable, V any] struct {
	mu  sync.Mutex
	max int
	m   map[K]V
}

func newBounded[K comparable, V any](max int) *bounded[K, V] {
	return &bounded[K, V]{max: max, m: map[K]V{}}
}

func (c *bounded[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *bounded[K, V]) set(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		n := 0
		for old := range c.m {
			delete(c.m, old)
			if n++; n >= c.max/2 {
				break
			}
		}
	}
	c.m[k] = v
}

func (c *bounded[K, V]) drop(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
}

// keyLocks serializes the operations of this process on one key stream (striped mutexes).
type keyLocks [512]sync.Mutex

func (l *keyLocks) lock(stream string) func() {
	h := sha256.Sum256([]byte(stream))
	m := &l[binary.BigEndian.Uint16(h[:2])%uint16(len(l))]
	m.Lock()
	return m.Unlock
}

// micros is the write timestamp of an entry's change: its HLC wall time in microseconds.
func micros(ts journal.Timestamp) int64 { return ts.Wall / 1000 }

// stampAfter returns a timestamp for the next entry of a key stream whose last entry has prev:
// later than prev by at least one microsecond, so that the table's last-writer-wins keeps the
// journal's order.
func (s *Service) stampAfter(prev journal.Timestamp) (journal.Timestamp, error) {
	if prev.IsZero() {
		return s.clock.Now(), nil
	}
	floor := journal.Timestamp{Wall: (prev.Wall/1000 + 1) * 1000}
	ts, err := s.clock.Update(floor)
	if err != nil {
		return journal.Timestamp{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return ts, nil
}

// mutationOf turns a journal entry of a key stream back into the mutation it recorded.
func mutationOf(e journal.Entry) (Mutation, bool) {
	m := Mutation{Key: e.Key, Values: e.After, Timestamp: micros(e.HLC)}
	switch e.Op {
	case journal.OpPut, journal.OpInsert:
		m.Op = MutPut
	case journal.OpUpdate:
		m.Op = MutUpdate
	case journal.OpDelete:
		m.Op, m.Values = MutDelete, nil
	default:
		return Mutation{}, false
	}
	return m, true
}

func opOf(op MutationOp) journal.Op {
	switch op {
	case MutPut:
		return journal.OpPut
	case MutUpdate:
		return journal.OpUpdate
	}
	return journal.OpDelete
}

// maxCatchUp bounds how far back a catch-up looks for the last entry that replaced the whole row.
const maxCatchUp = 10_000

// catchUp brings the table up to the key stream's head h: it re-applies, oldest first, every
// entry from the last one that replaced or deleted the whole row (a put or a delete) to the head.
// Re-applying is harmless (last-writer-wins on each entry's timestamp), so catching up twice, or
// catching up entries that were applied already, changes nothing. It returns the state the key
// is in and how many entries it applied.
func (s *Service) catchUp(ctx context.Context, t Table, stream string, h journal.Head) (keyState, int, error) {
	if h.Seq == 0 || h.Seq <= h.Low {
		return keyState{seq: h.Seq}, 0, nil
	}
	// Read backwards in chunks until a whole-row entry (or the start, or the bound).
	var tail []journal.Entry
	to := h.Seq
	for {
		from := uint64(1)
		if to > 64 {
			from = to - 63
		}
		if from <= h.Low {
			from = h.Low + 1
		}
		chunk, err := s.readRange(ctx, stream, from, to)
		if err != nil {
			return keyState{}, 0, err
		}
		tail = append(chunk, tail...)
		if i := lastWhole(chunk); i >= 0 || from == h.Low+1 || len(tail) >= maxCatchUp {
			break
		}
		to = from - 1
	}
	if i := lastWhole(tail); i > 0 {
		tail = tail[i:]
	}
	ms := make([]Mutation, 0, len(tail))
	for _, e := range tail {
		if m, ok := mutationOf(e); ok {
			ms = append(ms, m)
		}
	}
	if len(ms) > 0 {
		if err := s.applyRetrying(ctx, t, LevelGlobal, ms...); err != nil {
			return keyState{}, 0, err
		}
	}
	last := tail[len(tail)-1].HLC
	if _, err := s.clock.Update(last); err != nil {
		s.log.Warn("a key stream's last entry is far ahead of this clock", "stream", stream, "err", err)
	}
	return keyState{seq: h.Seq, last: last}, len(ms), nil
}

func lastWhole(es []journal.Entry) int {
	for i := len(es) - 1; i >= 0; i-- {
		switch es[i].Op {
		case journal.OpPut, journal.OpInsert, journal.OpDelete:
			return i
		}
	}
	return -1
}

// readRange reads entries from..to of a stream; every one of them exists (they are at or below
// the head), so a short read is waited for by reading again.
func (s *Service) readRange(ctx context.Context, stream string, from, to uint64) ([]journal.Entry, error) {
	var out []journal.Entry
	pause := time.Millisecond
	for from <= to {
		es, err := s.journal.Read(ctx, stream, from, int(to-from+1))
		if err != nil {
			return nil, unavailable("read journal stream "+stream, err)
		}
		if len(es) == 0 { // an entry below the head not yet visible here: wait for it
			select {
			case <-ctx.Done():
				return nil, unavailable("read journal stream "+stream, ctx.Err())
			case <-time.After(pause):
			}
			pause = min(2*pause, 50*time.Millisecond)
			continue
		}
		out = append(out, es...)
		from = es[len(es)-1].Seq + 1
	}
	return out, nil
}

// unavailable wraps a dependency failure as ErrUnavailable, keeping journal sentinels matchable.
func unavailable(what string, err error) error {
	for _, known := range []error{ErrUnavailable, ErrNotFound, ErrInvalid, ErrExists, ErrNotHolder, ErrConditionFailed, ErrLocked} {
		if errors.Is(err, known) {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, what, err)
}
