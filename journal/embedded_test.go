package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/musicd/musicd/internal/testenv"
)

func openEmbedded(t testing.TB, dir string) *EmbeddedStore {
	t.Helper()
	s, err := OpenEmbedded(dir, discard())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEmbeddedConformance(t *testing.T) {
	dir := t.TempDir()
	var current Store
	runConformance(t, harness{
		store: func(t *testing.T) Store {
			current = openEmbedded(t, dir)
			return current
		},
		peer: func(t *testing.T) Store { return current }, // one process owns the directory
		reopen: func(t *testing.T, s Store) Store {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			current = openEmbedded(t, dir)
			return current
		},
	})
	if err := current.Close(); err != nil {
		t.Fatal(err)
	}
}

// AppendNoWait applies batches in order without waiting for their sync; readers see them only
// once their wait (or a later one's) has returned.
func TestEmbeddedAppendNoWait(t *testing.T) {
	s := openEmbedded(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	const stream = "test/nowait"
	if err := s.Append(ctx, stream, 1, mkEntries(1, 5, 10)); err != nil {
		t.Fatal(err)
	}
	wait1, err := s.AppendNoWait(ctx, stream, 1, mkEntries(6, 5, 10))
	if err != nil {
		t.Fatal(err)
	}
	wait2, err := s.AppendNoWait(ctx, stream, 1, mkEntries(11, 5, 10)) // applies after the first
	if err != nil {
		t.Fatal(err)
	}
	if h := mustHead(t, s, stream); h.Seq != 5 {
		t.Fatalf("head before any wait: %d, want 5", h.Seq)
	}
	if es, err := s.Read(ctx, stream, 6, 10); err != nil || len(es) != 0 {
		t.Fatalf("read of unsynced entries: %d entries, %v", len(es), err)
	}
	if err := s.Trim(ctx, stream, 7); !errors.Is(err, ErrInvalid) {
		t.Fatalf("trim past the durable head: %v", err)
	}
	// A batch that does not follow the applied head conflicts, even though readers see less.
	if err := s.Append(ctx, stream, 1, mkEntries(6, 1, 11)); !errors.Is(err, ErrConflict) {
		t.Fatalf("append at the durable head: %v", err)
	}
	// The second batch's sync covers the first.
	if err := wait2(); err != nil {
		t.Fatal(err)
	}
	if h := mustHead(t, s, stream); h.Seq != 15 {
		t.Fatalf("head after the second wait: %d, want 15", h.Seq)
	}
	checkStream(t, s, stream, 1, 15)
	if err := wait1(); err != nil {
		t.Fatal(err)
	}
	if err := wait1(); err != nil { // waiting again is harmless
		t.Fatal(err)
	}
	// A retry of a stored batch, and Append after AppendNoWait.
	wait3, err := s.AppendNoWait(ctx, stream, 1, mkEntries(11, 5, 10))
	if err != nil {
		t.Fatal(err)
	}
	if err := wait3(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendNoWait(ctx, stream, 1, mkEntries(16, 5, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, stream, 1, mkEntries(21, 5, 10)); err != nil {
		t.Fatal(err)
	}
	if h := mustHead(t, s, stream); h.Seq != 25 {
		t.Fatalf("head after a synced append: %d, want 25", h.Seq)
	}
	checkStream(t, s, stream, 1, 25)
	// Bad input fails before anything is applied.
	if _, err := s.AppendNoWait(ctx, stream, 0, mkEntries(26, 1, 10)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("epoch 0: %v", err)
	}
	if h := mustHead(t, s, stream); h.Seq != 25 {
		t.Fatalf("head after a refused append: %d", h.Seq)
	}
}

// blockKeys lists the last seqs of stream's blocks.
func blockKeys(t *testing.T, s *EmbeddedStore, stream string) []uint64 {
	t.Helper()
	prefix := blockPrefix(stream)
	upper := append(bytes.Clone(prefix[:len(prefix)-1]), 1)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upper})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var lasts []uint64
	for ok := it.First(); ok; ok = it.Next() {
		lasts = append(lasts, binary.BigEndian.Uint64(it.Key()[len(prefix):]))
	}
	return lasts
}

// checkRead reads stream from seq from to its head, in reads of at most max entries, and checks
// that the entries are those of mkEntries(from, ..., size).
func checkRead(t *testing.T, s Store, stream string, from uint64, max, size int) {
	t.Helper()
	ctx := context.Background()
	head := mustHead(t, s, stream).Seq
	for seq := from; seq <= head; {
		got, err := s.Read(ctx, stream, seq, max)
		if err != nil {
			t.Fatalf("read from %d: %v", seq, err)
		}
		if want := min(max, int(head-seq+1)); len(got) != want {
			t.Fatalf("read from %d: %d entries, want %d", seq, len(got), want)
		}
		want := mkEntries(seq, len(got), size)
		for i := range got {
			if got[i].Seq != want[i].Seq || !bytes.Equal(got[i].After[1].Value.Bytes, want[i].After[1].Value.Bytes) {
				t.Fatalf("read from %d: entry %d is %d %q, want %d", seq, i, got[i].Seq, got[i].After[1].Value.Bytes[:8], want[i].Seq)
			}
		}
		seq += uint64(len(got))
	}
}

// An append is stored in blocks of at most blockEntries entries and about blockBytes; reads
// starting anywhere in a block, retries of a stored append, and trims inside a block see entries
// exactly as appended.
func TestEmbeddedBlocks(t *testing.T) {
	s := openEmbedded(t, t.TempDir())
	defer s.Close()
	ctx := context.Background()
	const stream = "test/blocks"
	if err := s.Append(ctx, stream, 1, mkEntries(1, 1300, 20)); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, stream, 1, mkEntries(1301, 3, 20)); err != nil {
		t.Fatal(err)
	}
	if got, want := blockKeys(t, s, stream), []uint64{512, 1024, 1300, 1303}; !slices.Equal(got, want) {
		t.Fatalf("blocks end at %v, want %v", got, want)
	}
	for _, from := range []uint64{1, 2, 511, 512, 513, 1024, 1299, 1301, 1303} {
		for _, max := range []int{1, 7, 600} {
			checkRead(t, s, stream, from, max, 20)
		}
	}
	// A retry of the stored append is accepted; a different batch at the same seqs is not.
	if err := s.Append(ctx, stream, 1, mkEntries(1, 1300, 20)); err != nil {
		t.Fatalf("retry of a stored append: %v", err)
	}
	changed := mkEntries(1, 1300, 20)
	changed[1000].Origin = "b"
	if err := s.Append(ctx, stream, 1, changed); !errors.Is(err, ErrConflict) {
		t.Fatalf("append of a changed batch at stored seqs: %v, want ErrConflict", err)
	}
	// Trimming inside a block keeps the block and hides what is below the mark.
	if err := s.Trim(ctx, stream, 700); err != nil {
		t.Fatal(err)
	}
	if got, want := blockKeys(t, s, stream), []uint64{1024, 1300, 1303}; !slices.Equal(got, want) {
		t.Fatalf("after trim below 700, blocks end at %v, want %v", got, want)
	}
	if _, err := s.Read(ctx, stream, 699, 10); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("read below the trim: %v, want ErrTrimmed", err)
	}
	checkRead(t, s, stream, 700, 100, 20)

	// Large entries end blocks by size: 100 KB entries, three to a block.
	const big = "test/blocks-big"
	if err := s.Append(ctx, big, 1, mkEntries(1, 7, 100<<10)); err != nil {
		t.Fatal(err)
	}
	if got, want := blockKeys(t, s, big), []uint64{3, 6, 7}; !slices.Equal(got, want) {
		t.Fatalf("blocks of large entries end at %v, want %v", got, want)
	}
	checkRead(t, s, big, 2, 4, 100<<10)
}

// A block that does not parse is an error, never a short or wrong read.
func TestScanBlockCorrupt(t *testing.T) {
	enc, err := prepareBatch("test/corrupt", 1, mkEntries(1, 3, 10))
	if err != nil {
		t.Fatal(err)
	}
	block := appendBlock(nil, enc)
	var seqs []uint64
	if err := scanBlock(block, 3, func(seq uint64, data []byte) bool {
		seqs = append(seqs, seq)
		return bytes.Equal(data, enc[seq-1])
	}); err != nil || !slices.Equal(seqs, []uint64{1, 2, 3}) {
		t.Fatalf("scan of a good block: %v %v", seqs, err)
	}
	for _, bad := range [][]byte{nil, block[:len(block)-1], append(bytes.Clone(block), 0), {0}} {
		if err := scanBlock(bad, 3, func(uint64, []byte) bool { return true }); !errors.Is(err, errCorruptBlock) {
			t.Errorf("scan of %x: %v, want errCorruptBlock", bad, err)
		}
	}
	if err := scanBlock(block, 2, func(uint64, []byte) bool { return true }); !errors.Is(err, errCorruptBlock) {
		t.Errorf("a block of 3 entries ending at seq 2: %v, want errCorruptBlock", err)
	}
}

// A store written with a key per entry (before blocks), in Pebble's default format, is converted
// when opened: its format is upgraded, its entries read back unchanged, no entry key is left, and
// appends go on after its head.
func TestEmbeddedMigratesEntryKeys(t *testing.T) {
	dir := t.TempDir()
	// Pebble's default options: the format of a store written by an older musicd.
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{discard()}})
	if err != nil {
		t.Fatal(err)
	}
	heads := map[string]int{"test/old-a": 1100, "test/old-b": 3}
	for stream, n := range heads {
		enc, err := prepareBatch(stream, 2, mkEntries(1, n, 30))
		if err != nil {
			t.Fatal(err)
		}
		for i, data := range enc {
			if err := db.Set(legacyEntryKey(stream, uint64(i+1)), data, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := db.Set(metaKey(stream), encodeMeta(Head{Epoch: 2, Seq: uint64(n)}), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s := openEmbedded(t, dir)
	defer s.Close()
	if v := s.db.FormatMajorVersion(); v < pebble.FormatValueSeparation {
		t.Fatalf("store format %v after opening, want at least %v (value separation)", v, pebble.FormatValueSeparation)
	}
	for stream, n := range heads {
		if h := mustHead(t, s, stream); h.Seq != uint64(n) || h.Epoch != 2 {
			t.Fatalf("%s: head %+v after conversion", stream, h)
		}
		checkRead(t, s, stream, 1, 333, 30)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'e'}, UpperBound: []byte{'f'}})
	if err != nil {
		t.Fatal(err)
	}
	if it.First() {
		t.Errorf("entry key %q left after conversion", it.Key())
	}
	it.Close()
	if got, want := blockKeys(t, s, "test/old-a"), []uint64{512, 1024, 1100}; !slices.Equal(got, want) {
		t.Fatalf("converted blocks end at %v, want %v", got, want)
	}
	if err := s.Append(context.Background(), "test/old-a", 2, mkEntries(1101, 2, 30)); err != nil {
		t.Fatal(err)
	}
	checkRead(t, s, "test/old-a", 1000, 50, 30)
}

// Blocks of 1 KiB or more are stored in Pebble's blob files (value separation), outside the
// tables that compactions rewrite; trimming a stream whole frees them once its deletion is
// compacted.
func TestEmbeddedBlobFiles(t *testing.T) {
	dir := t.TempDir()
	s := openEmbedded(t, dir)
	defer s.Close()
	ctx := context.Background()
	const stream, batches, perBatch, size = "test/blobs", 40, 100, 4 << 10
	rnd := rand.NewChaCha8([32]byte{1})
	for b := range batches {
		es := mkEntries(uint64(b*perBatch+1), perBatch, 0)
		for i := range es {
			payload := make([]byte, size) // incompressible: the blob files' size shows the bytes
			_, _ = rnd.Read(payload)
			es[i].After[1].Value = Bytes(payload)
		}
		if err := s.Append(ctx, stream, 1, es); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	const stored = batches * perBatch * size
	if got := blobBytes(t, dir); got < stored {
		t.Fatalf("blob files hold %d bytes after a flush of %d bytes of blocks: values not separated", got, stored)
	}
	head := uint64(batches * perBatch)
	if err := s.Trim(ctx, stream, head+1); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Compact(ctx, []byte{'b'}, []byte{'c'}, false); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the blob files of a stream trimmed whole and compacted to be deleted",
		func() bool { return blobBytes(t, dir) <= stored/10 })
	// The stream goes on.
	if err := s.Append(ctx, stream, 1, mkEntries(head+1, 10, 2000)); err != nil {
		t.Fatal(err)
	}
	checkRead(t, s, stream, head+1, 10, 2000)
}

// blobBytes is the size of the Pebble blob files in dir.
func blobBytes(t *testing.T, dir string) int64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.blob"))
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil { // a file deleted meanwhile counts as nothing
			n += fi.Size()
		}
	}
	return n
}
