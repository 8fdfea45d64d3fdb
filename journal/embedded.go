package journal

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/bits"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// EmbeddedStore is the Store of embedded mode: a Pebble database in a local directory. Appends are
// durable on return (the write-ahead log is synced; concurrent appends share syncs). Appends,
// fences and trims of one stream are serialized by a lock stripe; reads take no lock (a Pebble
// iterator sees a consistent state, and a batch commits entries and head together).
//
// Readers see only durable entries. Pebble makes a batch visible once it is applied, before the
// write-ahead log is synced; so while a stream has appends applied and not yet synced, Read and
// Head stop at the last entry known to be durable (unsynced).
//
// Key layout (stream ids never contain 0x00):
//
//	's' stream                  -> epoch, head, low (3 x uint64 big-endian)
//	'b' stream 0x00 last(8, BE) -> block: the encoded entries of seqs first..last (see appendBlock)
//	'c' stream 0x00 consumer    -> position (uint64 big-endian)
//
// An append stores its entries in blocks, of up to blockEntries entries and about blockBytes
// each, rather than one key per entry: Pebble's work per key (the batch record, the memtable's
// skiplist insert, the flushed table's index) was about a sixth of the capture's CPU per row.
// A block is keyed by its last seq, so the first block at or after blockKey(stream, seq) holds
// seq. Trim deletes the blocks wholly below its mark; the entries of a block it cuts stay
// stored, below the stream's low mark, until the block is trimmed whole. Stores written with a
// key per entry ('e' stream 0x00 seq -> entry) are converted when opened (migrateEntries).
type EmbeddedStore struct {
	db      *pebble.DB
	stripes [256]sync.Mutex

	unsynced struct {
		sync.Mutex
		streams map[string]*unsyncedStream // only streams with appends in flight
	}
}

// unsyncedStream is a stream with appends applied and not yet known to be durable.
type unsyncedStream struct {
	durable  uint64 // the entries up to here are durable: readers see no further
	inFlight int    // appends registered and not yet durable
}

var _ Store = (*EmbeddedStore)(nil)

// embeddedMemTableSize is the size of Pebble's memtables (its default is 4 MB). Every flushed
// table holds the head keys of the streams appended to, so flushed tables overlap one another and
// compactions must merge them: fewer, larger flushes cut the store's CPU per appended entry by
// about a quarter (measured with appends of 1,000 captured rows, before value separation; see
// embeddedOptions), for up to two memtables in memory (Pebble starts small and doubles up to this
// size). Durability is unchanged: every append syncs the write-ahead log.
const embeddedMemTableSize = 16 << 20

// embeddedOptions are the store's Pebble options. Blocks of 1 KiB or more (a batch of a few
// entries and up) are stored in blob files, Pebble's value separation: a compaction rewrites
// their keys and references, not their bytes. The journal's keys are written in order and read
// mostly once, the case value separation is for; without it, compacting the flushed tables (they
// overlap one another: see embeddedMemTableSize) rewrote every entry once more, a sixth of the
// binlog capture's CPU (docs/journal.md). A blob file whose blocks are all trimmed is deleted
// once compactions have dropped their keys (TestEmbeddedBlobFiles); Pebble rewrites blob files
// that still hold live blocks (several streams, trimmed apart) once a fifth of the blob files'
// bytes is garbage, for files at least five minutes old. Value separation needs the store's format
// at FormatValueSeparation: an older store is upgraded when opened, one way (a Pebble release
// without that format cannot open it; the v2.1.7 that go.mod pins opens both).
func embeddedOptions(logger *slog.Logger) *pebble.Options {
	opts := &pebble.Options{
		Logger:             pebbleLogger{logger.With("component", "pebble")},
		MemTableSize:       embeddedMemTableSize,
		FormatMajorVersion: pebble.FormatValueSeparation,
	}
	opts.Experimental.EnableColumnarBlocks = func() bool { return true } // required by value separation
	opts.Experimental.ValueSeparationPolicy = func() pebble.ValueSeparationPolicy {
		return pebble.ValueSeparationPolicy{Enabled: true, MinimumSize: 1 << 10, MaxBlobReferenceDepth: 10,
			RewriteMinimumAge: 5 * time.Minute, TargetGarbageRatio: 0.2}
	}
	return opts
}

// OpenEmbedded opens (creating if needed) the store in dir.
func OpenEmbedded(dir string, logger *slog.Logger) (*EmbeddedStore, error) {
	db, err := pebble.Open(dir, embeddedOptions(logger))
	if err != nil {
		return nil, fmt.Errorf("journal: open embedded store %s: %w", dir, err)
	}
	s := &EmbeddedStore{db: db}
	s.unsynced.streams = map[string]*unsyncedStream{}
	if err := s.migrateEntries(logger); err != nil {
		db.Close()
		return nil, fmt.Errorf("journal: open embedded store %s: %w", dir, err)
	}
	return s, nil
}

// legacyEntryKey is the key of an entry in stores written before blocks: 'e' stream 0x00 seq.
func legacyEntryKey(stream string, seq uint64) []byte {
	k := append([]byte{'e'}, stream...)
	return binary.BigEndian.AppendUint64(append(k, 0), seq)
}

// migrateEntries converts the entries of a store written with a key per entry into blocks. Each
// batch replaces a block's worth of entries by the block, atomically: a crash half-way leaves
// both kinds of keys, and the next open goes on from there.
func (s *EmbeddedStore) migrateEntries(logger *slog.Logger) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'e'}, UpperBound: []byte{'f'}})
	if err != nil {
		return err
	}
	defer it.Close()
	var (
		stream  string
		first   uint64
		encoded [][]byte
		moved   int
	)
	flush := func() error {
		if len(encoded) == 0 {
			return nil
		}
		b := s.db.NewBatch()
		defer b.Close()
		err := blocks(encoded, func(i int, block [][]byte) error {
			return b.Set(blockKey(stream, first+uint64(i+len(block)-1)), appendBlock(nil, block), nil)
		})
		if err == nil {
			err = b.DeleteRange(legacyEntryKey(stream, first), legacyEntryKey(stream, first+uint64(len(encoded))), nil)
		}
		if err == nil {
			err = b.Commit(pebble.Sync)
		}
		if err != nil {
			return fmt.Errorf("converting stream %s entries %d-%d into blocks: %w", stream, first, first+uint64(len(encoded))-1, err)
		}
		moved += len(encoded)
		encoded = encoded[:0]
		return nil
	}
	for ok := it.First(); ok; ok = it.Next() {
		key := it.Key()
		sep := bytes.IndexByte(key, 0)
		if sep < 1 || len(key) != sep+9 {
			return fmt.Errorf("corrupt entry key %x", key)
		}
		st, seq := string(key[1:sep]), binary.BigEndian.Uint64(key[sep+1:])
		if st != stream || seq != first+uint64(len(encoded)) || len(encoded) == blockEntries {
			if err := flush(); err != nil {
				return err
			}
			stream, first = st, seq
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		encoded = append(encoded, bytes.Clone(v))
	}
	if err := it.Error(); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	if moved > 0 {
		logger.Info("journal: converted the embedded store's entries into blocks", "entries", moved)
	}
	return nil
}

// Close closes the database.
func (s *EmbeddedStore) Close() error { return s.db.Close() }

func (s *EmbeddedStore) lock(stream string) func() {
	h := fnv.New32a()
	h.Write([]byte(stream))
	m := &s.stripes[h.Sum32()%uint32(len(s.stripes))]
	m.Lock()
	return m.Unlock
}

func metaKey(stream string) []byte { return append([]byte{'s'}, stream...) }

func blockPrefix(stream string) []byte {
	k := make([]byte, 0, len(stream)+10)
	k = append(k, 'b')
	k = append(k, stream...)
	return append(k, 0)
}

// blockKey is the key of the block whose last entry is seq.
func blockKey(stream string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(blockPrefix(stream), seq)
}

// Blocks hold up to blockEntries entries, and end after the entry that takes them to blockBytes
// or more: reading one entry decodes at most one block's.
const (
	blockEntries = 512
	blockBytes   = 256 << 10
)

// blockSize is the exact size of the block of encoded entries (appendBlock).
func blockSize(encoded [][]byte) int {
	n := uvarintLen(uint64(len(encoded)))
	for _, data := range encoded {
		n += uvarintLen(uint64(len(data))) + len(data)
	}
	return n
}

// uvarintLen is the length of x as binary.AppendUvarint writes it.
func uvarintLen(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

// appendBlock appends the block of encoded entries to dst: their count, then each entry's length
// and bytes (uvarints).
func appendBlock(dst []byte, encoded [][]byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(encoded)))
	for _, data := range encoded {
		dst = binary.AppendUvarint(dst, uint64(len(data)))
		dst = append(dst, data...)
	}
	return dst
}

// blocks splits an append's encoded entries into blocks (blockEntries, blockBytes).
func blocks(encoded [][]byte, fn func(first int, block [][]byte) error) error {
	start, size := 0, 0
	for i, data := range encoded {
		size += len(data)
		if i+1-start == blockEntries || size >= blockBytes || i == len(encoded)-1 {
			if err := fn(start, encoded[start:i+1]); err != nil {
				return err
			}
			start, size = i+1, 0
		}
	}
	return nil
}

var errCorruptBlock = errors.New("corrupt block")

// scanBlock calls fn with the seq and encoding of each entry of the block v whose last entry is
// last, in order, until fn returns false.
func scanBlock(v []byte, last uint64, fn func(seq uint64, data []byte) bool) error {
	count, n := binary.Uvarint(v)
	if n <= 0 || count == 0 || count > last {
		return errCorruptBlock
	}
	v = v[n:]
	for seq := last - count + 1; seq <= last; seq++ {
		size, n := binary.Uvarint(v)
		if n <= 0 || size > uint64(len(v)-n) {
			return errCorruptBlock
		}
		data := v[n : n+int(size) : n+int(size)]
		v = v[n+int(size):]
		if !fn(seq, data) {
			return nil
		}
	}
	if len(v) != 0 {
		return errCorruptBlock
	}
	return nil
}

// scan calls fn with the seq and encoding of the stored entries of stream from seq from to seq
// to, in order, until fn returns false. The encodings are valid only during the call.
func (s *EmbeddedStore) scan(ctx context.Context, stream string, from, to uint64, fn func(seq uint64, data []byte) bool) error {
	prefix := blockPrefix(stream)
	upper := bytes.Clone(prefix)
	upper[len(upper)-1]++
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: blockKey(stream, from), UpperBound: upper})
	if err != nil {
		return fmt.Errorf("journal: stream %s: %w", stream, err)
	}
	defer it.Close()
	more := true
	for ok := it.First(); ok && more; ok = it.Next() {
		key := it.Key()
		if len(key) != len(prefix)+8 {
			return fmt.Errorf("journal: stream %s: corrupt block key %x", stream, key)
		}
		last := binary.BigEndian.Uint64(key[len(prefix):])
		v, err := it.ValueAndErr()
		if err != nil {
			return fmt.Errorf("journal: stream %s: %w", stream, err)
		}
		err = scanBlock(v, last, func(seq uint64, data []byte) bool {
			if seq < from {
				return true
			}
			if seq > to {
				more = false
				return false
			}
			more = fn(seq, data)
			return more
		})
		if err != nil {
			return fmt.Errorf("journal: stream %s: block ending at %d: %w", stream, last, err)
		}
		more = more && last < to
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("journal: stream %s: %w", stream, err)
	}
	return nil
}

func consumerKey(stream, consumer string) []byte {
	k := append([]byte{'c'}, stream...)
	k = append(k, 0)
	return append(k, consumer...)
}

func (s *EmbeddedStore) getMeta(stream string) (Head, error) {
	v, closer, err := s.db.Get(metaKey(stream))
	if errors.Is(err, pebble.ErrNotFound) {
		return Head{}, nil
	}
	if err != nil {
		return Head{}, fmt.Errorf("journal: stream %s: %w", stream, err)
	}
	defer closer.Close()
	if len(v) != 24 {
		return Head{}, fmt.Errorf("journal: stream %s: corrupt head record", stream)
	}
	return Head{
		Epoch: binary.BigEndian.Uint64(v),
		Seq:   binary.BigEndian.Uint64(v[8:]),
		Low:   binary.BigEndian.Uint64(v[16:]),
	}, nil
}

func encodeMeta(h Head) []byte {
	v := make([]byte, 0, 24)
	v = binary.BigEndian.AppendUint64(v, h.Epoch)
	v = binary.BigEndian.AppendUint64(v, h.Seq)
	return binary.BigEndian.AppendUint64(v, h.Low)
}

// encodeBuffers recycles the encoding buffers of appends (Pebble's batch copies what it is given).
var encodeBuffers = sync.Pool{New: func() any { return new(encodeBuffer) }}

// maxPooledEncoding bounds the buffers kept for reuse: a rare huge batch is not held forever.
const maxPooledEncoding = 4 << 20

// Append implements Store.
func (s *EmbeddedStore) Append(ctx context.Context, stream string, epoch uint64, entries []Entry) error {
	wait, err := s.append(ctx, stream, epoch, entries)
	if err != nil {
		return err
	}
	return wait()
}

// AppendNoWait is Append in two steps, so that a writer can apply its next batch while this one's
// sync is under way: it returns once the batch is applied to the stream (after every earlier
// append of the stream, before every later one), and wait, which must be called, returns once the
// batch is durable. Readers see the entries only after wait has returned (and once every earlier
// append of the stream is durable too).
func (s *EmbeddedStore) AppendNoWait(ctx context.Context, stream string, epoch uint64, entries []Entry) (wait func() error, err error) {
	return s.append(ctx, stream, epoch, entries)
}

// append applies a batch and returns the wait for its sync (Append and AppendNoWait).
func (s *EmbeddedStore) append(ctx context.Context, stream string, epoch uint64, entries []Entry) (func() error, error) {
	buf := encodeBuffers.Get().(*encodeBuffer)
	defer func() {
		if cap(buf.data) <= maxPooledEncoding {
			clear(buf.encoded[:cap(buf.encoded)]) // no reference to a replaced buffer stays
			encodeBuffers.Put(buf)
		}
	}()
	encoded, err := buf.prepare(stream, epoch, entries)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	first, last := entries[0].Seq, entries[len(entries)-1].Seq
	defer s.lock(stream)()
	h, err := s.getMeta(stream)
	if err != nil {
		return nil, err
	}
	if epoch < h.Epoch {
		return nil, fmt.Errorf("%w: stream %s: epoch %d < %d", ErrFenced, stream, epoch, h.Epoch)
	}
	if first != h.Seq+1 {
		if last <= h.Seq && first > h.Low && epoch == h.Epoch {
			same, err := s.sameEntries(stream, first, encoded)
			if err != nil {
				return nil, err
			}
			if same {
				// A retry of a batch that is already stored, and maybe not yet synced: a sync of
				// the log makes it durable with everything before it.
				return func() error {
					if err := s.db.LogData(nil, pebble.Sync); err != nil {
						return fmt.Errorf("journal: stream %s: sync: %w", stream, err)
					}
					s.durableTo(stream, last, false)
					return nil
				}, nil
			}
		}
		return nil, fmt.Errorf("%w: stream %s: batch %d-%d, head %d", ErrConflict, stream, first, last, h.Seq)
	}
	// Room for every record at once: the entries, and per block its kind, key, lengths and count
	// (at most one block per blockEntries entries or blockBytes bytes, plus the last); the head.
	prefix := blockPrefix(stream)
	all := blockSize(encoded)
	maxBlocks := len(encoded)/blockEntries + all/blockBytes + 1
	perBlock := 1 + len(prefix) + 8 + 3*binary.MaxVarintLen32
	b := s.db.NewBatchWithSize(all + maxBlocks*perBlock + 12 + 64 + len(metaKey(stream)))
	err = blocks(encoded, func(i int, block [][]byte) error {
		// Written in place, at the size reserved.
		op := b.SetDeferred(len(prefix)+8, blockSize(block))
		copy(op.Key, prefix)
		binary.BigEndian.PutUint64(op.Key[len(prefix):], first+uint64(i+len(block)-1)) // = blockKey(stream, last)
		if n := len(appendBlock(op.Value[:0], block)); n != len(op.Value) {
			return fmt.Errorf("block of %d bytes where %d were reserved", n, len(op.Value))
		}
		return op.Finish()
	})
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("journal: stream %s: %w", stream, err)
	}
	h.Seq, h.Epoch = last, epoch
	if err := b.Set(metaKey(stream), encodeMeta(h), nil); err != nil {
		b.Close()
		return nil, fmt.Errorf("journal: stream %s: %w", stream, err)
	}
	// Registered before the commit makes the entries visible to Pebble's readers.
	s.registerUnsynced(stream, first-1)
	// Pebble's ApplyNoSyncWait (marked experimental, used by CockroachDB for its Raft log) applies
	// the batch and leaves the wait for the log sync to SyncWait: Append waits at once, after the
	// stream's lock is released; AppendNoWait leaves it to its caller.
	if err := s.db.ApplyNoSyncWait(b, pebble.Sync); err != nil {
		s.durableTo(stream, 0, true) // nothing was applied: the mark stays where it is
		b.Close()
		return nil, fmt.Errorf("journal: stream %s: append %d-%d: %w", stream, first, last, err)
	}
	var once sync.Once
	var syncErr error
	wait := func() error {
		once.Do(func() {
			defer b.Close()
			if syncErr = b.SyncWait(); syncErr != nil {
				// Pebble treats a failed log sync as fatal (pebbleLogger.Fatalf panics); the
				// entries stay invisible if it ever returns.
				syncErr = fmt.Errorf("journal: stream %s: append %d-%d: sync: %w", stream, first, last, syncErr)
				return
			}
			s.durableTo(stream, last, true)
		})
		return syncErr
	}
	return wait, nil
}

// registerUnsynced records an append of stream in flight, whose entries after durable (the head
// before it) readers must not see until it is synced.
func (s *EmbeddedStore) registerUnsynced(stream string, durable uint64) {
	s.unsynced.Lock()
	defer s.unsynced.Unlock()
	u := s.unsynced.streams[stream]
	if u == nil {
		u = &unsyncedStream{durable: durable}
		s.unsynced.streams[stream] = u
	}
	u.inFlight++
}

// durableTo records that the entries of stream up to seq are durable, and if done that one append
// in flight has ended. A log sync makes everything before it durable, so the mark only moves up.
func (s *EmbeddedStore) durableTo(stream string, seq uint64, done bool) {
	s.unsynced.Lock()
	defer s.unsynced.Unlock()
	u := s.unsynced.streams[stream]
	if u == nil {
		return // nothing in flight: everything is visible
	}
	u.durable = max(u.durable, seq)
	if done {
		if u.inFlight--; u.inFlight == 0 {
			delete(s.unsynced.streams, stream) // everything applied is durable
		}
	}
}

// visible returns h with its head lowered to the last durable entry, if appends of stream are in
// flight. h must have been read before the call.
func (s *EmbeddedStore) visible(stream string, h Head) Head {
	s.unsynced.Lock()
	defer s.unsynced.Unlock()
	if u := s.unsynced.streams[stream]; u != nil && u.durable < h.Seq {
		h.Seq = max(u.durable, h.Low)
	}
	return h
}

func (s *EmbeddedStore) sameEntries(stream string, first uint64, encoded [][]byte) (bool, error) {
	same, want := true, first
	err := s.scan(context.Background(), stream, first, first+uint64(len(encoded))-1, func(seq uint64, data []byte) bool {
		same = seq == want && bytes.Equal(data, encoded[seq-first])
		want++
		return same
	})
	return same && want == first+uint64(len(encoded)), err
}

// Read implements Store.
func (s *EmbeddedStore) Read(ctx context.Context, stream string, from uint64, max int) ([]Entry, error) {
	if err := validateRead(stream, from, max); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := s.getMeta(stream)
	if err != nil {
		return nil, err
	}
	to, ok, err := readBounds(stream, s.visible(stream, h), from, max)
	if !ok {
		return nil, err
	}
	out := make([]Entry, 0, to-from+1)
	want := from
	dec := newDecoder()
	var decErr error
	err = s.scan(ctx, stream, from, to, func(seq uint64, data []byte) bool {
		e, err := dec.decode(data)
		switch {
		case err != nil:
			decErr = fmt.Errorf("journal: stream %s seq %d: %w", stream, seq, err)
		case seq != want || e.Seq != want:
			decErr = fmt.Errorf("journal: stream %s: entry %d stored as seq %d where %d belongs", stream, e.Seq, seq, want)
		default:
			out = append(out, e)
			want++
		}
		return decErr == nil
	})
	if err = cmp.Or(err, decErr); err != nil {
		return nil, err
	}
	return out, nil
}

// Head implements Store.
func (s *EmbeddedStore) Head(ctx context.Context, stream string) (Head, error) {
	if err := ValidateStreamID(stream); err != nil {
		return Head{}, err
	}
	h, err := s.getMeta(stream)
	if err != nil {
		return Head{}, err
	}
	return s.visible(stream, h), nil
}

// Fence implements Store.
func (s *EmbeddedStore) Fence(ctx context.Context, stream string, epoch uint64) (Head, error) {
	if err := validateEpoch(stream, epoch); err != nil {
		return Head{}, err
	}
	defer s.lock(stream)()
	h, err := s.getMeta(stream)
	if err != nil {
		return Head{}, err
	}
	switch {
	case epoch < h.Epoch:
		return h, fmt.Errorf("%w: stream %s: epoch %d < %d", ErrFenced, stream, epoch, h.Epoch)
	case epoch == h.Epoch:
		return h, nil
	}
	h.Epoch = epoch
	if err := s.db.Set(metaKey(stream), encodeMeta(h), pebble.Sync); err != nil {
		return Head{}, fmt.Errorf("journal: stream %s: fence: %w", stream, err)
	}
	return h, nil
}

// ListStreams implements Store.
func (s *EmbeddedStore) ListStreams(ctx context.Context, prefix, after string, limit int) ([]string, error) {
	if err := validateList(prefix, limit); err != nil {
		return nil, err
	}
	lower := metaKey(prefix)
	if after >= prefix {
		lower = append(metaKey(after), 0) // strictly after
	}
	upper := metaKey(prefix)
	upper[len(upper)-1]++ // printable ASCII: no overflow
	if bytes.Compare(lower, upper) >= 0 {
		return nil, nil
	}
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []string
	for ok := it.First(); ok && len(out) < limit; ok = it.Next() {
		out = append(out, string(it.Key()[1:]))
	}
	return out, it.Error()
}

// SetPosition implements Store.
func (s *EmbeddedStore) SetPosition(ctx context.Context, consumer, stream string, seq uint64) error {
	if err := validateConsumer(consumer, stream, seq); err != nil {
		return err
	}
	return s.db.Set(consumerKey(stream, consumer), binary.BigEndian.AppendUint64(nil, seq), pebble.Sync)
}

// Position implements Store.
func (s *EmbeddedStore) Position(ctx context.Context, consumer, stream string) (uint64, bool, error) {
	if err := validateConsumer(consumer, stream, 0); err != nil {
		return 0, false, err
	}
	v, closer, err := s.db.Get(consumerKey(stream, consumer))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer closer.Close()
	return binary.BigEndian.Uint64(v), true, nil
}

// Unregister implements Store.
func (s *EmbeddedStore) Unregister(ctx context.Context, consumer, stream string) error {
	if err := validateConsumer(consumer, stream, 0); err != nil {
		return err
	}
	return s.db.Delete(consumerKey(stream, consumer), pebble.Sync)
}

// Trim implements Store.
func (s *EmbeddedStore) Trim(ctx context.Context, stream string, below uint64) error {
	if err := ValidateStreamID(stream); err != nil {
		return err
	}
	defer s.lock(stream)()
	h, err := s.getMeta(stream)
	if err != nil {
		return err
	}
	if head := s.visible(stream, h).Seq; below > head+1 {
		return fmt.Errorf("%w: stream %s: trim below %d past head %d", ErrInvalid, stream, below, head)
	}
	if below <= h.Low+1 {
		return nil
	}
	if err := s.checkConsumers(stream, below); err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	// The blocks whose last entry is below the mark: a block that holds the mark stays.
	if err := b.DeleteRange(blockKey(stream, h.Low+1), blockKey(stream, below), nil); err != nil {
		return err
	}
	h.Low = below - 1
	if err := b.Set(metaKey(stream), encodeMeta(h), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("journal: stream %s: trim: %w", stream, err)
	}
	return nil
}

func (s *EmbeddedStore) checkConsumers(stream string, below uint64) error {
	prefix := consumerKey(stream, "")
	upper := append(bytes.Clone(prefix[:len(prefix)-1]), 1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upper})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		if pos := binary.BigEndian.Uint64(it.Value()); pos+1 < below {
			return fmt.Errorf("%w: stream %s: consumer %s at %d, trim below %d", ErrConsumerBehind, stream, it.Key()[len(prefix):], pos, below)
		}
	}
	return it.Error()
}

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any)  { p.l.Debug(fmt.Sprintf(format, args...)) }
func (p pebbleLogger) Errorf(format string, args ...any) { p.l.Error(fmt.Sprintf(format, args...)) }

// Fatalf must not return (Pebble's contract): the store is in a state it cannot continue from.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg)
	panic("pebble: " + msg)
}
