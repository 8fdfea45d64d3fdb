package locks

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/musicd/musicd/internal/testenv"
)

// cycleStats are the figures of one run: cycles (or handoffs) per second and acquire latencies.
type cycleStats struct {
	rate     float64
	p50, p99 float64
}

func percentiles(d []time.Duration) (p50, p99 float64) {
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	at := func(q float64) float64 { return d[min(len(d)-1, int(q*float64(len(d))))].Seconds() }
	return at(0.50), at(0.99)
}

// BenchmarkLocks compares the ZooKeeper lock service with go-zookeeper's own zk.NewLock recipe on
// the same server and the same session, in the same run. The recipe runs first so that our
// figures can carry it as their baseline (cmd/benchreport: ratio = ours / recipe).
//   - uncontended_cycle: CreateRef + Acquire + Release, one goroutine (recipe: Lock + Unlock).
//     Acquire latency is CreateRef + Acquire (the recipe's Lock creates its node too).
//   - contended_handoff: 8 goroutines cycling on one lock; handoffs/s.
func BenchmarkLocks(b *testing.B) {
	addr := testenv.ZooKeeper(b)
	root := "/" + testenv.UniqueName("musicd-bench-locks-")
	s := zkTestServiceReap(b, addr, root, 10*time.Second, nil, 2*time.Second) // the default interval
	conn := s.conn
	acl := zk.WorldACL(zk.PermAll)
	const contenders = 8
	var recipeCycle, recipeHandoff cycleStats

	b.Run("zk_recipe_uncontended_cycle", func(b *testing.B) {
		l := zk.NewLock(conn, root+"/recipe/uncontended", acl)
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			t0 := time.Now()
			if err := l.Lock(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
			if err := l.Unlock(); err != nil {
				b.Fatal(err)
			}
		}
		el := time.Since(start)
		recipeCycle.rate = float64(b.N) / el.Seconds()
		recipeCycle.p50, recipeCycle.p99 = percentiles(lat)
		b.ReportMetric(recipeCycle.rate, "cycles/s")
		b.ReportMetric(recipeCycle.p50, "acquire_p50_s")
		b.ReportMetric(recipeCycle.p99, "acquire_p99_s")
	})

	b.Run("uncontended_cycle", func(b *testing.B) {
		ctx := context.Background()
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			t0 := time.Now()
			r, err := s.CreateRef(ctx, "uncontended", RefOptions{Lease: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Acquire(ctx, r); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
			if err := s.Release(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
		el := time.Since(start)
		rate := float64(b.N) / el.Seconds()
		p50, p99 := percentiles(lat)
		b.ReportMetric(rate, "cycles/s")
		b.ReportMetric(recipeCycle.rate, "cycles/s;baseline=zk_recipe")
		b.ReportMetric(p50, "acquire_p50_s")
		b.ReportMetric(recipeCycle.p50, "acquire_p50_s;baseline=zk_recipe")
		b.ReportMetric(p99, "acquire_p99_s")
		b.ReportMetric(recipeCycle.p99, "acquire_p99_s;baseline=zk_recipe")
	})

	// contended runs n cycles in all over the contenders and returns handoffs per second.
	contended := func(b *testing.B, cycle func(i int) error) float64 {
		var wg sync.WaitGroup
		per := (b.N + contenders - 1) / contenders
		b.ResetTimer()
		start := time.Now()
		for i := range contenders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					if err := cycle(i); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return float64(per*contenders) / time.Since(start).Seconds()
	}

	b.Run("zk_recipe_contended_handoff", func(b *testing.B) {
		ls := make([]*zk.Lock, contenders)
		for i := range ls {
			ls[i] = zk.NewLock(conn, root+"/recipe/contended", acl)
		}
		recipeHandoff.rate = contended(b, func(i int) error {
			if err := ls[i].Lock(); err != nil {
				return err
			}
			return ls[i].Unlock()
		})
		b.ReportMetric(recipeHandoff.rate, "handoffs/s")
	})

	b.Run("contended_handoff", func(b *testing.B) {
		ctx := context.Background()
		rate := contended(b, func(int) error {
			r, err := s.CreateRef(ctx, "contended", RefOptions{Lease: time.Minute})
			if err != nil {
				return err
			}
			if _, err := s.Acquire(ctx, r); err != nil {
				return err
			}
			return s.Release(ctx, r)
		})
		b.ReportMetric(rate, "handoffs/s")
		b.ReportMetric(recipeHandoff.rate, "handoffs/s;baseline=zk_recipe")
	})

	b.Run("inprocess_uncontended_cycle", func(b *testing.B) {
		ip := NewInProcess(InProcessConfig{})
		defer ip.Close()
		ctx := context.Background()
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			r, err := ip.CreateRef(ctx, "uncontended", RefOptions{Lease: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := ip.Acquire(ctx, r); err != nil {
				b.Fatal(err)
			}
			if err := ip.Release(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "cycles/s")
	})
}
