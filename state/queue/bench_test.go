package queue

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
)

// BenchmarkQueue measures musicQ on the dev Cassandra, beside the rate of raw single-row
// lightweight transactions on the same node in the same run (a claim needs one, a completion
// another):
//
//   - raw_lwt/s: 16 goroutines each updating its own rows with IF conditions;
//   - claims/s: 100,000 jobs enqueued, then 16 workers claiming them all; ratio = claims/s over
//     raw_lwt/s; claimed+completed/s: the same jobs' claims and then completions (an LWT each)
//     over the time of both;
//   - enqueue-to-claim p50/p99: jobs enqueued with ids at a quarter (light_*), then half, of the
//     measured claimed+completed rate for 10 s each while the 16 workers wait for them (woken by
//     the service's notices) and complete them, from before the enqueue to the claim's answer.
func BenchmarkQueue(b *testing.B) {
	const workers, jobs = 16, 100_000
	for i := 0; i < b.N; i++ {
		s, ks := cassandraSession(b)
		ctx := context.Background()
		st, err := NewCassandraStore(ctx, s, CassandraConfig{Keyspace: ks})
		if err != nil {
			b.Fatal(err)
		}
		rawRate := rawLWTRate(b, s, ks, workers, 20_000)

		svc, err := New(DefaultConfig(), Deps{Store: st, Logger: discard()})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := svc.CreateQueue(ctx, Def{Namespace: "bench", Name: "q", Shards: 32}); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		parallel(b, workers, func(w int) error {
			for j := w; j < jobs; j += workers {
				if _, _, err := svc.Enqueue(ctx, "bench", "q", NewJob{Payload: []byte(`{"n":1}`)}); err != nil {
					return err
				}
			}
			return nil
		})
		enqRate := float64(jobs) / time.Since(start).Seconds()

		// Claims alone (what a claim costs, beside a raw LWT), then the completions of the
		// claimed jobs.
		var claimed atomic.Int64
		held := make([][]*Job, workers)
		start = time.Now()
		parallel(b, workers, func(w int) error {
			for claimed.Load() < jobs {
				j, err := svc.Claim(ctx, "bench", "q", fmt.Sprintf("w%d", w), 2*time.Hour, 0)
				if err != nil {
					return err
				}
				if j != nil {
					claimed.Add(1)
					held[w] = append(held[w], j)
				}
			}
			return nil
		})
		claimTime := time.Since(start)
		claimRate := float64(jobs) / claimTime.Seconds()
		start = time.Now()
		parallel(b, workers, func(w int) error {
			for _, j := range held[w] {
				if err := svc.Complete(ctx, "bench", "q", j.ID, j.Token); err != nil {
					return err
				}
			}
			return nil
		})
		jobRate := float64(jobs) / (claimTime + time.Since(start)).Seconds()
		b.Logf("raw LWTs %.0f/s, enqueues %.0f/s, claims %.0f/s (%.2fx), claimed+completed %.0f/s", rawRate, enqRate, claimRate, claimRate/rawRate, jobRate)

		// Latency: a steady load at a quarter, then half, of the claimed+completed rate, workers
		// waiting.
		light := latencyAt(b, svc, workers, jobRate/4, "light")
		heavy := latencyAt(b, svc, workers, jobRate/2, "heavy")
		b.Logf("enqueue-to-claim at %.0f jobs/s: p50 %.1f ms p99 %.1f ms; at %.0f jobs/s: p50 %.1f ms p99 %.1f ms",
			light.rate, light.p50, light.p99, heavy.rate, heavy.p50, heavy.p99)
		b.ReportMetric(rawRate, "raw_lwt/s")
		b.ReportMetric(enqRate, "enqueues/s")
		b.ReportMetric(claimRate, "claims/s")
		b.ReportMetric(claimRate/rawRate, "ratio")
		b.ReportMetric(jobRate, "claimed+completed/s")
		b.ReportMetric(light.rate, "light_jobs/s")
		b.ReportMetric(light.p50, "light_p50_ms")
		b.ReportMetric(light.p99, "light_p99_ms")
		b.ReportMetric(heavy.rate, "latency_jobs/s")
		b.ReportMetric(heavy.p50, "p50_ms")
		b.ReportMetric(heavy.p99, "p99_ms")
	}
}

// latency is what latencyAt measured: the load (jobs/s) and enqueue-to-claim percentiles (ms).
type latency struct{ rate, p50, p99 float64 }

// latencyAt enqueues jobs with ids (prefix-n) at rate for 10 s while workers wait for them and
// complete them, and measures from before each enqueue to its claim's answer. The generator
// enqueues on a schedule, each enqueue in a goroutine of its own (at most 256 at once), so that
// the load does not wait for the enqueues' round trips.
func latencyAt(b *testing.B, svc *Service, workers int, rate float64, prefix string) latency {
	ctx := context.Background()
	var mu sync.Mutex
	sent := map[string]time.Time{}
	var lat []time.Duration
	stop := make(chan struct{})
	var lwg sync.WaitGroup
	for w := range workers {
		lwg.Add(1)
		go func() {
			defer lwg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				j, err := svc.Claim(ctx, "bench", "q", fmt.Sprintf("l%d", w), time.Minute, 500*time.Millisecond)
				if err != nil {
					b.Error(err)
					return
				}
				if j == nil {
					continue
				}
				now := time.Now()
				mu.Lock()
				lat = append(lat, now.Sub(sent[j.ID]))
				mu.Unlock()
				if err := svc.Complete(ctx, "bench", "q", j.ID, j.Token); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	next := start
	end := next.Add(10 * time.Second)
	n := 0
	sem := make(chan struct{}, 256)
	var ewg sync.WaitGroup
	for time.Now().Before(end) {
		if d := time.Until(next); d > 0 {
			time.Sleep(d) // pacing the load generator, not synchronization
		}
		next = next.Add(interval)
		id := fmt.Sprintf("%s-%d", prefix, n)
		n++
		sem <- struct{}{}
		ewg.Add(1)
		go func() {
			defer func() { <-sem; ewg.Done() }()
			mu.Lock()
			sent[id] = time.Now()
			mu.Unlock()
			if _, _, err := svc.Enqueue(ctx, "bench", "q", NewJob{ID: id}); err != nil {
				b.Error(err)
			}
		}()
	}
	ewg.Wait()
	offered := float64(n) / time.Since(start).Seconds()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		got := len(lat)
		mu.Unlock()
		if got >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // waiting for the last claims, bounded by deadline
	}
	close(stop)
	lwg.Wait()
	slices.Sort(lat)
	if len(lat) < n {
		b.Fatalf("%d of %d latency jobs (%s) claimed", len(lat), n, prefix)
	}
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	return latency{rate: offered, p50: pct(0.50), p99: pct(0.99)}
}

// rawLWTRate is the rate of single-row lightweight transactions by n goroutines, each on rows
// of its own.
func rawLWTRate(b *testing.B, s *gocql.Session, ks string, n, total int) float64 {
	if err := s.Query(`CREATE TABLE ` + ks + `.raw_lwt (k text PRIMARY KEY, v bigint)`).Exec(); err != nil {
		b.Fatal(err)
	}
	const rows = 64
	for w := range n {
		for r := range rows {
			if err := s.Query(`INSERT INTO `+ks+`.raw_lwt (k, v) VALUES (?, 0)`, fmt.Sprintf("%d-%d", w, r)).Exec(); err != nil {
				b.Fatal(err)
			}
		}
	}
	start := time.Now()
	parallel(b, n, func(w int) error {
		vals := make([]int64, rows)
		for i := w; i < total; i += n {
			r := i % rows
			applied, err := s.Query(`UPDATE `+ks+`.raw_lwt SET v = ? WHERE k = ? IF v = ?`, vals[r]+1, fmt.Sprintf("%d-%d", w, r), vals[r]).
				Consistency(gocql.Quorum).SerialConsistency(gocql.Serial).MapScanCAS(map[string]any{})
			if err != nil {
				return err
			}
			if !applied {
				return fmt.Errorf("raw LWT on %d-%d not applied", w, r)
			}
			vals[r]++
		}
		return nil
	})
	return float64(total) / time.Since(start).Seconds()
}

// parallel runs fn(0..n-1) concurrently and fails b with the first error.
func parallel(b *testing.B, n int, fn func(w int) error) {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(w); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}
