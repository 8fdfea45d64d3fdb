package binlog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"golang.org/x/sync/errgroup"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

// BenchmarkBinlog measures capture (make bench BENCH=binlog): rows per second from site a's
// binlog into the embedded journal and into Cassandra, beside go-mysql's raw BinlogSyncer reading
// the same binlog range, and beside raw unlogged batch writes of the same journal rows to
// Cassandra (the journal's write limit); and the heap growth of capturing one transaction of
// 1,000,000 rows.
func BenchmarkBinlog(b *testing.B) {
	addr := testenv.MariaDBA(b)
	src := SourceConfig{Name: "bench", Addr: addr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword,
		ServerID: 7000 + rand.Uint32N(10000)}.WithDefaults()
	conn, err := Connect(context.Background(), src)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	db := testenv.UniqueName("bench_")
	exec := func(q string) {
		if _, err := conn.Execute(q); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	exec("CREATE DATABASE " + db)
	defer exec("DROP DATABASE " + db)
	exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, tx INT, k INT, payload VARCHAR(100))")
	exec("USE " + db) // the SEQUENCE engine's seq_X_to_Y tables live in the current database
	src.Tables = policies.Tables{{Match: db + ".*", Mode: policies.ModeAsync}}

	// 500,000 rows (about 115 MB of journal entries): enough for the embedded journal to flush
	// memtables and compact as a sustained capture does, and for the readers' start-up (tens of
	// milliseconds to the first row) to weigh little. With 100,000 rows the journal did not flush.
	const rows, perTx = 500_000, 100
	start, err := currentPosition(conn, src.Flavor)
	if err != nil {
		b.Fatal(err)
	}
	exec(fmt.Sprintf("INSERT INTO %s.t SELECT seq, seq DIV %d, seq MOD %d, REPEAT('p', 80) FROM seq_1_to_%d", db, perTx, perTx, perTx))
	// One statement per transaction of perTx rows.
	for tx := 1; tx < rows/perTx; tx++ {
		exec(fmt.Sprintf("INSERT INTO %s.t SELECT seq, seq DIV %d, seq MOD %d, REPEAT('p', 80) FROM seq_%d_to_%d",
			db, perTx, perTx, tx*perTx+1, (tx+1)*perTx))
	}
	src.StartPosition = start

	// The capture and the raw reader take turns, five rounds each, and the medians are reported:
	// the dev server's own rate drifts by a fifth from one read of the range to the next.
	// The CPU time of this process per row is reported too: less noisy than rates on a shared
	// machine, and it shows where a rate goes (the capture's pipeline runs on both cores).
	b.Run("capture_embedded", func(b *testing.B) {
		var rates, raws, cpus, rawCPUs []float64
		for range b.N {
			for range 5 {
				cpu := testenv.ProcessCPU()
				raws = append(raws, rawRead(b, src, db, rows))
				rawCPUs = append(rawCPUs, (testenv.ProcessCPU()-cpu).Seconds()*1e6/rows)
				store, err := journal.OpenEmbedded(filepath.Join(b.TempDir(), "j"), discard())
				if err != nil {
					b.Fatal(err)
				}
				cpu = testenv.ProcessCPU()
				rates = append(rates, captureRate(b, src, store, rows))
				cpus = append(cpus, (testenv.ProcessCPU()-cpu).Seconds()*1e6/rows)
				store.Close()
			}
		}
		b.ReportMetric(median(rates), "rows/s")
		b.ReportMetric(median(raws), "rows/s;baseline=raw_syncer")
		b.ReportMetric(median(cpus), "cpu_us/row")
		b.ReportMetric(median(rawCPUs), "cpu_us/row;baseline=raw_syncer")
	})
	b.Run("capture_cassandra", func(b *testing.B) {
		cfg := journal.DefaultCassandraConfig()
		cfg.ContactPoints = []string{testenv.Cassandra(b)}
		cfg.Keyspace = testenv.UniqueName("binlog_bench_")
		cfg.Timeout = 20 * time.Second
		ctx := context.Background()
		c, err := journal.DialCassandra(ctx, cfg, discard())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		defer func() { _ = c.Session.Query(`DROP KEYSPACE ` + cfg.Keyspace).Exec() }()
		store, err := journal.OpenCassandraStore(ctx, c, cfg, discard())
		if err != nil {
			b.Fatal(err)
		}
		var rate, limit float64
		for i := range b.N {
			src := src
			src.Name = "bench" + strconv.Itoa(i) // a stream of its own per round
			rate = captureRate(b, src, store, rows)
			limit = rawJournalWrites(b, c, cfg.Keyspace, store, "binlog/a/"+src.Name, rows)
		}
		b.ReportMetric(rate, "rows/s")
		b.ReportMetric(limit, "rows/s;baseline=raw_journal_writes")
	})
	b.Run("transaction_1M_rows_memory", func(b *testing.B) {
		exec("CREATE TABLE " + db + ".big (id INT PRIMARY KEY, v INT)")
		pos, err := currentPosition(conn, src.Flavor)
		if err != nil {
			b.Fatal(err)
		}
		exec("INSERT INTO " + db + ".big SELECT seq, seq FROM seq_1_to_1000000")
		src := src
		src.StartPosition = pos
		var growth float64
		for range b.N {
			store, err := journal.OpenEmbedded(filepath.Join(b.TempDir(), "j"), discard())
			if err != nil {
				b.Fatal(err)
			}
			growth = testenv.PeakHeapGrowth(func() { captureRate(b, src, store, 1_000_000) })
			store.Close()
		}
		b.ReportMetric(growth/(1<<20), "heap_growth_MB")
		b.ReportMetric(256, "heap_growth_MB;baseline=limit")
	})
}

// rawRead reads the binlog from src.StartPosition with a bare BinlogSyncer until it has seen n
// rows of db, and returns rows per second.
func rawRead(b *testing.B, src SourceConfig, db string, n int) float64 {
	host, portStr, _ := net.SplitHostPort(src.Addr)
	port, _ := strconv.Atoi(portStr)
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: src.ServerID + 1, Flavor: src.Flavor, Host: host, Port: uint16(port), User: src.User, Password: src.Password,
		UseDecimal: true, Logger: discard(), MaxReconnectAttempts: 1,
	})
	defer syncer.Close()
	gset, err := mysql.ParseMariadbGTIDSet(src.StartPosition)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	st, err := syncer.StartSyncGTID(gset)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	seen := 0
	for seen < n {
		ev, err := st.GetEvent(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if r, ok := ev.Event.(*replication.RowsEvent); ok && string(r.Table.Schema) == db {
			seen += len(r.Rows)
		}
	}
	return float64(n) / time.Since(t0).Seconds()
}

// captureRate captures src from its start position into store until n rows are journaled.
func captureRate(b *testing.B, src SourceConfig, store journal.Store, n int) float64 {
	c := NewCapture(CaptureConfig{Source: src, Site: "a"}, store, journal.NewClock(time.Now, 0), discard())
	done := make(chan struct{})
	var rows int
	var t1 time.Time
	c.cfg.OnAppend = func(_ string, seq uint64) {
		// Called by the capture's goroutine only: entries are the start mark plus rows.
		if rows = int(seq) - 1; rows >= n && t1.IsZero() {
			t1 = time.Now()
			close(done)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	t0 := time.Now()
	go func() { errc <- c.Run(ctx, 1) }()
	select {
	case <-done:
	case err := <-errc:
		cancel()
		b.Fatalf("capture stopped: %v", err)
	case <-time.After(10 * time.Minute):
		cancel()
		b.Fatal("capture too slow")
	}
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return float64(n) / t1.Sub(t0).Seconds()
}

// rawJournalWrites writes the captured entries of stream again, raw: the same encoded rows, in
// groups of groupRows written as unlogged batches of 64 rows with 8 in flight (what a fenced
// append of a group does, without its head check and lightweight transaction), through the same
// driver into a table shaped like journal_entries; it returns rows per second.
func rawJournalWrites(b *testing.B, c *journal.Cassandra, ks string, store journal.Store, stream string, n int) float64 {
	if err := c.Session.Query(`CREATE TABLE IF NOT EXISTS ` + ks + `.raw_entries (stream text, bucket bigint, seq bigint, data blob, PRIMARY KEY ((stream, bucket), seq))`).Exec(); err != nil {
		b.Fatal(err)
	}
	var data [][]byte
	r := journal.NewReader(store, stream, 2, 1000)
	for len(data) < n {
		e, ok, err := r.Next(context.Background())
		if err != nil || !ok {
			b.Fatalf("reading back %s: %v %v", stream, ok, err)
		}
		data = append(data, journal.Encode(&e))
	}
	const groupRows, batchRows = 1000, 64
	stmt := `INSERT INTO ` + ks + `.raw_entries (stream, bucket, seq, data) VALUES (?, ?, ?, ?) USING TIMESTAMP 1`
	t0 := time.Now()
	for g := 0; g < n; g += groupRows {
		var eg errgroup.Group
		eg.SetLimit(8)
		for i := g; i < min(n, g+groupRows); i += batchRows {
			eg.Go(func() error {
				batch := c.Session.Batch(gocql.UnloggedBatch)
				for j := i; j < min(n, i+batchRows, g+groupRows); j++ {
					batch.Query(stmt, stream, int64(j/1024), int64(j), data[j])
				}
				return batch.Exec()
			})
		}
		if err := eg.Wait(); err != nil {
			b.Fatal(err)
		}
	}
	return float64(n) / time.Since(t0).Seconds()
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
