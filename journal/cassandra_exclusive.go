package journal

import (
	"context"
	"errors"
	"fmt"
	"strings"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
)

// Exclusive streams (classes listed in CassandraConfig.ExclusiveClasses, "kvlog" by default) are
// streams whose id ends with their one writer's epoch, "<...>/<epoch>": a writer elected with a
// fencing token names a new stream after it, so no other writer of that stream can ever exist and
// the epoch never changes. They need no lightweight transaction: entries live in
//
//	journal_exclusive ((stream, bucket), seq) -> data; static head
//
// and an append writes each bucket's part of the batch, in order, as one single-partition batch
// of the entries and the bucket's head (atomic and isolated in Cassandra): one round trip for a
// batch within a bucket. journal_streams keeps the epoch, the trim point and a hint, a committed
// seq at or below the head (moved when a bucket is started); the head is found from the hint by
// reading the static heads of the buckets after it. Every head write carries USING TIMESTAMP
// head+1, so a retry or a reordered write never moves it back. A writer that restarts is a new
// leader with a new epoch, hence a new stream; readers list the streams of a prefix to find them.

func (s *CassandraStore) exclusive(stream string) bool { return s.exclusiveClasses[classOf(stream)] }

// exclusiveEpoch checks that epoch is the one an exclusive stream's id names.
func exclusiveEpoch(stream string, epoch uint64) error {
	i := strings.LastIndexByte(stream, '/')
	if i < 0 || stream[i+1:] != fmt.Sprint(epoch) {
		return fmt.Errorf("%w: exclusive stream %s must end with its writer's epoch %d (\".../%d\")", ErrInvalid, stream, epoch, epoch)
	}
	return nil
}

// exclusiveFenceLocked creates an exclusive stream (if needed) and returns its head, read at the
// write consistency (this process is its only writer). The caller holds the stream's stripe.
func (s *CassandraStore) exclusiveFenceLocked(ctx context.Context, stream string, epoch uint64) (Head, error) {
	if err := exclusiveEpoch(stream, epoch); err != nil {
		return Head{}, err
	}
	lv := s.levelsOf(stream)
	h, found, err := s.exclusiveHead(ctx, stream, lv.write)
	if err != nil {
		return Head{}, err
	}
	if found {
		if h.Epoch != epoch {
			return Head{}, fmt.Errorf("%w: stream %s: epoch %d, not %d", ErrFenced, stream, epoch, h.Epoch)
		}
		return h, nil
	}
	if err := s.register(ctx, stream); err != nil {
		return Head{}, err
	}
	if err := s.s.Query(`INSERT INTO `+s.ks+`.journal_streams (stream, epoch, head, low) VALUES (?, ?, 0, 0) USING TIMESTAMP 1`, stream, int64(epoch)).
		WithContext(ctx).Consistency(lv.write).Exec(); err != nil {
		return Head{}, fmt.Errorf("journal: stream %s: create: %w", stream, err)
	}
	return Head{Epoch: epoch}, nil
}

// exclusiveHead reads an exclusive stream's head at consistency cl: the hint and trim point from
// journal_streams, then the static heads of the buckets from there.
func (s *CassandraStore) exclusiveHead(ctx context.Context, stream string, cl gocql.Consistency) (Head, bool, error) {
	var epoch, hint, low int64
	err := s.s.Query(`SELECT epoch, head, low FROM `+s.ks+`.journal_streams WHERE stream = ?`, stream).
		WithContext(ctx).Consistency(cl).Scan(&epoch, &hint, &low)
	if errors.Is(err, gocql.ErrNotFound) {
		return Head{}, false, nil
	}
	if err != nil {
		return Head{}, false, fmt.Errorf("journal: stream %s: read head: %w", stream, err)
	}
	seq := uint64(max(hint, low))
	for {
		var head int64
		err := s.s.Query(`SELECT head FROM `+s.ks+`.journal_exclusive WHERE stream = ? AND bucket = ? LIMIT 1`,
			stream, int64((seq+1)/s.bucketSize)).WithContext(ctx).Consistency(cl).Scan(&head)
		if errors.Is(err, gocql.ErrNotFound) || (err == nil && uint64(head) <= seq) {
			break
		}
		if err != nil {
			return Head{}, false, fmt.Errorf("journal: stream %s: read head: %w", stream, err)
		}
		seq = uint64(head)
		if (seq+1)%s.bucketSize != 0 {
			break // the head is inside this bucket
		}
	}
	return Head{Epoch: uint64(epoch), Seq: seq, Low: uint64(low)}, true, nil
}

// exclusiveWrite writes encoded entries from first on, bucket by bucket and in order, each part
// with its bucket's new head in the same single-partition batch; starting a bucket also moves the
// hint in journal_streams. With stmts, everything (every bucket's part, the hint, the statements)
// goes in one logged batch instead: Cassandra applies all of it or, should the batch fail, none
// of it or, once the batch log has it, all of it eventually.
func (s *CassandraStore) exclusiveWrite(ctx context.Context, stream string, first uint64, encoded [][]byte, stmts []Statement) error {
	lv := s.levelsOf(stream)
	var logged *gocql.Batch
	if len(stmts) > 0 {
		logged = s.s.Batch(gocql.LoggedBatch).WithContext(ctx).Consistency(lv.write)
	}
	last := first + uint64(len(encoded)) - 1
	for i := 0; i < len(encoded); {
		seq := first + uint64(i)
		bucket := seq / s.bucketSize
		j := i
		for j < len(encoded) && (first+uint64(j))/s.bucketSize == bucket {
			j++
		}
		partLast := first + uint64(j) - 1
		ts := int64(partLast + 1)
		b := logged
		if b == nil {
			b = s.s.Batch(gocql.UnloggedBatch).WithContext(ctx).Consistency(lv.write)
		}
		for k := i; k < j; k++ {
			b.Query(`INSERT INTO `+s.ks+`.journal_exclusive (stream, bucket, seq, data) VALUES (?, ?, ?, ?) USING TIMESTAMP ?`,
				stream, int64(bucket), int64(first+uint64(k)), encoded[k], ts)
		}
		b.Query(`UPDATE `+s.ks+`.journal_exclusive USING TIMESTAMP ? SET head = ? WHERE stream = ? AND bucket = ?`, ts, int64(partLast), stream, int64(bucket))
		// A new bucket moves the hint to the end of the previous one (committed once this part is).
		newBucket := seq%s.bucketSize == 0 && seq > 1
		if logged != nil {
			if newBucket {
				b.Query(`UPDATE `+s.ks+`.journal_streams USING TIMESTAMP ? SET head = ? WHERE stream = ?`, int64(seq), int64(seq-1), stream)
			}
			i = j
			continue
		}
		if err := b.Exec(); err != nil {
			return fmt.Errorf("journal: stream %s: append %d-%d: %w", stream, seq, partLast, err)
		}
		if newBucket {
			if err := s.s.Query(`UPDATE `+s.ks+`.journal_streams USING TIMESTAMP ? SET head = ? WHERE stream = ?`, int64(seq), int64(seq-1), stream).
				WithContext(ctx).Consistency(lv.write).Exec(); err != nil {
				return fmt.Errorf("journal: stream %s: head hint: %w", stream, err)
			}
		}
		i = j
	}
	if logged == nil {
		return nil
	}
	for _, st := range stmts {
		logged.Query(st.CQL, st.Args...)
	}
	if err := logged.Exec(); err != nil {
		return fmt.Errorf("journal: stream %s: append %d-%d with %d statements: %w", stream, first, last, len(stmts), rejected(err))
	}
	return nil
}

// Statement is a CQL statement and its bound values, run in the same batch as an append
// (AppendWith).
type Statement struct {
	CQL  string
	Args []any
}

// AppendWith is Append for an exclusive stream that also runs stmts in the same logged batch as
// the entries: both take effect or neither does. The statements run at the stream's write
// consistency (WriteConsistency) and must be idempotent (carry their own write timestamps): a
// retry of a batch that committed runs them again. ErrRejected if Cassandra refuses the batch
// (a statement is invalid, names a missing table, the batch is too large): nothing was written.
// The batch should stay under Cassandra's batch_size_warn_threshold (5 KiB by default), above
// which Cassandra logs a warning for each batch.
func (s *CassandraStore) AppendWith(ctx context.Context, stream string, epoch uint64, entries []Entry, stmts []Statement) error {
	if !s.exclusive(stream) {
		return fmt.Errorf("%w: stream %s: statements can join only appends to an exclusive stream", ErrInvalid, stream)
	}
	return s.append(ctx, stream, epoch, entries, stmts)
}

// WriteConsistency is the consistency of a stream's writes (and of AppendWith's statements).
func (s *CassandraStore) WriteConsistency(stream string) gocql.Consistency {
	return s.levelsOf(stream).write
}

// Session is the session the store writes with: statements for AppendWith must be valid on it.
func (s *CassandraStore) Session() *gocql.Session { return s.s }

// runStatements runs the statements of a retried AppendWith whose entries had committed.
func (s *CassandraStore) runStatements(ctx context.Context, stream string, stmts []Statement) error {
	b := s.s.Batch(gocql.LoggedBatch).WithContext(ctx).Consistency(s.levelsOf(stream).write)
	for _, st := range stmts {
		b.Query(st.CQL, st.Args...)
	}
	if err := b.Exec(); err != nil {
		return fmt.Errorf("journal: stream %s: statements of a committed append: %w", stream, rejected(err))
	}
	return nil
}

// rejected marks the errors by which Cassandra refuses a request as invalid (nothing of it was
// written) with ErrRejected.
func rejected(err error) error {
	var re gocql.RequestError
	if errors.As(err, &re) {
		switch re.Code() {
		case gocql.ErrCodeSyntax, gocql.ErrCodeInvalid, gocql.ErrCodeConfig, gocql.ErrCodeUnauthorized:
			return fmt.Errorf("%w: %w", ErrRejected, err)
		}
	}
	return err
}
