package journal

import (
	"context"
	"errors"
	"fmt"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
)

// Compact streams (classes listed in CassandraConfig.CompactClasses, "kv" by default) keep their
// entries in the stream's own partition, next to its head in static columns:
//
//	journal_compact (stream, seq) -> data; static epoch, head, low
//
// so that an append is one conditional batch on one partition: the entries are written if, and
// only if, the head and epoch are what the writer expects, atomically. Several processes may then
// append to the same stream under the same epoch (REST calls of one lock holder through several
// daemons): a writer whose idea of the head is stale fails with ErrConflict and has written
// nothing, where the bucketed layout's write-then-commit would let it overwrite committed entries
// of its own epoch. An append with a higher epoch fences the stream in the same transaction.
// Meant for many small streams (one per REST key): a stream's partition holds all its untrimmed
// entries, and one append carries at most compactMaxBatchEntries and compactMaxBatchBytes.

// Bounds of one append to a compact stream: one conditional batch, which Cassandra must apply
// within its write timeout.
const (
	compactMaxBatchEntries = 1000
	compactMaxBatchBytes   = 1 << 20
)

func (s *CassandraStore) compact(stream string) bool { return s.compactClasses[classOf(stream)] }

// compactHead reads a compact stream's head at consistency cl (SERIAL for a linearizable read).
func (s *CassandraStore) compactHead(ctx context.Context, stream string, cl gocql.Consistency) (Head, bool, error) {
	var epoch, head, low int64
	err := s.s.Query(`SELECT epoch, head, low FROM `+s.ks+`.journal_compact WHERE stream = ? LIMIT 1`, stream).
		WithContext(ctx).Consistency(cl).Scan(&epoch, &head, &low)
	if errors.Is(err, gocql.ErrNotFound) {
		return Head{}, false, nil
	}
	if err != nil {
		return Head{}, false, fmt.Errorf("journal: stream %s: read head: %w", stream, err)
	}
	return Head{Epoch: uint64(epoch), Seq: uint64(head), Low: uint64(low)}, true, nil
}

// compactAppendLocked appends to a compact stream with one conditional batch. The caller holds
// the stream's stripe and validated the batch.
func (s *CassandraStore) compactAppendLocked(ctx context.Context, stream string, epoch uint64, first, last uint64, encoded [][]byte) error {
	size := 0
	for _, e := range encoded {
		size += len(e)
	}
	if size > compactMaxBatchBytes || len(encoded) > compactMaxBatchEntries {
		return fmt.Errorf("%w: stream %s: %d entries, %d bytes in one append of a compact stream (max %d, %d)",
			ErrInvalid, stream, len(encoded), size, compactMaxBatchEntries, compactMaxBatchBytes)
	}
	lv := s.levelsOf(stream)
	h, ok := s.known(stream)
	if !ok || h.Epoch > epoch || h.Seq+1 != first {
		// Learn the head linearizably (creating the stream if it has none).
		hh, exists, err := s.compactHead(ctx, stream, lv.serial)
		if err == nil && !exists {
			hh, err = s.fenceLocked(ctx, stream, epoch)
		}
		if err != nil {
			s.setKnown(stream, Head{}, false)
			return err
		}
		h = hh
		s.setKnown(stream, h, true)
	}
	if epoch < h.Epoch {
		return fmt.Errorf("%w: stream %s: epoch %d < %d", ErrFenced, stream, epoch, h.Epoch)
	}
	if first != h.Seq+1 {
		return s.retryOrConflict(ctx, stream, first, last, h, encoded)
	}
	b := s.s.Batch(gocql.UnloggedBatch).WithContext(ctx).Consistency(lv.write).SerialConsistency(lv.serial)
	b.Query(`UPDATE `+s.ks+`.journal_compact SET epoch = ?, head = ? WHERE stream = ? IF epoch = ? AND head = ?`,
		int64(epoch), int64(last), stream, int64(h.Epoch), int64(first-1))
	for i, data := range encoded {
		b.Query(`INSERT INTO `+s.ks+`.journal_compact (stream, seq, data) VALUES (?, ?, ?)`, stream, int64(first+uint64(i)), data)
	}
	prev := map[string]any{}
	applied, iter, err := b.MapExecCAS(prev)
	if iter != nil {
		_ = iter.Close()
	}
	if err != nil {
		// Unknown outcome: the caller retries the same batch, which either commits it or finds it.
		s.setKnown(stream, Head{}, false)
		return fmt.Errorf("journal: stream %s: append %d-%d: %w", stream, first, last, err)
	}
	if !applied {
		s.setKnown(stream, Head{}, false)
		cur, _ := prev["epoch"].(int64)
		if uint64(cur) > epoch {
			return fmt.Errorf("%w: stream %s: epoch %d < %d", ErrFenced, stream, epoch, cur)
		}
		head, _ := prev["head"].(int64)
		return s.retryOrConflict(ctx, stream, first, last, Head{Seq: uint64(head), Epoch: uint64(cur), Low: h.Low}, encoded)
	}
	s.setKnown(stream, Head{Seq: last, Epoch: epoch, Low: h.Low}, true)
	return nil
}

// retryOrConflict decides an append that does not follow head h: a retry of a batch already
// committed succeeds; anything else is ErrConflict.
func (s *CassandraStore) retryOrConflict(ctx context.Context, stream string, first, last uint64, h Head, encoded [][]byte) error {
	if last <= h.Seq && first > h.Low {
		same, err := s.sameEntries(ctx, stream, first, encoded)
		if err != nil {
			return err
		}
		if same {
			return nil
		}
	}
	return fmt.Errorf("%w: stream %s: batch %d-%d, head %d", ErrConflict, stream, first, last, h.Seq)
}

// compactRange returns the encoded entries from..to of a compact stream, stopping before the
// first missing seq.
func (s *CassandraStore) compactRange(ctx context.Context, stream string, from, to uint64, cl gocql.Consistency) ([][]byte, error) {
	out := make([][]byte, 0, min(to-from+1, 1024))
	iter := s.s.Query(`SELECT seq, data FROM `+s.ks+`.journal_compact WHERE stream = ? AND seq >= ? AND seq <= ?`,
		stream, int64(from), int64(to)).WithContext(ctx).Consistency(cl).PageSize(1000).Iter()
	next := from
	var seq int64
	var data []byte
	for iter.Scan(&seq, &data) {
		if uint64(seq) != next {
			break
		}
		out = append(out, data)
		data = nil
		next++
	}
	if err := iter.Close(); err != nil {
		return nil, fmt.Errorf("journal: stream %s: read %d-%d: %w", stream, from, to, err)
	}
	return out, nil
}

// compactDeleteBelow deletes the rows of a compact stream from low+1 to below-1 (after its trim
// point was raised), in single-partition batches. Their seqs are below the head, where no
// conditional append can write again, so the deletions need no timestamp of their own.
func (s *CassandraStore) compactDeleteBelow(ctx context.Context, stream string, low, below uint64) error {
	lv := s.levelsOf(stream)
	for from := low + 1; from < below; from += 100 {
		b := s.s.Batch(gocql.UnloggedBatch).WithContext(ctx).Consistency(lv.write)
		for seq := from; seq < below && seq < from+100; seq++ {
			b.Query(`DELETE FROM `+s.ks+`.journal_compact WHERE stream = ? AND seq = ?`, stream, int64(seq))
		}
		if err := b.Exec(); err != nil {
			return fmt.Errorf("journal: stream %s: delete entries below %d: %w", stream, below, err)
		}
	}
	return nil
}

// register lists a new stream in the directory.
func (s *CassandraStore) register(ctx context.Context, stream string) error {
	shard := int(fnvHash(stream) % dirShards)
	if err := s.s.Query(`INSERT INTO `+s.ks+`.journal_dir (class, shard, stream) VALUES (?, ?, ?)`, classOf(stream), shard, stream).
		WithContext(ctx).Consistency(s.levelsOf(stream).write).Exec(); err != nil {
		return fmt.Errorf("journal: stream %s: register: %w", stream, err)
	}
	return nil
}
