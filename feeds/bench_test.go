package feeds

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
)

// BenchmarkFeeds measures the relay against the shared nats-server (JetStream, file storage,
// loopback), make bench BENCH=feeds:
//   - throughput: entries relayed from the embedded journal into JetStream per second (read,
//     envelope, asynchronous publish, in-order confirmation, position saves), beside nats.go's
//     own asynchronous JetStream publish of the same messages (same subjects, headers and
//     bodies, prepared beforehand) with the same number in flight, in the same run;
//   - append_to_receipt: latency from the start of a single-entry journal append to its receipt
//     by a Subscribe handler (fast path: Notify after the append), p50 and p99.
func BenchmarkFeeds(b *testing.B) {
	const entries, payload = 20_000, 200
	url := testenv.NATS(b)

	b.Run("throughput", func(b *testing.B) {
		cfg := testConfig(b, url)
		c := connect(b, cfg)
		deleteStreamAtEnd(b, c, cfg.Stream.Name)
		rawCfg := cfg.Stream
		rawCfg.Name += "_RAW"
		rawCfg.SubjectPrefix += "raw"
		deleteStreamAtEnd(b, c, rawCfg.Name)
		ctx := context.Background()
		if _, err := EnsureStream(ctx, c.js, rawCfg); err != nil {
			b.Fatal(err)
		}
		store := openStore(b, b.TempDir())
		r, err := NewRelay(cfg, c, store, "a", discard(), nil)
		if err != nil {
			b.Fatal(err)
		}
		runRelay(b, r)
		rawJS, err := jetstream.New(c.NC, jetstream.WithPublishAsyncMaxPending(cfg.Relay.MaxInFlight))
		if err != nil {
			b.Fatal(err)
		}
		var relayTime, rawTime time.Duration
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			stream := fmt.Sprintf("part/bench%d", i)
			msgs := make([]*nats.Msg, 0, entries)
			for seq := uint64(1); seq <= entries; seq += 1000 {
				es := make([]journal.Entry, 0, 1000)
				for s := seq; s < seq+1000; s++ {
					es = append(es, testEntry(stream, s, payload))
				}
				if err := store.Append(ctx, stream, 1, es); err != nil {
					b.Fatal(err)
				}
				for k := range es {
					es[k].Epoch = 1
					m, err := buildMsg(Subjects{Prefix: rawCfg.SubjectPrefix}, &es[k], "a", "", 0)
					if err != nil {
						b.Fatal(err)
					}
					msgs = append(msgs, m)
				}
			}
			b.StartTimer()

			start := time.Now()
			if err := r.Own(stream); err != nil {
				b.Fatal(err)
			}
			for {
				if got, ok := r.Confirmed(stream); ok && got == entries {
					break
				}
				time.Sleep(time.Millisecond) // polling granularity of the measurement, not synchronization
			}
			relayTime += time.Since(start)

			start = time.Now()
			for _, m := range msgs {
				if _, err := rawJS.PublishMsgAsync(m); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-rawJS.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("raw publish not acknowledged within a minute")
			}
			rawTime += time.Since(start)
			r.Disown(stream)
		}
		n := float64(b.N * entries)
		b.ReportMetric(n/relayTime.Seconds(), "msgs/s")
		b.ReportMetric(n/rawTime.Seconds(), "msgs/s;baseline=raw_async_publish")
	})

	b.Run("append_to_receipt", func(b *testing.B) {
		cfg := testConfig(b, url)
		c := connect(b, cfg)
		deleteStreamAtEnd(b, c, cfg.Stream.Name)
		if _, err := EnsureStream(context.Background(), c.js, cfg.Stream); err != nil {
			b.Fatal(err)
		}
		store := openStore(b, b.TempDir())
		r, err := NewRelay(cfg, c, store, "a", discard(), nil)
		if err != nil {
			b.Fatal(err)
		}
		runRelay(b, r)
		const stream = "key/bench/t/k"
		if err := r.Own(stream); err != nil {
			b.Fatal(err)
		}
		received := make(chan uint64, 1)
		ctx, cancel := context.WithCancel(context.Background())
		subDone := make(chan error, 1)
		go func() {
			subDone <- Subscribe(ctx, c.js, SubscribeOptions{Stream: cfg.Stream.Name, Filter: Subjects{Prefix: cfg.Stream.SubjectPrefix}.ChangesAll()},
				func(_ context.Context, ch Change) error { received <- ch.Seq; return nil })
		}()
		defer func() {
			cancel()
			if err := <-subDone; err != nil && !errors.Is(err, context.Canceled) {
				b.Error(err)
			}
		}()
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			seq := uint64(i + 1)
			start := time.Now()
			if err := store.Append(ctx, stream, 1, []journal.Entry{testEntry(stream, seq, payload)}); err != nil {
				b.Fatal(err)
			}
			r.Notify(stream, seq)
			select {
			case got := <-received:
				if got != seq {
					b.Fatalf("received seq %d, want %d", got, seq)
				}
			case <-time.After(30 * time.Second):
				b.Fatalf("seq %d not received within 30s", seq)
			}
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(lat[len(lat)/2].Seconds(), "p50_s")
		b.ReportMetric(lat[min(len(lat)-1, len(lat)*99/100)].Seconds(), "p99_s")
	})
}
