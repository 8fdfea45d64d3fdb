package journal

import (
	"context"
	"errors"
	"testing"
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
