package journal

import (
	"context"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
)

// openCassandraStore dials addr and opens the store in keyspace ks.
func openCassandraStore(t testing.TB, addr, ks string) (*CassandraStore, *Cassandra) {
	t.Helper()
	cfg := DefaultCassandraConfig()
	cfg.ContactPoints = []string{addr}
	cfg.Keyspace = ks
	cfg.Timeout = 20 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := DialCassandra(ctx, cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenCassandraStore(ctx, c, cfg, discard())
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	return s, c
}

func TestCassandraConformance(t *testing.T) {
	addr := testenv.Cassandra(t)
	ks := testenv.UniqueName("journal_test_")
	open := func(t *testing.T) Store {
		s, c := openCassandraStore(t, addr, ks)
		t.Cleanup(c.Close)
		return s
	}
	first, c := openCassandraStore(t, addr, ks)
	t.Cleanup(func() {
		_ = c.Session.Query(`DROP KEYSPACE ` + ks).Exec()
		c.Close()
	})
	runConformance(t, harness{
		store: func(t *testing.T) Store { return first },

		peer:   open, // a second session and store, as another musicd would have
		reopen: func(t *testing.T, s Store) Store { return open(t) },
	})
}

// Opening the store twice migrates once and keeps the bucket size.
func TestCassandraSchemaMigratesOnce(t *testing.T) {
	addr := testenv.Cassandra(t)
	ks := testenv.UniqueName("journal_test_")
	s1, c1 := openCassandraStore(t, addr, ks)
	defer c1.Close()
	defer func() { _ = c1.Session.Query(`DROP KEYSPACE ` + ks).Exec() }()
	s2, c2 := openCassandraStore(t, addr, ks)
	defer c2.Close()
	if s1.bucketSize != defaultBucket || s2.bucketSize != defaultBucket {
		t.Fatalf("bucket sizes %d %d", s1.bucketSize, s2.bucketSize)
	}
	var n int
	if err := c1.Session.Query(`SELECT COUNT(*) FROM ` + ks + `.musicd_schema`).Scan(&n); err != nil || n != len(journalMigrations) {
		t.Fatalf("%d migrations recorded (%v), want %d", n, err, len(journalMigrations))
	}
}

// Appends acknowledged before a kill -9 of Cassandra (commit log synced before acknowledging)
// are all there after it restarts, and the same store goes on appending where it stopped.
func TestCassandraDurableAcrossKill9(t *testing.T) {
	srv := testenv.StartPrivate(t, "cassandra", "MUSIC_DEV_CASSANDRA_COMMITLOG_SYNC=batch")
	ks := "journal_kill"
	s, c := openCassandraStore(t, srv.Addr, ks)
	ctx := context.Background()
	stream := "test/kill9"
	const batches, per = 30, 10
	for i := range batches {
		if err := s.Append(ctx, stream, 1, mkEntries(uint64(i*per+1), per, 200)); err != nil {
			t.Fatal(err)
		}
	}
	defer c.Close()
	srv.Kill9(t)
	srv.Start(t)
	// The same session reconnects by itself.
	testenv.WaitFor(t, 60*time.Second, "the store to answer after the restart", func() bool {
		_, err := s.Head(ctx, stream)
		return err == nil
	})
	h := mustHead(t, s, stream)
	if h.Seq != batches*per || h.Epoch != 1 {
		t.Fatalf("head after kill -9: %+v, want seq %d", h, batches*per)
	}
	checkStream(t, s, stream, 1, batches*per)
	if err := s.Append(ctx, stream, 1, mkEntries(batches*per+1, 5, 200)); err != nil {
		t.Fatalf("append after restart: %v", err)
	}
}
