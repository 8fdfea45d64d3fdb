package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"sync"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"golang.org/x/sync/errgroup"
)

// CassandraStore is the Store of distributed mode.
//
// Tables (in the configured keyspace):
//
//	journal_streams   (stream) -> epoch, head, low               one row per stream: the fence
//	journal_entries   ((stream, bucket), seq) -> data            bucket = seq / bucket size
//	journal_dir       ((class, shard), stream)                   stream ids by class, for listing
//	journal_consumers (stream, consumer) -> seq                  consumer positions
//
// An append first learns the stream's head linearizably under its own epoch (from its last
// successful append, or a SERIAL read, fencing if needed), writes the entries with the writer's
// epoch as their write timestamp, then commits them with one lightweight transaction on the
// stream's row: "SET head = last IF epoch = E AND head = first - 1". Readers never read past the
// committed head. Entries written by a writer that lost its fence stay invisible past the head and
// lose to its successor's writes (a higher epoch is a later timestamp); a writer only ever writes
// above a head it learned under its own epoch, so committed entries are never overwritten. See
// docs/journal.md.
//
// Appends, fences and trims of one stream are serialized within the process; across processes
// the epoch (unique per lock holder) and the lightweight transactions keep one writer.
type CassandraStore struct {
	s          *gocql.Session
	ks         string
	bucketSize uint64
	defaults   levels
	classes    map[string]levels
	// compactClasses are the classes in the compact layout (cassandra_compact.go).
	compactClasses map[string]bool
	// exclusiveClasses are the classes whose ids name their one writer (cassandra_exclusive.go).
	exclusiveClasses map[string]bool
	logger           *slog.Logger

	stripes [256]sync.Mutex
	mu      struct {
		sync.Mutex
		known map[string]Head // heads learned linearizably by this process's appends
	}
}

var _ Store = (*CassandraStore)(nil)

// Tuning of the entry writes: rows per unlogged batch (well under Cassandra 4's 50 KiB batch
// failure threshold for 200-byte entries), batch byte limit, and batches in flight per append.
const (
	writeBatchRows   = 64
	writeBatchBytes  = 40 << 10
	writeConcurrency = 8
	dirShards        = 8
	maxKnownHeads    = 100_000 // heads remembered by this process
	defaultBucket    = 1024
	casRetries       = 10
	// fenceOnEpochAfter: after this many fence attempts lost to appends that moved the head, a
	// fence conditions on the epoch alone (see fenceLocked).
	fenceOnEpochAfter = 2
)

// OpenCassandraStore creates the keyspace (if absent) and the journal's tables, migrating an
// older schema, and returns the store. The session stays owned by the caller.
func OpenCassandraStore(ctx context.Context, c *Cassandra, cfg CassandraConfig, logger *slog.Logger) (*CassandraStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	def, _ := cfg.Consistency.parse()
	st := &CassandraStore{s: c.Session, ks: cfg.Keyspace, defaults: def, classes: map[string]levels{}, compactClasses: map[string]bool{}, exclusiveClasses: map[string]bool{}, logger: logger}
	for _, class := range cfg.ExclusiveClasses {
		st.exclusiveClasses[class] = true
	}
	for _, class := range cfg.CompactClasses {
		st.compactClasses[class] = true
	}
	for class, cc := range cfg.StreamClasses {
		st.classes[class], _ = cc.inherit(cfg.Consistency).parse()
	}
	st.mu.known = map[string]Head{}
	bucket, err := migrate(ctx, c.Session, cfg, logger)
	if err != nil {
		return nil, err
	}
	st.bucketSize = bucket
	return st, nil
}

// Close forgets the learned heads; the session is the caller's to close.
func (s *CassandraStore) Close() error { return nil }

func (s *CassandraStore) levelsOf(stream string) levels {
	if l, ok := s.classes[classOf(stream)]; ok {
		return l
	}
	return s.defaults
}

func (s *CassandraStore) lock(stream string) func() {
	h := fnv.New32a()
	h.Write([]byte(stream))
	m := &s.stripes[h.Sum32()%uint32(len(s.stripes))]
	m.Lock()
	return m.Unlock
}

func (s *CassandraStore) known(stream string) (Head, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.mu.known[stream]
	return h, ok
}

func (s *CassandraStore) setKnown(stream string, h Head, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok {
		if len(s.mu.known) >= maxKnownHeads {
			// Bounded (a stream per REST key makes many): forget an arbitrary half. A forgotten
			// head costs the next append a SERIAL read, never a wrong answer.
			n := 0
			for k := range s.mu.known {
				delete(s.mu.known, k)
				if n++; n >= maxKnownHeads/2 {
					break
				}
			}
		}
		s.mu.known[stream] = h
	} else {
		delete(s.mu.known, stream)
	}
}

// serialHead reads the stream's row with a Paxos read: it sees every committed transaction.
// exists is false for a stream never fenced or written.
func (s *CassandraStore) serialHead(ctx context.Context, stream string) (h Head, exists bool, err error) {
	if s.compact(stream) {
		return s.compactHead(ctx, stream, s.levelsOf(stream).serial)
	}
	if s.exclusive(stream) {
		return s.exclusiveHead(ctx, stream, s.levelsOf(stream).serial)
	}
	var epoch, head, low int64
	err = s.s.Query(`SELECT epoch, head, low FROM `+s.ks+`.journal_streams WHERE stream = ?`, stream).
		WithContext(ctx).Consistency(s.levelsOf(stream).serial).Scan(&epoch, &head, &low)
	if errors.Is(err, gocql.ErrNotFound) {
		return Head{}, false, nil
	}
	if err != nil {
		return Head{}, false, fmt.Errorf("journal: stream %s: read head: %w", stream, err)
	}
	return Head{Epoch: uint64(epoch), Seq: uint64(head), Low: uint64(low)}, true, nil
}

// fenceLocked raises the stream's epoch to epoch with a lightweight transaction and returns the
// head it saw. The caller holds the stream's stripe.
func (s *CassandraStore) fenceLocked(ctx context.Context, stream string, epoch uint64) (Head, error) {
	if s.exclusive(stream) {
		return s.exclusiveFenceLocked(ctx, stream, epoch)
	}
	lv := s.levelsOf(stream)
	table := s.headTable(stream)
	for try := range casRetries {
		h, exists, err := s.serialHead(ctx, stream)
		if err != nil {
			return Head{}, err
		}
		if epoch < h.Epoch {
			return h, fmt.Errorf("%w: stream %s: epoch %d < %d", ErrFenced, stream, epoch, h.Epoch)
		}
		if exists && epoch == h.Epoch {
			return h, nil
		}
		var applied bool
		prev := map[string]any{}
		if exists && try >= fenceOnEpochAfter {
			// Appends of the current epoch keep moving the head between our read and our
			// transaction: fence on the epoch alone. From then on no append of an older epoch
			// can commit, so a serial read after it gives the head the fence left.
			applied, err = s.s.Query(`UPDATE `+s.ks+`.`+table+` SET epoch = ? WHERE stream = ? IF epoch = ?`,
				int64(epoch), stream, int64(h.Epoch)).
				WithContext(ctx).Consistency(lv.write).SerialConsistency(lv.serial).MapScanCAS(prev)
			if err != nil {
				return Head{}, fmt.Errorf("journal: stream %s: fence to %d: %w", stream, epoch, err)
			}
			if !applied {
				continue
			}
			after, _, err := s.serialHead(ctx, stream)
			if err != nil {
				return Head{}, err
			}
			if after.Epoch != epoch {
				return after, fmt.Errorf("%w: stream %s: fenced to %d, then to %d by another", ErrFenced, stream, epoch, after.Epoch)
			}
			return after, nil
		}
		if !exists {
			if err := s.register(ctx, stream); err != nil {
				return Head{}, err
			}
			applied, err = s.s.Query(`INSERT INTO `+s.ks+`.`+table+` (stream, epoch, head, low) VALUES (?, ?, 0, 0) IF NOT EXISTS`, stream, int64(epoch)).
				WithContext(ctx).Consistency(lv.write).SerialConsistency(lv.serial).MapScanCAS(prev)
		} else {
			applied, err = s.s.Query(`UPDATE `+s.ks+`.`+table+` SET epoch = ? WHERE stream = ? IF epoch = ? AND head = ?`,
				int64(epoch), stream, int64(h.Epoch), int64(h.Seq)).
				WithContext(ctx).Consistency(lv.write).SerialConsistency(lv.serial).MapScanCAS(prev)
		}
		if err != nil {
			return Head{}, fmt.Errorf("journal: stream %s: fence to %d: %w", stream, epoch, err)
		}
		if applied {
			h.Epoch = epoch
			return h, nil
		}
		// Someone else moved the row between our read and our transaction: read again.
	}
	return Head{}, fmt.Errorf("journal: stream %s: fence to %d: contention after %d tries", stream, epoch, casRetries)
}

// Append implements Store.
func (s *CassandraStore) Append(ctx context.Context, stream string, epoch uint64, entries []Entry) error {
	return s.append(ctx, stream, epoch, entries, nil)
}

// append is Append; an exclusive stream's append also runs stmts (see AppendWith).
func (s *CassandraStore) append(ctx context.Context, stream string, epoch uint64, entries []Entry, stmts []Statement) error {
	encoded, err := prepareBatch(stream, epoch, entries)
	if err != nil {
		return err
	}
	first, last := entries[0].Seq, entries[len(entries)-1].Seq
	defer s.lock(stream)()
	if s.compact(stream) {
		return s.compactAppendLocked(ctx, stream, epoch, first, last, encoded)
	}

	h, ok := s.known(stream)
	if !ok || h.Epoch != epoch || h.Seq+1 != first {
		// Learn the head linearizably, under our epoch.
		if h, err = s.fenceLocked(ctx, stream, epoch); err != nil {
			s.setKnown(stream, Head{}, false)
			return err
		}
		s.setKnown(stream, h, true)
	}
	if first != h.Seq+1 {
		if err := s.retryOrConflict(ctx, stream, first, last, h, encoded); err != nil || len(stmts) == 0 {
			return err
		}
		// A retry of a batch that committed: its statements took effect with it, or will when
		// Cassandra replays the batch log; running them again (they carry their timestamps)
		// makes them visible now.
		return s.runStatements(ctx, stream, stmts)
	}
	if s.exclusive(stream) {
		if err := s.exclusiveWrite(ctx, stream, first, encoded, stmts); err != nil {
			s.setKnown(stream, Head{}, false)
			return err
		}
		h.Seq = last
		s.setKnown(stream, h, true)
		return nil
	}
	if err := s.writeEntries(ctx, stream, epoch, first, encoded); err != nil {
		return err
	}
	lv := s.levelsOf(stream)
	prev := map[string]any{}
	applied, err := s.s.Query(`UPDATE `+s.ks+`.journal_streams SET head = ? WHERE stream = ? IF epoch = ? AND head = ?`,
		int64(last), stream, int64(epoch), int64(first-1)).
		WithContext(ctx).Consistency(lv.write).SerialConsistency(lv.serial).MapScanCAS(prev)
	if err != nil {
		// Unknown outcome: the caller retries the same batch, which either commits it or finds it.
		s.setKnown(stream, Head{}, false)
		return fmt.Errorf("journal: stream %s: commit %d-%d: %w", stream, first, last, err)
	}
	if !applied {
		s.setKnown(stream, Head{}, false)
		cur, _ := prev["epoch"].(int64)
		if uint64(cur) > epoch {
			return fmt.Errorf("%w: stream %s: epoch %d < %d", ErrFenced, stream, epoch, cur)
		}
		return fmt.Errorf("%w: stream %s: batch %d-%d, head moved to %v", ErrConflict, stream, first, last, prev["head"])
	}
	h.Seq = last
	s.setKnown(stream, h, true)
	return nil
}

// writeEntries writes the entries unconditionally, in unlogged batches of one partition each, with
// the epoch as their write timestamp.
func (s *CassandraStore) writeEntries(ctx context.Context, stream string, epoch, first uint64, encoded [][]byte) error {
	lv := s.levelsOf(stream)
	stmt := `INSERT INTO ` + s.ks + `.journal_entries (stream, bucket, seq, data) VALUES (?, ?, ?, ?) USING TIMESTAMP ?`
	if len(encoded) == 1 {
		err := s.s.Query(stmt, stream, int64(first/s.bucketSize), int64(first), encoded[0], int64(epoch)).
			WithContext(ctx).Consistency(lv.write).Idempotent(true).Exec()
		if err != nil {
			return fmt.Errorf("journal: stream %s: write entry %d: %w", stream, first, err)
		}
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(writeConcurrency)
	for i := 0; i < len(encoded); {
		seq := first + uint64(i)
		bucket := seq / s.bucketSize
		j, size := i, 0
		for j < len(encoded) && j-i < writeBatchRows && (first+uint64(j))/s.bucketSize == bucket && (j == i || size+len(encoded[j]) <= writeBatchBytes) {
			size += len(encoded[j])
			j++
		}
		chunk, from := encoded[i:j], seq
		g.Go(func() error {
			b := s.s.Batch(gocql.UnloggedBatch).WithContext(gctx).Consistency(lv.write)
			for k, data := range chunk {
				b.Query(stmt, stream, int64(bucket), int64(from+uint64(k)), data, int64(epoch))
			}
			if err := b.Exec(); err != nil {
				return fmt.Errorf("journal: stream %s: write entries %d-%d: %w", stream, from, from+uint64(len(chunk))-1, err)
			}
			return nil
		})
		i = j
	}
	return g.Wait()
}

func (s *CassandraStore) sameEntries(ctx context.Context, stream string, first uint64, encoded [][]byte) (bool, error) {
	got, err := s.readRange(ctx, stream, first, first+uint64(len(encoded))-1, s.levelsOf(stream).write)
	if err != nil {
		return false, err
	}
	if len(got) != len(encoded) {
		return false, nil
	}
	for i := range got {
		if !bytes.Equal(got[i], encoded[i]) {
			return false, nil
		}
	}
	return true, nil
}

// readRange returns the encoded entries from..to, stopping before the first missing seq.
func (s *CassandraStore) readRange(ctx context.Context, stream string, from, to uint64, cl gocql.Consistency) ([][]byte, error) {
	if s.compact(stream) {
		return s.compactRange(ctx, stream, from, to, cl)
	}
	out := make([][]byte, 0, to-from+1)
	next := from
	for bucket := from / s.bucketSize; bucket <= to/s.bucketSize && next <= to; bucket++ {
		iter := s.s.Query(`SELECT seq, data FROM `+s.ks+`.`+s.entriesTable(stream)+` WHERE stream = ? AND bucket = ? AND seq >= ? AND seq <= ?`,
			stream, int64(bucket), int64(next), int64(to)).WithContext(ctx).Consistency(cl).PageSize(1000).Iter()
		var seq int64
		var data []byte
		for iter.Scan(&seq, &data) {
			if uint64(seq) != next {
				break // not yet visible here: wait for it, never skip
			}
			out = append(out, data)
			data = nil
			next++
		}
		if err := iter.Close(); err != nil {
			return nil, fmt.Errorf("journal: stream %s: read %d-%d: %w", stream, from, to, err)
		}
		if next <= to && next <= (bucket+1)*s.bucketSize-1 {
			break // a gap inside this bucket
		}
	}
	return out, nil
}

// Read implements Store.
func (s *CassandraStore) Read(ctx context.Context, stream string, from uint64, max int) ([]Entry, error) {
	if err := validateRead(stream, from, max); err != nil {
		return nil, err
	}
	h, err := s.Head(ctx, stream)
	if err != nil {
		return nil, err
	}
	to, ok, err := readBounds(stream, h, from, max)
	if !ok {
		return nil, err
	}
	raw, err := s.readRange(ctx, stream, from, to, s.levelsOf(stream).read)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, len(raw))
	dec := newDecoder()
	for i, data := range raw {
		if out[i], err = dec.decode(data); err != nil {
			return nil, fmt.Errorf("journal: stream %s seq %d: %w", stream, from+uint64(i), err)
		}
		if out[i].Seq != from+uint64(i) {
			return nil, fmt.Errorf("journal: stream %s: entry %d stored at seq %d", stream, out[i].Seq, from+uint64(i))
		}
	}
	return out, nil
}

// Head implements Store. It reads at the class's read consistency: a head at least as recent as
// every append acknowledged at that consistency's reach.
func (s *CassandraStore) Head(ctx context.Context, stream string) (Head, error) {
	if err := ValidateStreamID(stream); err != nil {
		return Head{}, err
	}
	if s.compact(stream) {
		h, _, err := s.compactHead(ctx, stream, s.levelsOf(stream).read)
		return h, err
	}
	if s.exclusive(stream) {
		h, _, err := s.exclusiveHead(ctx, stream, s.levelsOf(stream).read)
		return h, err
	}
	var epoch, head, low int64
	err := s.s.Query(`SELECT epoch, head, low FROM `+s.ks+`.journal_streams WHERE stream = ?`, stream).
		WithContext(ctx).Consistency(s.levelsOf(stream).read).Scan(&epoch, &head, &low)
	if errors.Is(err, gocql.ErrNotFound) {
		return Head{}, nil
	}
	if err != nil {
		return Head{}, fmt.Errorf("journal: stream %s: head: %w", stream, err)
	}
	return Head{Epoch: uint64(epoch), Seq: uint64(head), Low: uint64(low)}, nil
}

// Fence implements Store.
func (s *CassandraStore) Fence(ctx context.Context, stream string, epoch uint64) (Head, error) {
	if err := validateEpoch(stream, epoch); err != nil {
		return Head{}, err
	}
	defer s.lock(stream)()
	h, err := s.fenceLocked(ctx, stream, epoch)
	if err != nil {
		s.setKnown(stream, Head{}, false)
		return h, err
	}
	s.setKnown(stream, h, true)
	return h, nil
}

// ListStreams implements Store: one bounded range read per directory shard, merged.
func (s *CassandraStore) ListStreams(ctx context.Context, prefix, after string, limit int) ([]string, error) {
	if err := validateList(prefix, limit); err != nil {
		return nil, err
	}
	lower := prefix
	if after >= prefix {
		lower = after + "\x00"
	}
	upper := prefix[:len(prefix)-1] + string(prefix[len(prefix)-1]+1)
	class := classOf(prefix)
	if len(class) == len(prefix) && class != "" {
		// A prefix inside the class name (no '/'): the class itself is what is being named.
		return nil, fmt.Errorf("%w: prefix %q must include the stream class and its '/'", ErrInvalid, prefix)
	}
	var all []string
	for shard := range dirShards {
		iter := s.s.Query(`SELECT stream FROM `+s.ks+`.journal_dir WHERE class = ? AND shard = ? AND stream >= ? AND stream < ? LIMIT ?`,
			class, shard, lower, upper, limit).WithContext(ctx).Consistency(s.defaults.read).Iter()
		var id string
		for iter.Scan(&id) {
			all = append(all, id)
		}
		if err := iter.Close(); err != nil {
			return nil, fmt.Errorf("journal: list %s: %w", prefix, err)
		}
	}
	sort.Strings(all)
	if len(all) > limit {
		all = all[:limit]
	}
	return all, nil
}

// SetPosition implements Store.
func (s *CassandraStore) SetPosition(ctx context.Context, consumer, stream string, seq uint64) error {
	if err := validateConsumer(consumer, stream, seq); err != nil {
		return err
	}
	err := s.s.Query(`INSERT INTO `+s.ks+`.journal_consumers (stream, consumer, seq) VALUES (?, ?, ?)`, stream, consumer, int64(seq)).
		WithContext(ctx).Consistency(s.levelsOf(stream).write).Exec()
	if err != nil {
		return fmt.Errorf("journal: stream %s: position of %s: %w", stream, consumer, err)
	}
	return nil
}

// Position implements Store.
func (s *CassandraStore) Position(ctx context.Context, consumer, stream string) (uint64, bool, error) {
	if err := validateConsumer(consumer, stream, 0); err != nil {
		return 0, false, err
	}
	var seq int64
	err := s.s.Query(`SELECT seq FROM `+s.ks+`.journal_consumers WHERE stream = ? AND consumer = ?`, stream, consumer).
		WithContext(ctx).Consistency(s.levelsOf(stream).read).Scan(&seq)
	if errors.Is(err, gocql.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("journal: stream %s: position of %s: %w", stream, consumer, err)
	}
	return uint64(seq), true, nil
}

// Unregister implements Store.
func (s *CassandraStore) Unregister(ctx context.Context, consumer, stream string) error {
	if err := validateConsumer(consumer, stream, 0); err != nil {
		return err
	}
	return s.s.Query(`DELETE FROM `+s.ks+`.journal_consumers WHERE stream = ? AND consumer = ?`, stream, consumer).
		WithContext(ctx).Consistency(s.levelsOf(stream).write).Exec()
}

// Trim implements Store: it raises the stream's trim point with a lightweight transaction, then
// deletes the buckets that lie wholly below it (a partition deletion each). Entries of a partly
// trimmed bucket stay stored but are no longer readable.
func (s *CassandraStore) Trim(ctx context.Context, stream string, below uint64) error {
	if err := ValidateStreamID(stream); err != nil {
		return err
	}
	defer s.lock(stream)()
	lv := s.levelsOf(stream)
	h, exists, err := s.serialHead(ctx, stream)
	if err != nil {
		return err
	}
	if below > h.Seq+1 {
		return fmt.Errorf("%w: stream %s: trim below %d past head %d", ErrInvalid, stream, below, h.Seq)
	}
	if !exists || below <= h.Low+1 {
		return nil
	}
	iter := s.s.Query(`SELECT consumer, seq FROM `+s.ks+`.journal_consumers WHERE stream = ?`, stream).
		WithContext(ctx).Consistency(lv.read).Iter()
	var consumer string
	var pos int64
	for iter.Scan(&consumer, &pos) {
		if uint64(pos)+1 < below {
			_ = iter.Close()
			return fmt.Errorf("%w: stream %s: consumer %s at %d, trim below %d", ErrConsumerBehind, stream, consumer, pos, below)
		}
	}
	if err := iter.Close(); err != nil {
		return fmt.Errorf("journal: stream %s: consumers: %w", stream, err)
	}
	table := s.headTable(stream)
	prev := map[string]any{}
	applied, err := s.s.Query(`UPDATE `+s.ks+`.`+table+` SET low = ? WHERE stream = ? IF epoch = ? AND low = ?`,
		int64(below-1), stream, int64(h.Epoch), int64(h.Low)).
		WithContext(ctx).Consistency(lv.write).SerialConsistency(lv.serial).MapScanCAS(prev)
	if err != nil {
		return fmt.Errorf("journal: stream %s: trim: %w", stream, err)
	}
	if !applied {
		return fmt.Errorf("%w: stream %s: trim raced with a writer (now %v)", ErrConflict, stream, prev)
	}
	s.setKnown(stream, Head{}, false)
	if s.compact(stream) {
		return s.compactDeleteBelow(ctx, stream, h.Low, below)
	}
	// Whole buckets below the new trim point. The tombstone's timestamp is the stream's epoch: it
	// shadows every entry written there, by this writer or an older one.
	for bucket := (h.Low + 1) / s.bucketSize; (bucket+1)*s.bucketSize <= below; bucket++ {
		if err := s.s.Query(`DELETE FROM `+s.ks+`.`+s.entriesTable(stream)+` USING TIMESTAMP ? WHERE stream = ? AND bucket = ?`,
			int64(h.Epoch), stream, int64(bucket)).WithContext(ctx).Consistency(lv.write).Exec(); err != nil {
			return fmt.Errorf("journal: stream %s: delete bucket %d: %w", stream, bucket, err)
		}
	}
	return nil
}

func fnvHash(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// entriesTable is the table holding a bucketed stream's entries.
func (s *CassandraStore) entriesTable(stream string) string {
	if s.exclusive(stream) {
		return "journal_exclusive"
	}
	return "journal_entries"
}

// headTable is the table holding a stream's epoch, head and trim point: its row in
// journal_streams, or the static columns of a compact stream's partition.
func (s *CassandraStore) headTable(stream string) string {
	if s.compact(stream) {
		return "journal_compact"
	}
	return "journal_streams"
}
