package applier

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/binlog"
	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// siteDB is the test's own database (the same name at both sites) on one site's MariaDB.
type siteDB struct {
	t    testing.TB
	site string
	addr string
	db   string
	conn *client.Conn
}

func openSite(t testing.TB, site, addr, db string) *siteDB {
	t.Helper()
	conn, err := client.Connect(addr, testenv.MariaDBUser, testenv.MariaDBPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	s := &siteDB{t: t, site: site, addr: addr, db: db, conn: conn}
	s.exec("SET NAMES utf8mb4")
	s.exec("SET time_zone = '+00:00'")
	s.exec("CREATE DATABASE IF NOT EXISTS " + db)
	t.Cleanup(func() {
		_, _ = conn.Execute("DROP DATABASE IF EXISTS " + db)
		conn.Close()
	})
	return s
}

func (s *siteDB) exec(q string, args ...any) {
	s.t.Helper()
	if _, err := s.conn.Execute(q, args...); err != nil {
		s.t.Fatalf("site %s: %s: %v", s.site, q, err)
	}
}

// tx runs statements as one transaction.
func (s *siteDB) tx(qs ...string) {
	s.t.Helper()
	s.exec("BEGIN")
	for _, q := range qs {
		s.exec(q)
	}
	s.exec("COMMIT")
}

// dump returns the rows of a query as text, one line per row (NULL as \N).
func (s *siteDB) dump(q string) string {
	s.t.Helper()
	r, err := s.conn.Execute(q)
	if err != nil {
		s.t.Fatalf("site %s: %s: %v", s.site, q, err)
	}
	defer r.Close()
	var b strings.Builder
	for i := range r.RowNumber() {
		for j := range r.ColumnNumber() {
			if j > 0 {
				b.WriteByte('|')
			}
			v, _ := r.GetValue(i, j)
			if v == nil {
				b.WriteString(`\N`)
			} else {
				fmt.Fprintf(&b, "%v", display(v))
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func (s *siteDB) count(q string) int {
	s.t.Helper()
	r, err := s.conn.Execute(q)
	if err != nil {
		s.t.Fatalf("site %s: %s: %v", s.site, q, err)
	}
	defer r.Close()
	n, err := r.GetInt(0, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	return int(n)
}

// startCapture runs a real binlog capture of s's database into store, notifying onAppend.
func startCapture(t testing.TB, s *siteDB, store journal.Store, onAppend func(string, uint64)) string {
	t.Helper()
	src := binlog.SourceConfig{
		Name: "src", Addr: s.addr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword,
		ServerID: 5000 + rand.Uint32N(1_000_000),
		Tables:   policies.Tables{{Match: s.db + ".*", Mode: policies.ModeAsync}},
		// The streaming path only: the tests' tables exist before the capture starts.
		Snapshot: binlog.SnapshotNever,
	}
	c := binlog.NewCapture(binlog.CaptureConfig{Source: src, Site: s.site, ChunkEntries: 2, OnAppend: onAppend},
		store, journal.NewClock(time.Now, 0), discard())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, 1) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("capture of site %s: %v", s.site, err)
		}
	})
	testenv.WaitFor(t, 30*time.Second, "the capture of site "+s.site+" to start", func() bool {
		h, err := store.Head(context.Background(), c.Stream())
		return err == nil && h.Seq >= 1
	})
	return c.Stream()
}

func openJournal(t testing.TB) journal.Store {
	t.Helper()
	store, err := journal.OpenEmbedded(filepath.Join(t.TempDir(), "journal"), discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

// running is an applier run in the background.
type running struct {
	t      testing.TB
	a      *Applier
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	confl  []Conflict
}

// testConfig is an applier config into s with a meta database of the test's own.
func testConfig(t testing.TB, s *siteDB, streams ...string) Config {
	meta := testenv.UniqueName("apl_meta_")
	t.Cleanup(func() {
		if c, err := client.Connect(s.addr, testenv.MariaDBUser, testenv.MariaDBPassword, ""); err == nil {
			_, _ = c.Execute("DROP DATABASE IF EXISTS " + meta)
			c.Close()
		}
	})
	return Config{
		Site: s.site, Addr: s.addr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword,
		MetaDatabase: meta, Streams: streams,
		Tables:       policies.Tables{{Match: s.db + ".*", Mode: policies.ModeAsync}},
		BatchEntries: 3, PollMax: 200 * time.Millisecond, RetryMax: time.Second,
	}
}

func startApplier(t testing.TB, cfg Config, store journal.Store, hook func(*running, string, uint64)) *running {
	t.Helper()
	r := &running{t: t, reg: prometheus.NewRegistry(), done: make(chan struct{})}
	cfg.OnConflict = func(c Conflict) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.confl = append(r.confl, c)
	}
	a, err := New(cfg, store, discard(), r.reg, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	r.a = a
	if hook != nil {
		a.testHook = func(stream string, seq uint64) { hook(r, stream, seq) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(r.stop)
	return r
}

// startApplierUntil starts an applier, calls started (if set) with it, and cancels it once it
// has applied n entries (inside their transactions, as after a crash there); it returns when the
// applier is cancelled, within a minute.
func startApplierUntil(t testing.TB, cfg Config, store journal.Store, n int, started func(*running)) *running {
	t.Helper()
	applied := 0
	stopped := make(chan struct{})
	r := startApplier(t, cfg, store, func(r *running, _ string, _ uint64) {
		if applied++; applied == n {
			r.cancel()
			close(stopped)
		}
	})
	if started != nil {
		started(r)
	}
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatalf("the applier did not apply %d entries in a minute", n)
	}
	return r
}

func (r *running) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		r.t.Fatal("applier did not stop")
	}
}

func (r *running) conflicts() []Conflict {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Conflict{}, r.confl...)
}

func (r *running) status(stream string) StreamStatus {
	for _, s := range r.a.Status() {
		if s.Stream == stream {
			return s
		}
	}
	r.t.Fatalf("no stream %s", stream)
	return StreamStatus{}
}

// waitApplied waits until stream is applied up to its head.
func (r *running) waitApplied(store journal.Store, stream string) {
	r.t.Helper()
	testenv.WaitFor(r.t, 30*time.Second, "the applier to reach the head of "+stream, func() bool {
		h, err := store.Head(context.Background(), stream)
		st := r.status(stream)
		if st.Stopped {
			r.t.Fatalf("stream stopped: %v", st.Err)
		}
		return err == nil && st.Applied == h.Seq
	})
}

// metric returns the value of a counter or gauge with the given labels (0 if absent).
func (r *running) metric(name string, labels map[string]string) float64 {
	mfs, err := r.reg.Gather()
	if err != nil {
		r.t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if m.Counter != nil {
				total += m.Counter.GetValue()
			} else if m.Gauge != nil {
				total += m.Gauge.GetValue()
			}
		}
	}
	return total
}

// waitJournaled waits until stream has n entries of table (rows and DDL) and returns them.
func waitJournaled(t *testing.T, store journal.Store, stream, table string, n int) []journal.Entry {
	t.Helper()
	var got []journal.Entry
	testenv.WaitFor(t, 30*time.Second, fmt.Sprintf("%d entries of %s in %s", n, table, stream), func() bool {
		got = got[:0]
		es, err := store.Read(context.Background(), stream, 1, journal.MaxReadEntries)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Table == table && e.Op != journal.OpMark {
				got = append(got, e)
			}
		}
		return len(got) >= n
	})
	return got
}
