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
// hint in journal_streams.
func (s *CassandraStore) exclusiveWrite(ctx context.Context, stream string, first uint64, encoded [][]byte) error {
	lv := s.levelsOf(stream)
	for i := 0; i < len(encoded); {
		seq := first + uint64(i)
		bucket := seq / s.bucketSize
		j := i
		for j < len(encoded) && (first+uint64(j))/s.bucketSize == bucket {
			j++
		}
		last := first + uint64(j) - 1
		ts := int64(last + 1)
		b := s.s.Batch(gocql.UnloggedBatch).WithContext(ctx).Consistency(lv.write)
		for k := i; k < j; k++ {
			b.Query(`INSERT INTO `+s.ks+`.journal_exclusive (stream, bucket, seq, data) VALUES (?, ?, ?, ?) USING TIMESTAMP ?`,
				stream, int64(bucket), int64(first+uint64(k)), encoded[k], ts)
		}
		b.Query(`UPDATE `+s.ks+`.journal_exclusive USING TIMESTAMP ? SET head = ? WHERE stream = ? AND bucket = ?`, ts, int64(last), stream, int64(bucket))
		if err := b.Exec(); err != nil {
			return fmt.Errorf("journal: stream %s: append %d-%d: %w", stream, seq, last, err)
		}
		if seq%s.bucketSize == 0 && seq > 1 {
			// A new bucket: move the hint to the end of the previous one (committed).
			if err := s.s.Query(`UPDATE `+s.ks+`.journal_streams USING TIMESTAMP ? SET head = ? WHERE stream = ?`, int64(seq), int64(seq-1), stream).
				WithContext(ctx).Consistency(lv.write).Exec(); err != nil {
				return fmt.Errorf("journal: stream %s: head hint: %w", stream, err)
			}
		}
		i = j
	}
	return nil
}
