package journal

import (
	"context"
	"errors"
	"fmt"
	"math"
)

// Store holds streams. Implementations: the Cassandra store (distributed mode) and the embedded
// Pebble store; both pass the conformance suite in store_conformance_test.go. All methods are safe
// for concurrent use. Errors wrap the sentinels below with the stream (and seq) they concern.
type Store interface {
	// Append appends entries to stream under epoch, atomically: all or none. Entries carry
	// contiguous seqs starting at the stream's head + 1 (a new stream starts at 1); their Stream
	// field is empty or equal to stream, and their Epoch is set to epoch. An epoch below the
	// stream's is refused with ErrFenced; a higher one fences the stream to it first. Appending a
	// batch that is already in the stream, with the same epoch and contents, succeeds without
	// change (a retry); any other batch that does not start at head + 1 fails with ErrConflict.
	// Bad input fails with ErrInvalid and writes nothing. On return the entries are durable at the
	// store's configured consistency.
	Append(ctx context.Context, stream string, epoch uint64, entries []Entry) error

	// Read returns up to max (at most MaxReadEntries) entries of stream from seq from on, in seq
	// order and without gaps; fewer (possibly none) when it reaches the head, or an entry below the
	// head is not yet visible at this replica (it is waited for, never skipped). Reading below the
	// trimmed part fails with ErrTrimmed.
	Read(ctx context.Context, stream string, from uint64, max int) ([]Entry, error)

	// Head returns the stream's last seq, epoch and trim point. A stream never written has a zero
	// Head.
	Head(ctx context.Context, stream string) (Head, error)

	// Fence raises the stream's epoch to epoch (creating the stream if needed) and returns the
	// head at that moment: the point a new writer catches up to before it appends. Fencing to the
	// current epoch is a no-op; to a lower one fails with ErrFenced.
	Fence(ctx context.Context, stream string, epoch uint64) (Head, error)

	// ListStreams returns, in order, up to limit stream ids that start with prefix and sort after
	// after (for paging; "" to start). The prefix must include the stream's class: the part up to
	// and including the first '/'.
	ListStreams(ctx context.Context, prefix, after string, limit int) ([]string, error)

	// SetPosition records that consumer has processed stream up to seq, registering the consumer
	// for the stream if needed. Trim never removes entries a registered consumer has not passed.
	SetPosition(ctx context.Context, consumer, stream string, seq uint64) error
	// Position returns consumer's position in stream, and false if it is not registered.
	Position(ctx context.Context, consumer, stream string) (uint64, bool, error)
	// Unregister removes consumer from stream's consumers.
	Unregister(ctx context.Context, consumer, stream string) error

	// Trim removes the entries of stream below seq below. Every registered consumer must have
	// processed up to below - 1 (else ErrConsumerBehind), and below may not exceed head + 1.
	// Trimming to a point at or below the current trim point is a no-op.
	Trim(ctx context.Context, stream string, below uint64) error

	// Close releases the store's resources; the store is unusable afterwards.
	Close() error
}

// Head describes a stream's state.
type Head struct {
	Seq   uint64 // last appended seq; 0 for an empty stream
	Epoch uint64 // current (fenced) epoch
	Low   uint64 // entries with seq <= Low were trimmed; Read starts at Low + 1 at the earliest
}

// Errors of Store methods. Match with errors.Is.
var (
	// ErrInvalid: bad input (stream id, epoch, batch shape or size). Nothing was written.
	ErrInvalid = errors.New("journal: invalid argument")
	// ErrFenced: the writer's epoch is older than the stream's. Nothing was written.
	ErrFenced = errors.New("journal: epoch fenced by a newer writer")
	// ErrConflict: the batch does not start at head + 1 and is not a retry of what is stored.
	ErrConflict = errors.New("journal: batch does not follow the stream's head")
	// ErrTrimmed: the requested entries were trimmed.
	ErrTrimmed = errors.New("journal: entries trimmed")
	// ErrRejected: Cassandra refused a batch that carried statements of the caller's
	// (CassandraStore.AppendWith) as invalid. Nothing was written.
	ErrRejected = errors.New("journal: batch rejected")
	// ErrConsumerBehind: a registered consumer has not passed the trim point.
	ErrConsumerBehind = errors.New("journal: a consumer has not passed the trim point")
)

// Limits that bound every batch and read (invariant 7).
const (
	MaxStreamLen    = 512
	MaxNameLen      = 256           // consumer names
	MaxEntryBytes   = 1 << 20       // one encoded entry
	MaxBatchEntries = 10_000        // entries in one Append
	MaxBatchBytes   = 32 << 20      // encoded entries in one Append
	MaxReadEntries  = 10_000        // entries in one Read
	MaxListStreams  = 10_000        // ids in one ListStreams
	maxSeq          = math.MaxInt64 // seqs and epochs are stored as signed 64-bit integers
)

// ValidateStreamID checks a stream id: 1 to MaxStreamLen printable ASCII characters without
// spaces, with a class (the part before the first '/') that is not empty.
func ValidateStreamID(stream string) error {
	if stream == "" {
		return fmt.Errorf("%w: empty stream id", ErrInvalid)
	}
	if len(stream) > MaxStreamLen {
		return fmt.Errorf("%w: stream id of %d bytes (max %d)", ErrInvalid, len(stream), MaxStreamLen)
	}
	for i := 0; i < len(stream); i++ {
		if c := stream[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: stream id %q has byte 0x%02x at %d (printable ASCII without spaces only)", ErrInvalid, stream, c, i)
		}
	}
	if stream[0] == '/' {
		return fmt.Errorf("%w: stream id %q has an empty class", ErrInvalid, stream)
	}
	return nil
}

// validateConsumer checks the arguments of the consumer position methods.
func validateConsumer(consumer, stream string, seq uint64) error {
	if err := ValidateStreamID(stream); err != nil {
		return err
	}
	if consumer == "" || len(consumer) > MaxNameLen {
		return fmt.Errorf("%w: consumer name must be 1-%d bytes", ErrInvalid, MaxNameLen)
	}
	for i := 0; i < len(consumer); i++ {
		if c := consumer[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: consumer name %q: printable ASCII without spaces only", ErrInvalid, consumer)
		}
	}
	if seq > maxSeq {
		return fmt.Errorf("%w: position %d out of range", ErrInvalid, seq)
	}
	return nil
}

// classOf returns the class of a valid stream id: the part before the first '/', or all of it.
func classOf(stream string) string {
	for i := 0; i < len(stream); i++ {
		if stream[i] == '/' {
			return stream[:i]
		}
	}
	return stream
}

// prepareBatch validates an Append and returns the encoded entries (with Stream and Epoch set).
// It is shared by every implementation so that they refuse exactly the same input.
func prepareBatch(stream string, epoch uint64, entries []Entry) ([][]byte, error) {
	var buf encodeBuffer
	return buf.prepare(stream, epoch, entries)
}

// encodeBuffer holds the encodings of a batch: one buffer for all of them, reusable from one
// batch to the next (see EmbeddedStore.Append).
type encodeBuffer struct {
	data    []byte
	encoded [][]byte
}

// prepare is prepareBatch encoding into b: the result is valid until b's next use.
func (b *encodeBuffer) prepare(stream string, epoch uint64, entries []Entry) ([][]byte, error) {
	if err := ValidateStreamID(stream); err != nil {
		return nil, err
	}
	if epoch == 0 || epoch > maxSeq {
		return nil, fmt.Errorf("%w: stream %s: epoch %d out of range 1..2^63-1", ErrInvalid, stream, epoch)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("%w: stream %s: empty batch", ErrInvalid, stream)
	}
	if len(entries) > MaxBatchEntries {
		return nil, fmt.Errorf("%w: stream %s: batch of %d entries (max %d)", ErrInvalid, stream, len(entries), MaxBatchEntries)
	}
	first := entries[0].Seq
	if first == 0 || first > maxSeq-uint64(len(entries)) {
		return nil, fmt.Errorf("%w: stream %s: first seq %d out of range", ErrInvalid, stream, first)
	}
	if cap(b.encoded) < len(entries) {
		b.encoded = make([][]byte, len(entries))
	}
	out := b.encoded[:len(entries)]
	data := b.data[:0]
	for i := range entries {
		e := entries[i] // a copy: the caller's entries are not modified
		if e.Seq != first+uint64(i) {
			return nil, fmt.Errorf("%w: stream %s: seq gap in batch: entry %d has seq %d, want %d", ErrInvalid, stream, i, e.Seq, first+uint64(i))
		}
		if e.Stream != "" && e.Stream != stream {
			return nil, fmt.Errorf("%w: stream %s: entry %d belongs to stream %q", ErrInvalid, stream, i, e.Stream)
		}
		if e.Op == OpInvalid || e.Op > opMax {
			return nil, fmt.Errorf("%w: stream %s seq %d: invalid op %d", ErrInvalid, stream, e.Seq, e.Op)
		}
		e.Stream, e.Epoch = stream, epoch
		start := len(data)
		data = AppendEncoded(data, &e)
		if n := len(data) - start; n > MaxEntryBytes {
			return nil, fmt.Errorf("%w: stream %s seq %d: entry of %d bytes (max %d)", ErrInvalid, stream, e.Seq, n, MaxEntryBytes)
		}
		if len(data) > MaxBatchBytes {
			return nil, fmt.Errorf("%w: stream %s: batch over %d bytes", ErrInvalid, stream, MaxBatchBytes)
		}
		out[i] = data[start:len(data):len(data)] // re-sliced below if data moves
	}
	b.data = data
	// data may have moved as it grew: point every encoding into its final place.
	start := 0
	for i, enc := range out {
		out[i] = data[start : start+len(enc) : start+len(enc)]
		start += len(enc)
	}
	return out, nil
}

func validateRead(stream string, from uint64, max int) error {
	if err := ValidateStreamID(stream); err != nil {
		return err
	}
	if from == 0 || from > maxSeq {
		return fmt.Errorf("%w: stream %s: read from seq %d (seqs start at 1)", ErrInvalid, stream, from)
	}
	if max <= 0 || max > MaxReadEntries {
		return fmt.Errorf("%w: stream %s: read of %d entries (1..%d)", ErrInvalid, stream, max, MaxReadEntries)
	}
	return nil
}

// readBounds decides, for every implementation alike, what a Read from seq from of at most max
// entries covers given the stream's head: the last seq to read, or ok false when there is nothing
// (from is past the head), or ErrTrimmed.
func readBounds(stream string, h Head, from uint64, max int) (to uint64, ok bool, err error) {
	if from <= h.Low {
		return 0, false, fmt.Errorf("%w: stream %s: seq %d (trimmed below %d)", ErrTrimmed, stream, from, h.Low+1)
	}
	if from > h.Seq {
		return 0, false, nil
	}
	return min(h.Seq, from+uint64(max)-1), true, nil
}

func validateEpoch(stream string, epoch uint64) error {
	if err := ValidateStreamID(stream); err != nil {
		return err
	}
	if epoch == 0 || epoch > maxSeq {
		return fmt.Errorf("%w: stream %s: epoch %d out of range 1..2^63-1", ErrInvalid, stream, epoch)
	}
	return nil
}

func validateList(prefix string, limit int) error {
	if err := ValidateStreamID(prefix); err != nil {
		return fmt.Errorf("prefix: %w", err)
	}
	if limit <= 0 || limit > MaxListStreams {
		return fmt.Errorf("%w: list of %d streams (1..%d)", ErrInvalid, limit, MaxListStreams)
	}
	return nil
}

// Reader follows one stream from a seq, reading bounded batches. It is not safe for concurrent use.
type Reader struct {
	store  Store
	stream string
	next   uint64
	batch  int
	buf    []Entry
}

// NewReader returns a reader whose first entry will be seq from (at least 1), reading batch
// entries at a time (at most MaxReadEntries).
func NewReader(s Store, stream string, from uint64, batch int) *Reader {
	if from == 0 {
		from = 1
	}
	batch = min(max(batch, 1), MaxReadEntries)
	return &Reader{store: s, stream: stream, next: from, batch: batch}
}

// Next returns the next entry and true, or false when the reader has caught up with what is
// visible (call again later: nothing is skipped).
func (r *Reader) Next(ctx context.Context) (Entry, bool, error) {
	if len(r.buf) == 0 {
		es, err := r.store.Read(ctx, r.stream, r.next, r.batch)
		if err != nil {
			return Entry{}, false, err
		}
		if len(es) == 0 {
			return Entry{}, false, nil
		}
		r.buf = es
	}
	e := r.buf[0]
	r.buf[0] = Entry{} // let the entry's memory go once the caller drops it
	r.buf = r.buf[1:]
	r.next = e.Seq + 1
	return e, true, nil
}

// NextSeq is the seq of the entry Next returns next.
func (r *Reader) NextSeq() uint64 { return r.next }
