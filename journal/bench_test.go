package journal

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkJournal measures raw single-row writes on the test Cassandra: plain inserts and
// lightweight transactions (INSERT ... IF NOT EXISTS), 16 writers. These are the baselines that
// the journal's fenced appends and the queue's claims are compared with.
func BenchmarkJournal(b *testing.B) {
	c, ks := dialTest(b)
	if err := c.Session.Query(`CREATE TABLE ` + ks + `.bench (k text PRIMARY KEY, v blob)`).Exec(); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 100)
	var plainRate float64
	for _, mode := range []string{"insert", "lwt_insert"} {
		b.Run("raw_"+mode, func(b *testing.B) {
			stmt := `INSERT INTO ` + ks + `.bench (k, v) VALUES (?, ?)`
			if mode == "lwt_insert" {
				stmt += ` IF NOT EXISTS`
			}
			var next atomic.Int64
			b.SetParallelism(8) // 8 x GOMAXPROCS(2) = 16 writers
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := fmt.Sprintf("%s-%d-%d", mode, b.N, next.Add(1))
					if err := c.Session.Query(stmt, k, payload).Exec(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			rate := float64(b.N) / time.Since(start).Seconds()
			b.ReportMetric(rate, "writes/s")
			if mode == "insert" {
				plainRate = rate
			} else if plainRate > 0 {
				// Figures compared with a peer in the same run carry it as a baseline (see
				// cmd/benchreport): here, an LWT against a plain write.
				b.ReportMetric(plainRate, "writes/s;baseline=raw_insert")
			}
		})
	}
}
