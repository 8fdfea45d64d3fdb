package journal

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/musicd/musicd/internal/testenv"
)

// openCassandraStore dials addr and opens the store in keyspace ks (with the stream classes
// compact, if given).
func openCassandraStore(t testing.TB, addr, ks string, compact ...string) (*CassandraStore, *Cassandra) {
	t.Helper()
	cfg := DefaultCassandraConfig()
	if len(compact) > 0 {
		cfg.CompactClasses = compact
	}
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
	t.Run("bucketed", func(t *testing.T) { cassandraConformance(t) })
	// The conformance suite's streams are of class "test": the same suite on the compact layout.
	t.Run("compact", func(t *testing.T) { cassandraConformance(t, "test") })
}

func cassandraConformance(t *testing.T, compact ...string) {
	addr := testenv.Cassandra(t)
	ks := testenv.UniqueName("journal_test_")
	open := func(t *testing.T) Store {
		s, c := openCassandraStore(t, addr, ks, compact...)
		t.Cleanup(c.Close)
		return s
	}
	first, c := openCassandraStore(t, addr, ks, compact...)
	t.Cleanup(func() {
		_ = c.Session.Query(`DROP KEYSPACE ` + ks).Exec()
		c.Close()
	})
	max := 0
	if len(compact) > 0 {
		max = compactMaxBatchEntries
	}
	runConformance(t, harness{
		store:    func(t *testing.T) Store { return first },
		maxBatch: max,

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

// Two processes appending to one compact stream under the same epoch (a lock holder's REST calls
// through two daemons), each from its own idea of the head: every acknowledged append is what the
// stream holds at its seqs; a writer with a stale head fails and writes nothing.
func TestCassandraCompactSameEpochWriters(t *testing.T) {
	addr := testenv.Cassandra(t)
	ks := testenv.UniqueName("journal_test_")
	a, ca := openCassandraStore(t, addr, ks)
	t.Cleanup(func() {
		_ = ca.Session.Query(`DROP KEYSPACE ` + ks).Exec()
		ca.Close()
	})
	b, cb := openCassandraStore(t, addr, ks)
	t.Cleanup(cb.Close)
	ctx := context.Background()
	const stream = "kv/app/t/0123"
	if _, err := a.Fence(ctx, stream, 7); err != nil {
		t.Fatal(err)
	}
	type ack struct {
		seq    uint64
		origin string
	}
	acks := make(chan ack, 1000)
	var wg sync.WaitGroup
	for _, w := range []struct {
		s    Store
		name string
	}{{a, "a"}, {b, "b"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 60 {
				h, err := w.s.Head(ctx, stream)
				if err != nil {
					t.Error(err)
					return
				}
				e := mkEntries(h.Seq+1, 1, 50)
				e[0].Origin = w.name
				switch err := w.s.Append(ctx, stream, 7, e); {
				case err == nil:
					acks <- ack{h.Seq + 1, w.name}
				case errors.Is(err, ErrConflict):
				default:
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(acks)
	got := map[uint64]string{}
	for x := range acks {
		if prev, dup := got[x.seq]; dup {
			t.Fatalf("seq %d acknowledged to %s and %s", x.seq, prev, x.origin)
		}
		got[x.seq] = x.origin
	}
	es, err := a.Read(ctx, stream, 1, MaxReadEntries)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != len(got) || len(got) < 60 {
		t.Fatalf("stream holds %d entries, %d appends acknowledged (want at least 60)", len(es), len(got))
	}
	for _, e := range es {
		if e.Origin != got[e.Seq] {
			t.Errorf("seq %d holds %s's entry, but the append of %s was acknowledged", e.Seq, e.Origin, got[e.Seq])
		}
	}
}

// lwtCounter counts the conditional statements a session runs.
type lwtCounter struct{ n atomic.Int64 }

func (c *lwtCounter) ObserveQuery(_ context.Context, q gocql.ObservedQuery) {
	if strings.Contains(q.Statement, " IF ") {
		c.n.Add(1)
	}
}

// An exclusive stream (its id names its one writer's epoch) appends without lightweight
// transactions, and otherwise behaves like any stream: contiguous seqs, retries, conflicts,
// reads from another process, trimming.
func TestCassandraExclusiveStream(t *testing.T) {
	addr := testenv.Cassandra(t)
	ks := testenv.UniqueName("journal_test_")
	cfg := DefaultCassandraConfig()
	cfg.ContactPoints = []string{addr}
	cfg.Keyspace = ks
	cfg.Timeout = 20 * time.Second
	lwts := &lwtCounter{}
	cfg.QueryObserver = lwts
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := DialCassandra(ctx, cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Session.Query(`DROP KEYSPACE ` + ks).Exec()
		c.Close()
	})
	s, err := OpenCassandraStore(ctx, c, cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	const stream = "kvlog/site-a/d0/0/7"
	before := lwts.n.Load()
	for i := range 5 {
		if err := s.Append(ctx, stream, 7, mkEntries(uint64(i*10+1), 10, 100)); err != nil {
			t.Fatal(err)
		}
	}
	if n := lwts.n.Load() - before; n != 0 {
		t.Errorf("%d lightweight transactions for 5 appends to an exclusive stream, want 0", n)
	}
	if err := s.Append(ctx, stream, 7, mkEntries(41, 10, 100)); err != nil {
		t.Errorf("retry of the last batch: %v", err)
	}
	if err := s.Append(ctx, stream, 7, mkEntries(40, 2, 60)); !errors.Is(err, ErrConflict) {
		t.Errorf("overlapping batch: %v, want ErrConflict", err)
	}
	if err := s.Append(ctx, stream, 8, mkEntries(51, 1, 100)); !errors.Is(err, ErrInvalid) {
		t.Errorf("another epoch: %v, want ErrInvalid", err)
	}
	if err := s.Append(ctx, "kvlog/site-a/d0/0", 7, mkEntries(1, 1, 100)); !errors.Is(err, ErrInvalid) {
		t.Errorf("an id without the epoch: %v, want ErrInvalid", err)
	}
	other, oc := openCassandraStore(t, addr, ks)
	t.Cleanup(oc.Close)
	if h := mustHead(t, other, stream); h.Seq != 50 || h.Epoch != 7 {
		t.Fatalf("head seen by another process: %+v", h)
	}
	checkStream(t, other, stream, 1, 50)
	if err := s.Trim(ctx, stream, 21); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, stream, 7, mkEntries(51, 5, 100)); err != nil {
		t.Fatalf("append after trim: %v", err)
	}
	if h := mustHead(t, other, stream); h.Seq != 55 || h.Low != 20 {
		t.Fatalf("head after trim and append: %+v", h)
	}
	// Across bucket boundaries (1024 entries each), in batches that straddle them.
	for first := uint64(56); first <= 2600; first += 500 {
		if err := s.Append(ctx, stream, 7, mkEntries(first, 500, 50)); err != nil {
			t.Fatal(err)
		}
		if h := mustHead(t, other, stream); h.Seq != first+499 {
			t.Fatalf("head %+v after appending up to %d", h, first+499)
		}
	}
	checkStream(t, other, stream, 21, 3055)
	if err := s.Trim(ctx, stream, 2100); err != nil {
		t.Fatal(err)
	}
	if h := mustHead(t, other, stream); h.Seq != 3055 || h.Low != 2099 {
		t.Fatalf("head after a trim across buckets: %+v", h)
	}
	checkStream(t, other, stream, 2100, 3055)
}

// AppendWith puts the caller's statements in the append's batch: they take effect with the
// entries (across a bucket boundary too), run again on a retry of a committed batch, and a batch
// Cassandra refuses writes neither.
func TestCassandraAppendWith(t *testing.T) {
	addr := testenv.Cassandra(t)
	ks := testenv.UniqueName("journal_test_")
	s, c := openCassandraStore(t, addr, ks)
	t.Cleanup(func() {
		_ = c.Session.Query(`DROP KEYSPACE ` + ks).Exec()
		c.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Session.Query(`CREATE TABLE ` + ks + `.side (k int PRIMARY KEY, v text)`).Exec(); err != nil {
		t.Fatal(err)
	}
	put := func(k int, v string) Statement {
		return Statement{CQL: `INSERT INTO ` + ks + `.side (k, v) VALUES (?, ?) USING TIMESTAMP ?`, Args: []any{k, v, int64(1000 + k)}}
	}
	side := func(k int) (string, bool) {
		var v string
		err := c.Session.Query(`SELECT v FROM `+ks+`.side WHERE k = ?`, k).WithContext(ctx).Scan(&v)
		if errors.Is(err, gocql.ErrNotFound) {
			return "", false
		}
		if err != nil {
			t.Fatal(err)
		}
		return v, true
	}
	const stream = "kvlog/site-a/d0/0/3"
	if err := s.AppendWith(ctx, stream, 3, mkEntries(1, 3, 100), []Statement{put(1, "a"), put(2, "b")}); err != nil {
		t.Fatal(err)
	}
	if v, ok := side(1); v != "a" || !ok {
		t.Errorf("row 1 = %q %v after the append", v, ok)
	}
	if h := mustHead(t, s, stream); h.Seq != 3 {
		t.Fatalf("head %+v, want 3", h)
	}
	// A retry of the committed batch runs its statements again (a retry's statements are the
	// same; a later timestamp here makes the second run visible).
	later := Statement{CQL: put(2, "b2").CQL, Args: []any{2, "b2", time.Now().UnixMicro() + 1_000_000}}
	if err := s.AppendWith(ctx, stream, 3, mkEntries(1, 3, 100), []Statement{put(1, "a"), later}); err != nil {
		t.Fatalf("retry of the committed batch: %v", err)
	}
	if v, _ := side(2); v != "b2" {
		t.Errorf("row 2 = %q after the retry, want b2", v)
	}
	// A statement Cassandra refuses: nothing of the batch is written.
	bad := Statement{CQL: `INSERT INTO ` + ks + `.nosuchtable (k, v) VALUES (?, ?)`, Args: []any{3, "c"}}
	err := s.AppendWith(ctx, stream, 3, mkEntries(4, 2, 100), []Statement{put(3, "c"), bad})
	if !errors.Is(err, ErrRejected) {
		t.Fatalf("batch with a statement on a missing table: %v, want ErrRejected", err)
	}
	if _, ok := side(3); ok {
		t.Error("a refused batch wrote its other statement")
	}
	other, oc := openCassandraStore(t, addr, ks)
	t.Cleanup(oc.Close)
	if h := mustHead(t, other, stream); h.Seq != 3 {
		t.Fatalf("head %+v after a refused batch, want 3", h)
	}
	// The same seqs append normally afterwards, and across a bucket boundary (1024) with
	// statements, everything lands.
	if err := s.Append(ctx, stream, 3, mkEntries(4, 1000, 50)); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendWith(ctx, stream, 3, mkEntries(1004, 40, 50), []Statement{put(4, "d")}); err != nil {
		t.Fatal(err)
	}
	if v, _ := side(4); v != "d" {
		t.Errorf("row 4 = %q after an append across buckets", v)
	}
	if h := mustHead(t, other, stream); h.Seq != 1043 {
		t.Fatalf("head %+v, want 1043", h)
	}
	checkStream(t, other, stream, 1, 1043)
	// Only exclusive streams take statements.
	if err := s.AppendWith(ctx, "test/plain", 1, mkEntries(1, 1, 10), []Statement{put(5, "e")}); !errors.Is(err, ErrInvalid) {
		t.Errorf("statements with an append to a non-exclusive stream: %v, want ErrInvalid", err)
	}
	if _, ok := side(5); ok {
		t.Error("a refused append wrote its statement")
	}
}
