package feeds

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

// relayFixture connects to cfg's NATS, opens an embedded journal and runs a relay of site "a"
// over them (metrics on reg, if not nil), all until the test ends, with the JetStream stream
// deleted then.
func relayFixture(t *testing.T, cfg Config, reg prometheus.Registerer) (*Conn, *journal.EmbeddedStore, *Relay) {
	t.Helper()
	c := connect(t, cfg)
	deleteStreamAtEnd(t, c, cfg.Stream.Name)
	store := openStore(t, t.TempDir())
	r, err := NewRelay(cfg, c, store, "a", discard(), reg)
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	return c, store, r
}

// A followed stream (a key stream) is relayed from its position, dropped once idle with its
// position saved, and followed again by the next append; JetStream holds each entry once.
func TestRelayFollowsUntilIdle(t *testing.T) {
	cfg := testConfig(t, testenv.NATS(t))
	cfg.Relay.FollowIdle = 300 * time.Millisecond
	c, store, r := relayFixture(t, cfg, nil)
	ctx := context.Background()
	const k = "kv/shop/carts/00ff"
	if err := r.Follow("bad stream", 1); err == nil {
		t.Error("Follow accepted a stream id with a space")
	}
	for round, to := range []uint64{5, 8, 20} {
		from := []uint64{1, 6, 9}[round]
		if err := appendRange(ctx, store, nil, k, from, to, 2); err != nil {
			t.Fatal(err)
		}
		if err := r.Follow(k, to); err != nil {
			t.Fatal(err)
		}
		waitConfirmed(t, r, k, to, 30*time.Second)
		testenv.WaitFor(t, 10*time.Second, "the idle stream to be dropped", func() bool { return !r.Relaying(k) })
		if pos, _, err := store.Position(ctx, RelayConsumer, k); err != nil || pos != to {
			t.Fatalf("round %d: position after idle = %d, %v; want %d", round, pos, err, to)
		}
	}
	checkExactlyOnce(t, "JetStream stream", readRaw(t, c.js, cfg.Stream.Name), map[string]uint64{k: 20})

	// Notify keeps a followed stream alive; a stream neither owned nor followed ignores it.
	r.Notify(k, 20)
	if r.Relaying(k) {
		t.Error("Notify made the relay follow a stream")
	}
}

// Entries that no relay published (their appender crashed before) are found by the sweeper,
// under its prefixes only, at its first sweep and, later, once a stream's position has not moved
// since the sweep before.
func TestRelaySweeperFollowsAbandonedStreams(t *testing.T) {
	cfg := testConfig(t, testenv.NATS(t))
	cfg.Relay.FollowIdle = 200 * time.Millisecond
	cfg.Relay.SweepInterval = 200 * time.Millisecond
	reg := prometheus.NewRegistry()
	c, store, r := relayFixture(t, cfg, reg)
	ctx := context.Background()
	const lost, done, other = "kv/shop/carts/01", "kv/shop/carts/02", "binlog/a/src"
	for _, s := range []string{lost, done, other} {
		if err := appendRange(ctx, store, nil, s, 1, 10, 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.SetPosition(ctx, RelayConsumer, done, 10); err != nil { // published already
		t.Fatal(err)
	}
	if err := r.RunSweeper(ctx, ""); err == nil {
		t.Error("RunSweeper accepted an empty prefix")
	}
	sctx, stop := context.WithCancel(ctx)
	sweeperDone := make(chan error, 1)
	go func() { sweeperDone <- r.RunSweeper(sctx, "kv/") }()
	defer func() {
		stop()
		if err := <-sweeperDone; err != nil {
			t.Errorf("RunSweeper: %v", err)
		}
	}()
	waitConfirmed(t, r, lost, 10, 30*time.Second)
	testenv.WaitFor(t, 10*time.Second, "the swept stream to be dropped when idle", func() bool { return !r.Relaying(lost) })

	// Appended again with nobody told: found two sweeps later.
	if err := appendRange(ctx, store, nil, lost, 11, 15, 5); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the sweeper to publish the new entries", func() bool {
		pos, _, _ := store.Position(ctx, RelayConsumer, lost)
		return pos == 15
	})
	if r.Relaying(other) || r.Relaying(done) {
		t.Errorf("the sweeper followed a stream outside its prefix or one that was published (%s %v, %s %v)",
			other, r.Relaying(other), done, r.Relaying(done))
	}
	checkExactlyOnce(t, "JetStream stream", readRaw(t, c.js, cfg.Stream.Name), map[string]uint64{lost: 15})
	if got := gather(t, reg)["music_feeds_swept_streams_total"]; got < 2 {
		t.Errorf("music_feeds_swept_streams_total = %v, want at least 2", got)
	}
}

// Two instances run the election of one stream's relay: one relays it at a time, the other takes
// over when the first steps down, and JetStream holds every entry once, in order.
func TestRelayElectedPerStream(t *testing.T) {
	cfg := testConfig(t, testenv.NATS(t))
	c := connect(t, cfg)
	deleteStreamAtEnd(t, c, cfg.Stream.Name)
	store := openStore(t, t.TempDir())
	lk := locks.NewInProcess(locks.InProcessConfig{})
	t.Cleanup(func() { _ = lk.Close() })
	const stream = "binlog/a/orders-db"
	ctx := context.Background()
	relays := map[string]*Relay{}
	stops := map[string]context.CancelFunc{}
	ended := map[string]chan error{}
	for _, name := range []string{"one", "two"} {
		r, err := NewRelay(cfg, c, store, "a", discard(), nil)
		if err != nil {
			t.Fatal(err)
		}
		runRelay(t, r)
		ectx, stop := context.WithCancel(ctx)
		ch := make(chan error, 1)
		go func() { ch <- r.RunOwnedElected(ectx, lk, stream, name) }()
		relays[name], stops[name], ended[name] = r, stop, ch
	}
	t.Cleanup(func() {
		for name, stop := range stops {
			stop()
			if err := <-ended[name]; err != nil {
				t.Errorf("RunOwnedElected %s: %v", name, err)
			}
		}
	})
	leader := func() string {
		var got string
		testenv.WaitFor(t, 10*time.Second, "exactly one relay of the stream", func() bool {
			n := 0
			for name, r := range relays {
				if r.Relaying(stream) {
					got, n = name, n+1
				}
			}
			return n == 1
		})
		return got
	}
	first := leader()
	if err := appendRange(ctx, store, relays[first], stream, 1, 300, 10); err != nil {
		t.Fatal(err)
	}
	waitConfirmed(t, relays[first], stream, 300, 30*time.Second)

	stops[first]() // the leader steps down (its instance stops campaigning)
	if err := <-ended[first]; err != nil {
		t.Fatal(err)
	}
	ended[first] <- nil // for the cleanup
	second := leader()
	if second == first {
		t.Fatalf("%s still relays after stepping down", first)
	}
	if err := appendRange(ctx, store, relays[second], stream, 301, 600, 10); err != nil {
		t.Fatal(err)
	}
	waitConfirmed(t, relays[second], stream, 600, 30*time.Second)
	checkExactlyOnce(t, "JetStream stream", readRaw(t, c.js, cfg.Stream.Name), map[string]uint64{stream: 600})
	for _, s := range []string{"binlog/a.b/x=y z", strings.Repeat("x/", 150)} {
		if err := locks.ValidateName(RelayElection(s)); err != nil {
			t.Errorf("RelayElection(%q): %v", s, err)
		}
	}
	if RelayElection("binlog/a.b/x") == RelayElection("binlog/a/b/x") {
		t.Error("two streams share a relay election")
	}
}
