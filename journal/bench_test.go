package journal

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/musicd/musicd/internal/testenv"
)

// BenchmarkJournal measures both stores (make bench BENCH=journal). Every figure has, beside it,
// the same work done raw, in the same run:
//   - cassandra: the same rows written as unconditional unlogged batches through the same
//     driver (the fenced append adds the head check and one lightweight transaction per batch);
//   - embedded: the same keys and values written as one synced Pebble batch (the fenced append
//     adds the head read and the epoch and seq checks).
//
// Appends use 200-byte payloads and 8 writers, each on its own stream.
func BenchmarkJournal(b *testing.B) {
	b.Run("embedded", func(b *testing.B) {
		s := openEmbedded(b, b.TempDir())
		defer s.Close()
		raw := func(ctx context.Context, stream string, epoch uint64, es []Entry) error {
			enc, err := prepareBatch(stream, epoch, es)
			if err != nil {
				return err
			}
			batch := s.db.NewBatch()
			defer batch.Close()
			err = blocks(enc, func(i int, block [][]byte) error {
				return batch.Set(blockKey(stream, es[i+len(block)-1].Seq), appendBlock(nil, block), nil)
			})
			if err != nil {
				return err
			}
			return batch.Commit(pebble.Sync)
		}
		rawRead := func(ctx context.Context, stream string, from uint64, n int) (int, error) {
			it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: blockKey(stream, from), UpperBound: blockKey(stream, from+uint64(n)+blockEntries)})
			if err != nil {
				return 0, err
			}
			defer it.Close()
			got := 0
			for ok := it.First(); ok && got < n; ok = it.Next() {
				last := binary.BigEndian.Uint64(it.Key()[len(it.Key())-8:])
				err := scanBlock(it.Value(), last, func(seq uint64, _ []byte) bool {
					if seq >= from {
						got++
					}
					return got < n
				})
				if err != nil {
					return got, err
				}
			}
			return got, it.Error()
		}
		benchStore(b, s, raw, rawRead)
	})
	b.Run("cassandra", func(b *testing.B) {
		ks := testenv.UniqueName("journal_bench_")
		s, c := openCassandraStore(b, testenv.Cassandra(b), ks)
		defer c.Close()
		defer func() { _ = c.Session.Query(`DROP KEYSPACE ` + ks).Exec() }()
		raw := func(ctx context.Context, stream string, epoch uint64, es []Entry) error {
			enc, err := prepareBatch(stream, epoch, es)
			if err != nil {
				return err
			}
			return s.writeEntries(ctx, "raw/"+stream, epoch, es[0].Seq, enc)
		}
		rawRead := func(ctx context.Context, stream string, from uint64, n int) (int, error) {
			got, err := s.readRange(ctx, stream, from, from+uint64(n)-1, s.defaults.read)
			return len(got), err
		}
		benchStore(b, s, raw, rawRead)
	})
}

type rawAppend func(ctx context.Context, stream string, epoch uint64, es []Entry) error
type rawReader func(ctx context.Context, stream string, from uint64, n int) (int, error)

func benchStore(b *testing.B, s Store, raw rawAppend, rawRead rawReader) {
	ctx := context.Background()
	prefix := "bench/" + testenv.UniqueName("b")
	const writers = 8
	for _, batch := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("append_batch_%d", batch), func(b *testing.B) {
			round := prefix + "/" + strconv.Itoa(batch) + "-" + strconv.Itoa(b.N)
			rawRate := parallelAppends(b, writers, b.N, batch, func(w int, seq uint64, es []Entry) error {
				return raw(ctx, fmt.Sprintf("%s-raw-%d", round, w), 1, es)
			})
			b.ResetTimer()
			rate := parallelAppends(b, writers, b.N, batch, func(w int, seq uint64, es []Entry) error {
				return s.Append(ctx, fmt.Sprintf("%s-%d", round, w), 1, es)
			})
			b.ReportMetric(rate, "entries/s")
			b.ReportMetric(rawRate, "entries/s;baseline=raw")
		})
	}
	b.Run("append_latency_batch_1", func(b *testing.B) {
		stream := prefix + "/lat-" + strconv.Itoa(b.N)
		lat := func(fn func(seq uint64) error) []time.Duration {
			ds := make([]time.Duration, 0, b.N)
			for i := range b.N {
				start := time.Now()
				if err := fn(uint64(i + 1)); err != nil {
					b.Fatal(err)
				}
				ds = append(ds, time.Since(start))
			}
			return ds
		}
		rawLat := lat(func(seq uint64) error { return raw(ctx, stream+"-raw", 1, mkEntries(seq, 1, 200)) })
		b.ResetTimer()
		ours := lat(func(seq uint64) error { return s.Append(ctx, stream, 1, mkEntries(seq, 1, 200)) })
		b.ReportMetric(percentile(ours, 50).Seconds(), "p50_s")
		b.ReportMetric(percentile(rawLat, 50).Seconds(), "p50_s;baseline=raw")
		b.ReportMetric(percentile(ours, 99).Seconds(), "p99_s")
		b.ReportMetric(percentile(rawLat, 99).Seconds(), "p99_s;baseline=raw")
	})
	readStream := prefix + "/read"
	const readEntries = 20_000
	for first := uint64(1); first <= readEntries; first += 1000 {
		if err := s.Append(ctx, readStream, 1, mkEntries(first, 1000, 200)); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("read", func(b *testing.B) {
		var rawTook, took time.Duration
		for range b.N {
			start := time.Now()
			for from := uint64(1); from <= readEntries; from += 1000 {
				if n, err := rawRead(ctx, readStream, from, 1000); err != nil || n != 1000 {
					b.Fatalf("raw read at %d: %d %v", from, n, err)
				}
			}
			rawTook += time.Since(start)
			start = time.Now()
			r := NewReader(s, readStream, 1, 1000)
			for range readEntries {
				if _, ok, err := r.Next(ctx); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
			took += time.Since(start)
		}
		b.ReportMetric(float64(b.N*readEntries)/took.Seconds(), "entries/s")
		b.ReportMetric(float64(b.N*readEntries)/rawTook.Seconds(), "entries/s;baseline=raw")
	})
	var million sync.Once
	millionStream := prefix + "/million"
	b.Run("read_1M_memory", func(b *testing.B) {
		n := 1_000_000
		if v, err := strconv.Atoi(os.Getenv("MUSIC_BENCH_JOURNAL_MEMORY_ENTRIES")); err == nil && v > 0 {
			n = v
		}
		// Built once (the framework runs this sub-benchmark with b.N = 1 first, and a 1M read takes
		// well over the bench time, so it normally stops there).
		million.Do(func() {
			for first := uint64(1); first <= uint64(n); first += MaxBatchEntries {
				if err := s.Append(ctx, millionStream, 1, mkEntries(first, min(MaxBatchEntries, n-int(first)+1), 200)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ResetTimer()
		var growth, rate float64
		for range b.N {
			growth, rate = readMemory(b, s, millionStream, n)
		}
		b.ReportMetric(growth/(1<<20), "heap_growth_MB")
		b.ReportMetric(100, "heap_growth_MB;baseline=limit")
		b.ReportMetric(rate, "entries/s")
	})
}

// parallelAppends runs writers goroutines, each appending batches batches of size entries to its
// own stream through fn, and returns entries per second.
func parallelAppends(b *testing.B, writers, batches, size int, fn func(w int, seq uint64, es []Entry) error) float64 {
	per := (batches + writers - 1) / writers
	// Entries are built before the clock starts.
	work := make([][][]Entry, writers)
	for w := range writers {
		for i := range per {
			work[w] = append(work[w], mkEntries(uint64(i*size+1), size, 200))
		}
	}
	var wg sync.WaitGroup
	start := time.Now()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, es := range work[w] {
				if err := fn(w, es[0].Seq, es); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(writers*per*size) / time.Since(start).Seconds()
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// readMemory reads n entries of stream with a Reader while sampling the heap, and returns the
// peak heap growth in bytes over the heap before reading, and the read rate.
func readMemory(b *testing.B, s Store, stream string, n int) (float64, float64) {
	var took time.Duration
	growth := testenv.PeakHeapGrowth(func() {
		start := time.Now()
		r := NewReader(s, stream, 1, 1000)
		for i := range n {
			e, ok, err := r.Next(context.Background())
			if err != nil || !ok || e.Seq != uint64(i+1) {
				b.Fatalf("entry %d: %v %v", i+1, ok, err)
			}
		}
		took = time.Since(start)
	})
	return growth, float64(n) / took.Seconds()
}
