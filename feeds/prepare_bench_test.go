package feeds

import (
	"context"
	"testing"

	"github.com/musicd/musicd/journal"
)

// BenchmarkPrepare measures the relay's work per entry before publication: reading the embedded
// journal and building the messages (no NATS), for entries like the throughput benchmark's. One
// op is one entry (b.N rounded up to whole reads of the stream).
func BenchmarkPrepare(b *testing.B) {
	const entries, payload, stream = 4096, 200, "part/prep"
	ctx := context.Background()
	store := openStore(b, b.TempDir())
	es := make([]journal.Entry, 0, entries)
	for s := uint64(1); s <= entries; s++ {
		es = append(es, testEntry(stream, s, payload))
	}
	if err := store.Append(ctx, stream, 1, es); err != nil {
		b.Fatal(err)
	}
	r := &Relay{cfg: DefaultConfig().Relay, subjects: Subjects{Prefix: "music"}, store: store, site: "a"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += entries {
		out := make(chan prepared, 2)
		go r.prepare(ctx, stream, 1, "", 0, 1<<20, 1<<20, out)
		n := 0
		for p := range out {
			if p.err != nil {
				b.Fatal(p.err)
			}
			n += len(p.msgs)
		}
		if n != entries {
			b.Fatalf("prepared %d, want %d", n, entries)
		}
	}
}

// BenchmarkEnvelope measures the envelope encoder alone on an entry like the throughput
// benchmark's.
func BenchmarkEnvelope(b *testing.B) {
	e := testEntry("part/prep", 12345, 200)
	buf := make([]byte, 0, 4096)
	b.SetBytes(int64(len(appendEnvelope(buf, &e, "a", false))))
	for i := 0; i < b.N; i++ {
		buf = appendEnvelope(buf[:0], &e, "a", false)
	}
}
