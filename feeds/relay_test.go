package feeds

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
)

// testConfig is a configuration against url with a JetStream stream and subjects of the test's
// own, small timeouts, and the stream deleted when the test ends.
func testConfig(t testing.TB, url string) Config {
	cfg := DefaultConfig()
	cfg.URLs = []string{url}
	cfg.ReconnectWait = 50 * time.Millisecond
	name := strings.ToUpper(testenv.UniqueName("FEEDS_"))
	cfg.Stream.Name = name
	cfg.Stream.SubjectPrefix = strings.ToLower(name)
	cfg.Stream.MaxBytes = 256 << 20
	cfg.Stream.DuplicateWindow = 10 * time.Minute
	cfg.Relay.AckTimeout = 2 * time.Second
	cfg.Relay.RetryMaxInterval = 300 * time.Millisecond
	cfg.Relay.PollInterval = 100 * time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func connect(t testing.TB, cfg Config) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Connect(ctx, cfg, nil, "feeds-test", discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// deleteStreamAtEnd removes the test's JetStream stream (before the connection closes).
func deleteStreamAtEnd(t testing.TB, c *Conn, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Logf("delete stream %s: %v", name, err)
		}
	})
}

func openStore(t testing.TB, dir string) *journal.EmbeddedStore {
	t.Helper()
	s, err := journal.OpenEmbedded(dir, discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() }) // registered before runRelay's cleanup, so it runs after
	return s
}

// testEntry is entry seq of stream: an insert into shop.orders with a payload of size bytes.
func testEntry(stream string, seq uint64, size int) journal.Entry {
	return journal.Entry{
		Stream: stream, Seq: seq, HLC: journal.Timestamp{Wall: time.Now().UnixNano()}, Origin: "a",
		Op: journal.OpInsert, Database: "shop", Table: "orders",
		Key:   journal.Row{{Name: "id", Value: journal.Uint(seq)}},
		After: journal.Row{{Name: "id", Value: journal.Uint(seq)}, {Name: "note", Value: journal.String(strings.Repeat("n", size))}},
	}
}

// appendRange appends seqs from..to of stream in batches of batch, notifying n after each
// (n may be nil).
func appendRange(ctx context.Context, s journal.Store, n interface{ Notify(string, uint64) }, stream string, from, to uint64, batch int) error {
	for seq := from; seq <= to; {
		var es []journal.Entry
		for ; seq <= to && len(es) < batch; seq++ {
			es = append(es, testEntry(stream, seq, 40))
		}
		if err := s.Append(ctx, stream, 1, es); err != nil {
			return err
		}
		if n != nil {
			n.Notify(stream, es[len(es)-1].Seq)
		}
	}
	return nil
}

// runRelay runs r until the test ends.
func runRelay(t testing.TB, r *Relay) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("relay did not stop within 10s")
		}
	})
}

func waitConfirmed(t testing.TB, r *Relay, stream string, seq uint64, timeout time.Duration) {
	t.Helper()
	testenv.WaitFor(t, timeout, fmt.Sprintf("relay to confirm %s up to %d", stream, seq), func() bool {
		got, ok := r.Confirmed(stream)
		return ok && got >= seq
	})
}

type streamSeq struct {
	stream string
	seq    uint64
}

// readRaw reads the whole JetStream stream (n messages at least) with an ordered consumer and
// returns the (stream, seq) of every message, copies included, in stream order.
func readRaw(t testing.TB, js jetstream.JetStream, name string) []streamSeq {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	total := s.CachedInfo().State.Msgs
	cons, err := js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []streamSeq
	for uint64(len(out)) < total {
		batch, err := cons.Fetch(int(min(1000, total-uint64(len(out)))), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			seq, _ := strconv.ParseUint(m.Headers().Get(HeaderSeq), 10, 64)
			out = append(out, streamSeq{m.Headers().Get(HeaderStream), seq})
			n++
		}
		if n == 0 {
			t.Fatalf("read %d of %d messages: %v", len(out), total, batch.Error())
		}
	}
	return out
}

// subscribeAll subscribes with the helper and returns the changes it delivers until want of
// them have arrived; it fails the test on a timeout.
func subscribeAll(t testing.TB, js jetstream.JetStream, cfg Config, want int, opts SubscribeOptions) []Change {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts.Stream = cfg.Stream.Name
	opts.Filter = Subjects{Prefix: cfg.Stream.SubjectPrefix}.ChangesAll()
	var got []Change
	errDone := errors.New("done")
	err := Subscribe(ctx, js, opts, func(_ context.Context, c Change) error {
		got = append(got, c)
		if len(got) == want {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("Subscribe: %v after %d of %d changes", err, len(got), want)
	}
	return got
}

// checkExactlyOnce fails unless got holds, per stream, seqs 1..want[stream] once each, in order.
func checkExactlyOnce(t testing.TB, what string, got []streamSeq, want map[string]uint64) {
	t.Helper()
	next := map[string]uint64{}
	n := 0
	for i, g := range got {
		if next[g.stream]+1 != g.seq {
			t.Errorf("%s: message %d is %s seq %d, want seq %d (duplicate or out of order)", what, i, g.stream, g.seq, next[g.stream]+1)
			return
		}
		next[g.stream] = g.seq
		n++
	}
	for stream, last := range want {
		if next[stream] != last {
			t.Errorf("%s: %s ends at seq %d, want %d", what, stream, next[stream], last)
		}
	}
}

// gather returns the sum of every series of each metric family of reg.
func gather(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			out[mf.GetName()] += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

func changeSeqs(cs []Change) []streamSeq {
	out := make([]streamSeq, len(cs))
	for i, c := range cs {
		out[i] = streamSeq{c.Stream, c.Seq}
	}
	return out
}

// Two streams appended in batches of different sizes, with Notify (fast path) for one and
// without (catch-up by polling) for the other, reach JetStream once each, in order; metrics count
// them; a restarted relay publishes only what came after.
func TestRelayExactlyOnceInOrder(t *testing.T) {
	cfg := testConfig(t, testenv.NATS(t))
	c := connect(t, cfg)
	deleteStreamAtEnd(t, c, cfg.Stream.Name)
	store := openStore(t, t.TempDir())
	reg := prometheus.NewRegistry()
	r, err := NewRelay(cfg, c, store, "a", discard(), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const a, b = "key/shop/orders/1", "binlog/a/src"
	// Entries before the relay starts: caught up from position 0.
	if err := appendRange(ctx, store, nil, a, 1, 100, 7); err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	for _, s := range []string{a, b} {
		if err := r.Own(s); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { defer wg.Done(); errs <- appendRange(ctx, store, r, a, 101, 700, 1) }()
	go func() { defer wg.Done(); errs <- appendRange(ctx, store, nil, b, 1, 600, 50) }()
	wg.Wait()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	waitConfirmed(t, r, a, 700, 30*time.Second)
	waitConfirmed(t, r, b, 600, 30*time.Second)

	want := map[string]uint64{a: 700, b: 600}
	checkExactlyOnce(t, "JetStream stream", readRaw(t, c.js, cfg.Stream.Name), want)
	checkExactlyOnce(t, "Subscribe", changeSeqs(subscribeAll(t, c.js, cfg, 1300, SubscribeOptions{})), want)
	metrics := gather(t, reg)
	if got := metrics["music_feeds_published_total"]; got != 1300 {
		t.Errorf("music_feeds_published_total = %v, want 1300", got)
	}
	for _, name := range []string{"music_feeds_relay_lag_entries", "music_feeds_publish_errors_total", "music_feeds_retries_total", "music_feeds_relayed_streams"} {
		if _, ok := metrics[name]; !ok {
			t.Errorf("metric %s not registered", name)
		}
	}
	// Positions are saved (at the latest on the next poll).
	testenv.WaitFor(t, 10*time.Second, "positions saved", func() bool {
		pa, _, _ := store.Position(ctx, RelayConsumer, a)
		pb, _, _ := store.Position(ctx, RelayConsumer, b)
		return pa == 700 && pb == 600
	})
	// Resuming from a position: StartSeq and Positions skip what was handled.
	sub := subscribeAll(t, c.js, cfg, 1, SubscribeOptions{Positions: map[string]uint64{a: 700, b: 599}})
	if sub[0].Stream != b || sub[0].Seq != 600 {
		t.Errorf("resumed subscription starts at %s %d, want %s 600", sub[0].Stream, sub[0].Seq, b)
	}

	// Disowned streams are not relayed; owned again, they continue from their position, and
	// the anchor re-publication is dropped by JetStream as a duplicate.
	r.Disown(a)
	if err := appendRange(ctx, store, r, a, 701, 710, 5); err != nil {
		t.Fatal(err)
	}
	if err := r.Own(a); err != nil {
		t.Fatal(err)
	}
	waitConfirmed(t, r, a, 710, 30*time.Second)
	want[a] = 710
	checkExactlyOnce(t, "JetStream stream after Disown/Own", readRaw(t, c.js, cfg.Stream.Name), want)
}

// A row captured from a binlog and a REST write appear on their documented subjects, to core
// NATS subscribers too, with the documented envelope.
func TestRelaySubjectsAndEnvelope(t *testing.T) {
	cfg := testConfig(t, testenv.NATS(t))
	c := connect(t, cfg)
	deleteStreamAtEnd(t, c, cfg.Stream.Name)
	store := openStore(t, t.TempDir())
	r, err := NewRelay(cfg, c, store, "a", discard(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Stream.SubjectPrefix
	rows := make(chan *nats.Msg, 1)
	puts := make(chan *nats.Msg, 1)
	for subj, ch := range map[string]chan *nats.Msg{p + ".changes.shop.orders.insert": rows, p + ".changes.app.users.*": puts} {
		sub, err := c.NC.ChanSubscribe(subj, ch)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	if err := c.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	ctx := context.Background()
	binlogRow := journal.Entry{Stream: "binlog/a/db1", Seq: 1, Origin: "a", HLC: journal.Timestamp{Wall: 1_700_000_000_000_000_000},
		Source: journal.Source{GTID: "1-1-5", File: "bin.000001", Pos: 900}, Tx: journal.Tx{ID: "1-1-5", Count: 1, Last: true},
		Op: journal.OpInsert, Database: "shop", Table: "orders",
		Key: journal.Row{{Name: "id", Value: journal.Int(1)}}, After: journal.Row{{Name: "id", Value: journal.Int(1)}, {Name: "total", Value: journal.Decimal("9.90")}}}
	restPut := journal.Entry{Stream: "key/app/users/u1", Seq: 1, Origin: "a", HLC: journal.Timestamp{Wall: 1_700_000_000_000_000_000},
		Source: journal.Source{RequestID: "req-1"}, Op: journal.OpPut, Database: "app", Table: "users",
		Key: journal.Row{{Name: "id", Value: journal.String("u1")}}, After: journal.Row{{Name: "id", Value: journal.String("u1")}, {Name: "name", Value: journal.String("Ann")}}}
	for _, e := range []journal.Entry{binlogRow, restPut} {
		if err := r.Own(e.Stream); err != nil {
			t.Fatal(err)
		}
		if err := store.Append(ctx, e.Stream, 3, []journal.Entry{e}); err != nil {
			t.Fatal(err)
		}
		r.Notify(e.Stream, e.Seq)
	}
	recv := func(ch chan *nats.Msg) *nats.Msg {
		select {
		case m := <-ch:
			return m
		case <-time.After(20 * time.Second):
			t.Fatal("no message within 20s")
		}
		return nil
	}
	m := recv(rows)
	env, err := DecodeEnvelope(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(nats.MsgIdHdr) != "binlog/a/db1:1" || m.Header.Get(HeaderOrigin) != "a" || env.Op != "c" ||
		string(env.After) != `{"id":1,"total":"9.90"}` || env.Before != nil && string(env.Before) != "null" ||
		*env.Source.GTID != "1-1-5" || *env.Source.File != "bin.000001" || env.Source.Pos != 900 || env.Source.Epoch != 3 ||
		env.Transaction == nil || !env.Transaction.Last || env.TsMs != 1_700_000_000_000 {
		t.Errorf("binlog row: %s %v\n%s", m.Subject, m.Header, m.Data)
	}
	m = recv(puts)
	env, err = DecodeEnvelope(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != p+".changes.app.users.put" || env.Op != "put" || *env.Source.RequestID != "req-1" ||
		env.Source.GTID != nil || env.Transaction != nil || string(env.After) != `{"id":"u1","name":"Ann"}` {
		t.Errorf("REST put: %s %v\n%s", m.Subject, m.Header, m.Data)
	}
}

// NATS stopped in the middle of a stream and started again: the relay retries, never drops, and
// the backlog goes out in order; a JetStream subscriber gets every entry exactly once, in order.
func TestRelayNATSRestart(t *testing.T) {
	srv := testenv.StartPrivate(t, "nats")
	cfg := testConfig(t, "nats://"+srv.Addr)
	c := connect(t, cfg)
	store := openStore(t, t.TempDir())
	r, err := NewRelay(cfg, c, store, "a", discard(), nil)
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	const stream, total = "part/p1", 3000
	if err := r.Own(stream); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	appended := make(chan error, 1)
	var head sync.Mutex
	last := uint64(0)
	go func() {
		for seq := uint64(1); seq <= total; seq += 10 {
			if err := appendRange(ctx, store, r, stream, seq, seq+9, 10); err != nil {
				appended <- err
				return
			}
			head.Lock()
			last = seq + 9
			head.Unlock()
		}
		appended <- nil
	}()
	waitConfirmed(t, r, stream, 300, 30*time.Second)
	srv.Stop(t)
	stoppedAt, _ := r.Confirmed(stream)
	if err := <-appended; err != nil { // the journal takes appends while NATS is down
		t.Fatal(err)
	}
	head.Lock()
	t.Logf("NATS stopped with %d of %d confirmed; %d appended while down", stoppedAt, total, last-stoppedAt)
	head.Unlock()
	srv.Start(t)
	waitConfirmed(t, r, stream, total, 60*time.Second)

	got := changeSeqs(subscribeAll(t, c.js, cfg, total, SubscribeOptions{}))
	checkExactlyOnce(t, "Subscribe", got, map[string]uint64{stream: total})
	raw := readRaw(t, c.js, cfg.Stream.Name)
	t.Logf("JetStream stream holds %d messages for %d entries", len(raw), total)
}

// The test binary doubles as a musicd that appends and relays (TestMain), so that a test can
// kill it with SIGKILL in the middle of a stream.
func TestMain(m *testing.M) {
	if os.Getenv("MUSICD_FEEDS_TEST_CHILD") == "1" {
		os.Exit(childRelay())
	}
	os.Exit(m.Run())
}

// childRelay appends to a stream and relays it until it is killed (or 100,000 entries).
func childRelay() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	cfg := DefaultConfig()
	cfg.URLs = []string{os.Getenv("FEEDS_URL")}
	cfg.Stream.Name, cfg.Stream.SubjectPrefix = os.Getenv("FEEDS_STREAM"), os.Getenv("FEEDS_PREFIX")
	cfg.Stream.MaxBytes, cfg.Stream.DuplicateWindow = 256<<20, 10*time.Minute
	cfg.Relay.PollInterval = 50 * time.Millisecond // positions saved often: killed mid-way between saves
	c, err := Connect(context.Background(), cfg, nil, "feeds-child", discard())
	if err != nil {
		return fail(err)
	}
	store, err := journal.OpenEmbedded(os.Getenv("FEEDS_DIR"), discard())
	if err != nil {
		return fail(err)
	}
	r, err := NewRelay(cfg, c, store, "a", discard(), nil)
	if err != nil {
		return fail(err)
	}
	stream := os.Getenv("FEEDS_JOURNAL_STREAM")
	if err := r.Own(stream); err != nil {
		return fail(err)
	}
	go func() { _ = r.Run(context.Background()) }()
	if err := appendRange(context.Background(), store, r, stream, 1, 100_000, 5); err != nil {
		return fail(err)
	}
	return 0
}

// musicd killed with -9 in the middle of a stream: a new relay on the same journal publishes the
// rest, and JetStream holds every entry exactly once, in order.
func TestRelayKilledMidStream(t *testing.T) {
	url := testenv.NATS(t)
	cfg := testConfig(t, url)
	c := connect(t, cfg)
	deleteStreamAtEnd(t, c, cfg.Stream.Name)
	dir := filepath.Join(t.TempDir(), "journal")
	const stream = "binlog/a/crash"
	child := exec(t, "MUSICD_FEEDS_TEST_CHILD=1", "FEEDS_URL="+url, "FEEDS_STREAM="+cfg.Stream.Name, "FEEDS_PREFIX="+cfg.Stream.SubjectPrefix,
		"FEEDS_DIR="+dir, "FEEDS_JOURNAL_STREAM="+stream)
	testenv.WaitFor(t, 30*time.Second, "the child relay to publish 1000 entries and save a position", func() bool {
		s, err := c.js.Stream(context.Background(), cfg.Stream.Name)
		return err == nil && s.CachedInfo().State.Msgs >= 1000
	})
	child.kill9(t)

	store := openStore(t, dir)
	ctx := context.Background()
	h, err := store.Head(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	pos, _, _ := store.Position(ctx, RelayConsumer, stream)
	s, _ := c.js.Stream(ctx, cfg.Stream.Name)
	t.Logf("killed at head %d, saved position %d, %d in JetStream", h.Seq, pos, s.CachedInfo().State.Msgs)
	total := h.Seq + 100
	r, err := NewRelay(cfg, c, store, "a", discard(), nil)
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	if err := r.Own(stream); err != nil {
		t.Fatal(err)
	}
	if err := appendRange(ctx, store, r, stream, h.Seq+1, total, 5); err != nil {
		t.Fatal(err)
	}
	waitConfirmed(t, r, stream, total, 30*time.Second)
	checkExactlyOnce(t, "JetStream stream", readRaw(t, c.js, cfg.Stream.Name), map[string]uint64{stream: total})
	checkExactlyOnce(t, "Subscribe", changeSeqs(subscribeAll(t, c.js, cfg, int(total), SubscribeOptions{})), map[string]uint64{stream: total})
}

// A copy stored out of order (here: entry 5 left in JetStream by an earlier relay whose
// publication of 1-4 failed) is detected from JetStream's acknowledgement, and the relay
// publishes again from there under new message ids: a subscriber still gets every entry once,
// in order.
func TestRelayRepairsOutOfOrderStore(t *testing.T) {
	cfg := testConfig(t, testenv.NATS(t))
	c := connect(t, cfg)
	deleteStreamAtEnd(t, c, cfg.Stream.Name)
	store := openStore(t, t.TempDir())
	ctx := context.Background()
	const stream, total = "part/p9", 40
	if err := appendRange(ctx, store, nil, stream, 1, total, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureStream(ctx, c.js, cfg.Stream); err != nil {
		t.Fatal(err)
	}
	es, err := store.Read(ctx, stream, 5, 1)
	if err != nil {
		t.Fatal(err)
	}
	stray, err := buildMsg(Subjects{Prefix: cfg.Stream.SubjectPrefix}, &es[0], "a", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.js.PublishMsg(ctx, stray); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := NewRelay(cfg, c, store, "a", discard(), reg)
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	if err := r.Own(stream); err != nil {
		t.Fatal(err)
	}
	waitConfirmed(t, r, stream, total, 30*time.Second)
	if got := gather(t, reg)["music_feeds_publish_errors_total"]; got < 1 {
		t.Errorf("music_feeds_publish_errors_total = %v, want the out-of-order store counted", got)
	}
	raw := readRaw(t, c.js, cfg.Stream.Name)
	if raw[0].seq != 5 || len(raw) <= total {
		t.Errorf("JetStream stream %v: want the stray 5 first, then re-publications", raw)
	}
	got := changeSeqs(subscribeAll(t, c.js, cfg, total, SubscribeOptions{FromFirstSeq: true}))
	checkExactlyOnce(t, "Subscribe", got, map[string]uint64{stream: total})
	// Once the repair is confirmed the relay saves its position again and returns to plain ids.
	testenv.WaitFor(t, 10*time.Second, "position saved after the repair", func() bool {
		p, _, _ := store.Position(ctx, RelayConsumer, stream)
		return p == total
	})
}
