package state

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
)

// flakyJournal fails the eventual log's appends while failing is set: with commit, the first
// failing append is stored before it fails (a timeout after the write landed).
type flakyJournal struct {
	journal.Store
	mu      sync.Mutex
	failing bool
	commit  bool
	calls   int // failed appends
}

func (f *flakyJournal) Append(ctx context.Context, stream string, epoch uint64, entries []journal.Entry) error {
	if !strings.HasPrefix(stream, "kvlog/") {
		return f.Store.Append(ctx, stream, epoch, entries)
	}
	f.mu.Lock()
	failing, commit := f.failing, f.commit
	if failing {
		f.commit = false
		f.calls++
	}
	f.mu.Unlock()
	if !failing {
		return f.Store.Append(ctx, stream, epoch, entries)
	}
	if commit {
		if err := f.Store.Append(ctx, stream, epoch, entries); err != nil {
			return err
		}
	}
	return errors.New("injected: the append timed out")
}

func (f *flakyJournal) set(failing, commit bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing, f.commit = failing, commit
}

func (f *flakyJournal) failed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// An append of unknown outcome (it failed, but may have been stored or be stored later) is
// retried as it is until it commits: its seqs never carry other entries, the write is journaled
// once, its row applied by the writer, and the writes queued meanwhile follow it.
func TestEventualAppendOfUnknownOutcome(t *testing.T) {
	for _, committed := range []bool{true, false} {
		name := "not stored"
		if committed {
			name = "stored"
		}
		t.Run(name, func(t *testing.T) {
			flaky := &flakyJournal{}
			cfg := DefaultConfig()
			cfg.EventualShards, cfg.OpTimeout = 1, 300*time.Millisecond
			c := embeddedClusterWith(t, cfg, func(j journal.Store) journal.Store { flaky.Store = j; return flaky })
			s, store := c.daemon(0), c.journal
			setupTable(t, s, "app")
			ctx := context.Background()
			first := mustWrite(t, s, WriteRequest{Keyspace: "app", Table: "kv", Key: key(1), Op: MutPut, Values: vals("one"), Consistency: Eventual})

			flaky.set(true, committed)
			_, err := s.Write(ctx, WriteRequest{Keyspace: "app", Table: "kv", Key: key(2), Op: MutPut, Values: vals("two"), Consistency: Eventual})
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("write while appends fail: %v, want ErrUnavailable", err)
			}
			// The writer keeps retrying that batch; a write queued meanwhile waits for it.
			third := make(chan WriteResult, 1)
			go func() {
				r, err := s.Write(ctx, WriteRequest{Keyspace: "app", Table: "kv", Key: key(3), Op: MutPut, Values: vals("three"), Consistency: Eventual, RequestID: "third"})
				if err != nil {
					t.Errorf("write after the failure: %v", err)
				}
				third <- r
			}()
			n := flaky.failed()
			testenv.WaitFor(t, 10*time.Second, "the writer to retry the failed batch", func() bool { return flaky.failed() > n })
			flaky.set(false, false)
			r3 := <-third
			if t.Failed() {
				t.FailNow()
			}
			es, err := store.Read(ctx, first.Stream, first.Seq, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(es) != 3 || es[1].Seq != first.Seq+1 || valueOf(StoredRow{Values: es[1].Key}, "id").Int != 2 ||
				es[2].Source.RequestID != "third" || r3.Stream != first.Stream || r3.Seq != first.Seq+2 {
				t.Fatalf("stream after the failure: %+v; third write at %s %d", es, r3.Stream, r3.Seq)
			}
			// The failed request's row was applied by the writer once the batch committed.
			testenv.WaitFor(t, 10*time.Second, "the row of the write of unknown outcome", func() bool {
				row, err := read(s, "app", 2, Eventual, "")
				return err == nil && valueOf(row, "v").Str == "two"
			})
		})
	}
}
