package binlog

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

// gatedStore holds Append calls whose batch touches table until released.
type gatedStore struct {
	journal.Store
	table   string
	entered chan struct{} // closed when such an Append starts
	release chan struct{} // close to let it go on
	once    sync.Once
}

func (g *gatedStore) Append(ctx context.Context, stream string, epoch uint64, es []journal.Entry) error {
	for _, e := range es {
		if e.Table == g.table {
			g.once.Do(func() { close(g.entered) })
			select {
			case <-g.release:
			case <-ctx.Done():
				return ctx.Err()
			}
			break
		}
	}
	return g.Store.Append(ctx, stream, epoch, es)
}

// A transaction on a sync table does not commit at the source before its journal batch is
// durable: the capture is a semi-synchronous replica that acknowledges after the append. A
// transaction on an async table commits at once. (A private MariaDB: semi-sync is a global
// setting that would slow other tests' commits.)
func TestSemiSyncCommitWaitsForTheJournal(t *testing.T) {
	srv := testenv.StartPrivate(t, "mariadb-a")
	src := SourceConfig{Name: "a", Addr: srv.Addr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword, ServerID: 901,
		Tables: policies.Tables{{Match: "s.sync_t", Mode: policies.ModeSync}, {Match: "s.*", Mode: policies.ModeAsync}}}.WithDefaults()
	conn, err := Connect(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	exec := func(q string) {
		t.Helper()
		if _, err := conn.Execute(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec("CREATE DATABASE s")
	exec("CREATE TABLE s.sync_t (id INT PRIMARY KEY)")
	exec("CREATE TABLE s.async_t (id INT PRIMARY KEY)")

	store, err := journal.OpenEmbedded(filepath.Join(t.TempDir(), "j"), discard())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	gs := &gatedStore{Store: store, table: "sync_t", entered: make(chan struct{}), release: make(chan struct{})}
	c := NewCapture(CaptureConfig{Source: src, Site: "a"}, gs, journal.NewClock(time.Now, 0), discard())

	// Without semi-sync on the source, a capture with sync tables refuses to run.
	if err := c.Run(context.Background(), 1); err == nil || !strings.Contains(err.Error(), "rpl_semi_sync_master_enabled") {
		t.Fatalf("Run without semi-sync: %v", err)
	}
	exec("SET GLOBAL rpl_semi_sync_master_enabled = ON")
	exec("SET GLOBAL rpl_semi_sync_master_timeout = 60000") // a commit waits up to 60 s for the ack

	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(ctx, 2) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	status := func(name string) string {
		r, err := conn.Execute("SHOW GLOBAL STATUS LIKE '" + name + "'")
		if err != nil || r.RowNumber() == 0 {
			return ""
		}
		v, _ := r.GetString(0, 1)
		return v
	}
	testenv.WaitFor(t, 30*time.Second, "the capture to connect as a semi-sync replica", func() bool {
		return status("Rpl_semi_sync_master_clients") == "1"
	})

	// Async table: the commit returns without waiting for the journal.
	exec("INSERT INTO s.async_t VALUES (1)")

	committed := make(chan error, 1)
	go func() {
		c2, err := Connect(context.Background(), src)
		if err != nil {
			committed <- err
			return
		}
		defer c2.Close()
		_, err = c2.Execute("INSERT INTO s.sync_t VALUES (1)")
		committed <- err
	}()
	select {
	case <-gs.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the sync transaction was never appended")
	}
	// The append of the sync transaction is under way and held: the source has no ack, so the
	// commit cannot have returned.
	select {
	case err := <-committed:
		t.Fatalf("the sync commit returned (%v) before its journal batch was durable", err)
	default:
	}
	close(gs.release)
	select {
	case err := <-committed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the sync commit did not return after the append")
	}
	if yes := status("Rpl_semi_sync_master_yes_tx"); yes == "" || yes == "0" {
		t.Errorf("Rpl_semi_sync_master_yes_tx = %q: the commit was not acknowledged semi-synchronously", yes)
	}
	h, err := store.Head(context.Background(), c.Stream())
	if err != nil || h.Seq < 3 {
		t.Fatalf("journal head %+v, %v: want the start mark and both inserts", h, err)
	}
}
