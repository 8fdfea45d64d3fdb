package applier

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// While far behind, the applier logs its progress every 5 seconds, from the second line on with
// the rate since the line before and the time left at that rate.
func TestCatchUpProgressLog(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1_700_000_000, 0)
	cfg := Config{Site: "b", Addr: "127.0.0.1:3306", User: "u", Streams: []string{"binlog/a/s"}}
	a, err := New(cfg, nil, slog.New(slog.NewTextHandler(&buf, nil)), nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	w := newWorker(a, "binlog/a/s", false)
	w.lag(100_000)
	if line := buf.String(); !strings.Contains(line, "behind=100000") || strings.Contains(line, "eta=") {
		t.Fatalf("first line: %q, want behind=100000 and no rate yet", line)
	}
	buf.Reset()
	now, w.pos = now.Add(5*time.Second), 20_000 // 4,000 entries/s; 80,000 to go
	w.lag(100_000)
	if line := buf.String(); !strings.Contains(line, "entries_per_s=4000") || !strings.Contains(line, "eta=20s") {
		t.Fatalf("second line: %q, want entries_per_s=4000 eta=20s", line)
	}
	buf.Reset()
	now = now.Add(time.Second)
	w.lag(100_000)
	if buf.Len() != 0 {
		t.Fatalf("a line a second after the last: %q", buf.String())
	}
}

// Status gives each stream's apply rate over the last few seconds and the time left at that rate.
func TestStatusRateAndETA(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	cfg := Config{Site: "b", Addr: "127.0.0.1:3306", User: "u", Streams: []string{"binlog/a/s"}}
	a, err := New(cfg, nil, slog.New(slog.DiscardHandler), nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	w := newWorker(a, "binlog/a/s", false)
	w.mu.head = 100_000
	w.setApplied(1_000)
	if st := w.status(); st.Rate != 0 || st.ETA != 0 {
		t.Fatalf("after one sample: rate %v, eta %v; want none yet", st.Rate, st.ETA)
	}
	for range 5 { // 2,000 entries a second for five seconds
		now = now.Add(time.Second)
		w.setApplied(w.mu.applied + 2_000)
	}
	if st := w.status(); st.Rate != 2_000 || st.ETA != 45*time.Second { // 89,000 entries left
		t.Fatalf("rate %v, eta %v; want 2000 entries/s and 45 s left", st.Rate, st.ETA)
	}
	now = now.Add(2 * rateWindow) // nothing applied since
	if st := w.status(); st.Rate != 0 || st.ETA != 0 {
		t.Fatalf("idle: rate %v, eta %v; want none", st.Rate, st.ETA)
	}
}
