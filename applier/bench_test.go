package applier

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
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

// BenchmarkApplier compares musicd's mirroring (binlog capture into the embedded journal, applier
// into the target) with MariaDB's own replication (a single-threaded replica) between the same
// two private MariaDB servers, on the same workload, in the same run (make bench BENCH=applier):
//   - lag_<rate>: end-to-end lag, from the return of COMMIT at the source until the row is
//     visible at the target (a reader polls it every millisecond), p50 and p99, while a writer
//     commits transactions of 10 rows at <rate> rows/s for 5 s;
//   - apply_rate: the maximum sustained apply rate, rows/s: a backlog of 50,000 rows
//     (transactions of 100) is made ready first (in the replica's relay log; in the journal), then
//     applied, timed until the target holds every row. Beside them, sql_insert: the same rows
//     written by one plain client as prepared 100-row INSERTs into the same target, the ceiling
//     of any applier that writes through SQL.
func BenchmarkApplier(b *testing.B) {
	src := testenv.StartPrivate(b, "mariadb-a")
	dst := testenv.StartPrivate(b, "mariadb-b")
	s := benchConn(b, src.Addr)
	d := benchConn(b, dst.Addr)
	// The native replica replicates the nat_* databases only; musicd mirrors the mus_* ones.
	benchExec(b, d, "SET GLOBAL slave_parallel_threads = 0")
	benchExec(b, d, `SET GLOBAL replicate_wild_do_table = 'nat\_%.%'`)
	host, port, _ := strings.Cut(src.Addr, ":")
	benchExec(b, d, fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='%s', MASTER_PORT=%s, MASTER_USER='%s', MASTER_PASSWORD='%s', MASTER_USE_GTID=slave_pos",
		host, port, testenv.MariaDBUser, testenv.MariaDBPassword))
	benchExec(b, d, "START SLAVE")
	store := openJournal(b)

	for _, rate := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("lag_%d_rows_per_s", rate), func(b *testing.B) {
			for i := range b.N {
				nat := fmt.Sprintf("nat_lag%d_%d", rate, i)
				benchTable(b, s, d, nat)
				natLag, natRate := measureLag(b, s, dst.Addr, nat, rate)

				mus := fmt.Sprintf("mus_lag%d_%d", rate, i)
				benchTable(b, s, d, mus)
				stop, _ := mirror(b, src.Addr, dst.Addr, store, mus, true)
				musLag, musRate := measureLag(b, s, dst.Addr, mus, rate)
				stop()

				b.ReportMetric(ms(musLag, 50), "p50_ms")
				b.ReportMetric(ms(musLag, 99), "p99_ms")
				b.ReportMetric(ms(natLag, 50), "p50_ms;baseline=native")
				b.ReportMetric(ms(natLag, 99), "p99_ms;baseline=native")
				b.ReportMetric(ms(musLag, 99)/ms(natLag, 99), "p99_ratio_to_native")
				b.ReportMetric(musRate, "written_rows/s")
				b.ReportMetric(natRate, "written_rows/s;baseline=native")
			}
		})
	}
	b.Run("apply_rate", func(b *testing.B) {
		const backlog, perTx = 50_000, 100
		for i := range b.N {
			nat := fmt.Sprintf("nat_rate_%d", i)
			benchTable(b, s, d, nat)
			benchExec(b, d, "STOP SLAVE SQL_THREAD")
			writeBacklog(b, s, nat, backlog, perTx)
			srcPos := benchString(b, s, "SELECT @@gtid_binlog_pos")
			testenv.WaitFor(b, 60*time.Second, "the replica to fetch the backlog", func() bool {
				return slaveStatus(b, d, "Gtid_IO_Pos") == srcPos
			})
			start := time.Now()
			benchExec(b, d, "START SLAVE SQL_THREAD")
			waitRows(b, d, nat, backlog)
			natRate := backlog / time.Since(start).Seconds()

			mus := fmt.Sprintf("mus_rate_%d", i)
			benchTable(b, s, d, mus)
			stopCapture, captured := mirror(b, src.Addr, dst.Addr, store, mus, false)
			writeBacklog(b, s, mus, backlog, perTx)
			stream := "binlog/a/" + mus
			testenv.WaitFor(b, 120*time.Second, "the capture to journal the backlog", func() bool {
				return captured() >= backlog
			})
			start = time.Now()
			stopApplier := applyOnly(b, dst.Addr, store, mus, stream)
			waitRows(b, d, mus, backlog)
			musRate := backlog / time.Since(start).Seconds()
			stopApplier()
			stopCapture()

			// The ceiling of any applier that writes through SQL: the same backlog written by one
			// client as prepared multi-row INSERTs of perTx rows, one transaction each, into the
			// same target server, with nothing else (no clocks, no positions, no reads).
			sqlDB := fmt.Sprintf("sql_rate_%d", i)
			benchTable(b, s, d, sqlDB)
			sqlRate := plainInsertRate(b, dst.Addr, sqlDB, backlog, perTx)

			b.ReportMetric(musRate, "rows/s")
			b.ReportMetric(natRate, "rows/s;baseline=native")
			b.ReportMetric(musRate/natRate, "ratio_to_native")
			b.ReportMetric(sqlRate, "sql_insert_rows/s")
			b.ReportMetric(sqlRate/natRate, "sql_insert_ratio_to_native")
		}
	})
	benchExec(b, d, "STOP SLAVE")
}

func benchConn(b *testing.B, addr string) *client.Conn {
	c, err := client.Connect(addr, testenv.MariaDBUser, testenv.MariaDBPassword, "")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

func benchExec(b *testing.B, c *client.Conn, q string, args ...any) {
	b.Helper()
	if _, err := c.Execute(q, args...); err != nil {
		b.Fatalf("%s: %v", q, err)
	}
}

func benchString(b *testing.B, c *client.Conn, q string) string {
	b.Helper()
	r, err := c.Execute(q)
	if err != nil {
		b.Fatalf("%s: %v", q, err)
	}
	defer r.Close()
	v, _ := r.GetString(0, 0)
	return strings.Clone(v)
}

func slaveStatus(b *testing.B, c *client.Conn, column string) string {
	b.Helper()
	r, err := c.Execute("SHOW SLAVE STATUS")
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	if r.RowNumber() == 0 {
		b.Fatal("SHOW SLAVE STATUS: not a replica")
	}
	v, err := r.GetStringByName(0, column)
	if err != nil {
		b.Fatal(err)
	}
	if e, _ := r.GetStringByName(0, "Last_Error"); e != "" {
		b.Fatalf("native replica: %s", e)
	}
	return strings.Clone(v)
}

// benchTable creates db.t at both servers, kept out of the source's binary log (neither the
// replica nor the capture sees the DDL).
func benchTable(b *testing.B, s, d *client.Conn, db string) {
	for _, c := range []*client.Conn{s, d} {
		benchExec(b, c, "SET SESSION sql_log_bin = 0")
		benchExec(b, c, "CREATE DATABASE "+db)
		benchExec(b, c, "CREATE TABLE "+db+".t (id BIGINT PRIMARY KEY, n INT NOT NULL, v VARCHAR(100) NOT NULL)")
		benchExec(b, c, "SET SESSION sql_log_bin = 1")
	}
}

// measureLag commits transactions of 10 rows into db.t at rate rows/s for 5 s and returns, for
// every row, the time from the return of its COMMIT until a reader of the target saw it, and the
// rate actually written.
func measureLag(b *testing.B, s *client.Conn, dstAddr, db string, rate int) ([]time.Duration, float64) {
	const perTx, dur = 10, 5 * time.Second
	r := benchConn(b, dstAddr)
	var mu sync.Mutex
	committed := map[int64]time.Time{}
	var lags []time.Duration
	total := 0
	written := make(chan float64, 1)
	go func() {
		tick := time.NewTicker(time.Second * perTx / time.Duration(rate))
		defer tick.Stop()
		start := time.Now()
		id := int64(0)
		for time.Since(start) < dur {
			<-tick.C
			var sb strings.Builder
			sb.WriteString("INSERT INTO " + db + ".t (id, n, v) VALUES ")
			for k := range perTx {
				if k > 0 {
					sb.WriteByte(',')
				}
				id++
				fmt.Fprintf(&sb, "(%d, %d, 'row %d %s')", id, k, id, strings.Repeat("x", 40))
			}
			if _, err := s.Execute(sb.String()); err != nil { // autocommit: one transaction
				b.Error(err)
				break
			}
			now := time.Now()
			mu.Lock()
			for k := id - perTx + 1; k <= id; k++ {
				committed[k] = now
			}
			total = int(id)
			mu.Unlock()
		}
		written <- float64(id) / time.Since(start).Seconds()
	}()
	var last int64
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	deadline := time.Now().Add(dur + 60*time.Second)
	var wrote float64
	done := false
	for {
		<-poll.C
		res, err := r.Execute(fmt.Sprintf("SELECT id FROM %s.t WHERE id > %d ORDER BY id", db, last))
		if err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		mu.Lock()
		for i := range res.RowNumber() {
			id, _ := res.GetInt(i, 0)
			lag := time.Duration(0) // seen before the writer could note its COMMIT's return
			if at, ok := committed[id]; ok {
				lag = max(0, now.Sub(at))
			}
			lags = append(lags, lag)
			last = id
		}
		n := total
		mu.Unlock()
		res.Close()
		if !done {
			select {
			case wrote = <-written:
				done = true
			default:
			}
		}
		if done && int(last) >= n {
			return lags, wrote
		}
		if now.After(deadline) {
			b.Fatalf("%s: the target holds %d of %d rows after %s", db, last, n, dur+60*time.Second)
		}
	}
}

// plainInsertRate writes rows 1..n into db.t at addr, perTx rows a prepared INSERT and a
// transaction, over one connection, and returns the rows/s.
func plainInsertRate(b *testing.B, addr, db string, n, perTx int) float64 {
	c := benchConn(b, addr)
	marks := strings.TrimSuffix(strings.Repeat("(?, ?, ?),", perTx), ",")
	st, err := c.Prepare("INSERT INTO " + db + ".t (id, n, v) VALUES " + marks)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	pad := strings.Repeat("x", 40)
	start := time.Now()
	for id := 1; id+perTx-1 <= n; id += perTx {
		args := make([]any, 0, 3*perTx)
		for k := range perTx {
			args = append(args, int64(id+k), int64(k), fmt.Sprintf("row %d %s", id+k, pad))
		}
		benchExec(b, c, "BEGIN")
		if _, err := st.Execute(args...); err != nil {
			b.Fatal(err)
		}
		benchExec(b, c, "COMMIT")
	}
	return float64(n/perTx*perTx) / time.Since(start).Seconds()
}

// writeBacklog commits n rows into db.t, perTx rows a transaction.
func writeBacklog(b *testing.B, s *client.Conn, db string, n, perTx int) {
	for _, q := range testenv.BacklogInserts(db, n, perTx) {
		benchExec(b, s, q)
	}
}

func waitRows(b *testing.B, d *client.Conn, db string, n int) {
	testenv.WaitFor(b, 5*time.Minute, fmt.Sprintf("%s.t to hold %d rows", db, n), func() bool {
		r, err := d.Execute("SELECT COUNT(*) FROM " + db + ".t")
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		got, _ := r.GetInt(0, 0)
		return int(got) == n
	})
}

// mirror runs a capture of db at srcAddr into store (source name db, site a) and, if
// withApplier, an applier of its stream into dstAddr; it returns a function that stops both and
// one that returns the rows captured so far.
func mirror(b *testing.B, srcAddr, dstAddr string, store journal.Store, db string, withApplier bool) (func(), func() float64) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var a *Applier
	src := binlog.SourceConfig{
		Name: db, Addr: srcAddr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword,
		ServerID: 7000 + rand.Uint32N(1_000_000), Tables: policies.Tables{{Match: db + ".*", Mode: policies.ModeAsync}},
		// The streaming path only: the tests' tables exist before the capture starts.
		Snapshot: binlog.SnapshotNever,
	}
	reg := prometheus.NewRegistry()
	metrics, err := binlog.NewMetrics(reg)
	if err != nil {
		b.Fatal(err)
	}
	c := binlog.NewCapture(binlog.CaptureConfig{Source: src, Site: "a", Metrics: metrics, OnAppend: func(stream string, seq uint64) {
		if a != nil {
			a.Notify(stream, seq)
		}
	}}, store, journal.NewClock(time.Now, 0), discard())
	if withApplier {
		a = newBenchApplier(b, dstAddr, store, db, c.Stream())
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := c.Run(ctx, 1); err != nil && ctx.Err() == nil {
			b.Errorf("capture: %v", err)
		}
	}()
	testenv.WaitFor(b, 30*time.Second, "the capture of "+db+" to start", func() bool {
		h, err := store.Head(context.Background(), c.Stream())
		return err == nil && h.Seq >= 1
	})
	captured := func() float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "music_binlog_rows_captured_total" {
				total := 0.0
				for _, m := range mf.GetMetric() {
					total += m.GetCounter().GetValue()
				}
				return total
			}
		}
		return 0
	}
	return func() { cancel(); wg.Wait() }, captured
}

// applyOnly runs an applier of stream into dstAddr until the returned function is called.
func applyOnly(b *testing.B, dstAddr string, store journal.Store, db, stream string) func() {
	ctx, cancel := context.WithCancel(context.Background())
	a := newBenchApplier(b, dstAddr, store, db, stream)
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	return func() { cancel(); <-done }
}

func newBenchApplier(b *testing.B, dstAddr string, store journal.Store, db, stream string) *Applier {
	cfg := Config{
		Site: "b", Addr: dstAddr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword,
		MetaDatabase: db + "_meta", Streams: []string{stream},
		Tables: policies.Tables{{Match: db + ".*", Mode: policies.ModeAsync}},
	}
	a, err := New(cfg, store, discard(), prometheus.NewRegistry(), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	return a
}

// ms returns the q-th percentile of ds in milliseconds.
func ms(ds []time.Duration, q int) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[min(len(s)-1, len(s)*q/100)].Microseconds()) / 1000
}
