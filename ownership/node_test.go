package ownership

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/policies"
)

// testPolicy: three sites; "orders" is one partition preferring a, then b, then c; "users" is cut
// into 6 hash buckets spread over the live sites.
func testPolicy(grace time.Duration) policies.Ownership {
	return policies.Ownership{
		Sites:         []string{"a", "b", "c"},
		FailoverGrace: grace,
		Partitions: []policies.PartitionSet{
			{Name: "orders", Tables: []string{"shop.orders"},
				Placement: policies.Placement{Mode: policies.PlacePreferred, Sites: []string{"a", "b", "c"}}},
			{Name: "users", Tables: []string{"shop.users"}, Hash: &policies.HashPartitioning{Columns: []string{"id"}, Buckets: 6},
				Placement: policies.Placement{Mode: policies.PlaceSpread}},
		},
	}
}

// history records every node's events in one order (one process, one clock).
type history struct {
	mu     sync.Mutex
	events []Event
}

func (h *history) add(ev Event) {
	h.mu.Lock()
	h.events = append(h.events, ev)
	h.mu.Unlock()
}

func (h *history) snapshot() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events)
}

// checkOneOwner fails if, for some partition, a serving event comes while another site's serving
// has not ended (lost or draining) in the recorded order.
func checkOneOwner(t *testing.T, evs []Event) {
	t.Helper()
	serving := map[string]string{} // partition -> instance serving it
	for _, ev := range evs {
		switch ev.Kind {
		case EventServing:
			if cur, ok := serving[ev.Partition]; ok && cur != ev.Instance {
				t.Errorf("partition %s: %s serves (epoch %d) while %s still serves", ev.Partition, ev.Instance, ev.Epoch, cur)
			}
			serving[ev.Partition] = ev.Instance
		case EventLost, EventDraining:
			if serving[ev.Partition] == ev.Instance {
				delete(serving, ev.Partition)
			}
		}
	}
}

type testNode struct {
	*Node
	site    string
	cancel  context.CancelFunc
	done    chan struct{}
	catchUp chan catchUp
}

type catchUp struct {
	partition string
	epoch     uint64
	unclean   bool
}

// start runs a Node of site over svc and store until the test ends (or stop).
func start(t *testing.T, site string, pol policies.Ownership, svc locks.Service, store journal.Store, h *history) *testNode {
	t.Helper()
	tn := &testNode{site: site, done: make(chan struct{}), catchUp: make(chan catchUp, 1000)}
	n, err := New(Config{Site: site, Instance: site + "-1", Address: site + ".example:8080", Policy: pol, Poll: 200 * time.Millisecond},
		Deps{Locks: svc, Journal: store, Logger: slog.New(slog.DiscardHandler), OnEvent: h.add,
			CatchUp: func(ctx context.Context, p string, epoch uint64, unclean bool) error {
				tn.catchUp <- catchUp{p, epoch, unclean}
				return nil
			}})
	if err != nil {
		t.Fatal(err)
	}
	tn.Node = n
	ctx, cancel := context.WithCancel(context.Background())
	tn.cancel = cancel
	go func() { defer close(tn.done); _ = n.Run(ctx) }()
	t.Cleanup(tn.stop)
	return tn
}

func (tn *testNode) stop() {
	tn.cancel()
	<-tn.done
}

// settled reports whether every node's view has every partition owned (serving) by the site the
// map desires, the same on every node.
func settled(nodes []*testNode, live []string) bool {
	var ref []PartitionView
	for _, n := range nodes {
		v := n.View()
		if !slices.Equal(v.Live, live) {
			return false
		}
		for _, p := range v.Partitions {
			if p.Desired == "" || p.Owner == nil || p.Owner.Site != p.Desired {
				return false
			}
			if p.Desired == n.site && p.State != stateServing {
				return false
			}
		}
		if ref == nil {
			ref = v.Partitions
			continue
		}
		for i, p := range v.Partitions {
			if p.Desired != ref[i].Desired || p.Owner.Site != ref[i].Owner.Site || p.Owner.Epoch != ref[i].Owner.Epoch {
				return false
			}
		}
	}
	return true
}

func ownerOf(n *testNode, p string) string {
	for _, pv := range n.View().Partitions {
		if pv.Partition == p && pv.Owner != nil {
			return pv.Owner.Site
		}
	}
	return ""
}

// writer appends to the partition stream of "orders" whenever its node serves it, as an owner
// accepting writes would; it returns the writes the store acknowledged and the ones it refused
// with ErrFenced.
type writer struct {
	mu            sync.Mutex
	acked, fenced int
	ackedSeqs     map[uint64]uint64 // seq -> epoch
}

func (w *writer) run(ctx context.Context, n *testNode, store journal.Store) {
	stream := PartitionStream("orders")
	for ctx.Err() == nil {
		r, err := n.Route("shop", "orders", journal.Row{{Name: "id", Value: journal.Int(1)}})
		if err == nil && r.Serving {
			// The epoch is the one Route returned: a writer that lost ownership and does not know
			// it yet keeps using it.
			for ctx.Err() == nil {
				h, err := store.Head(ctx, stream)
				if err != nil {
					break
				}
				e := journal.Entry{Seq: h.Seq + 1, Op: journal.OpMark, Origin: n.site, Statement: "write",
					Tx: journal.Tx{ID: "w", Count: 1, Last: true}}
				err = store.Append(ctx, stream, r.Epoch, []journal.Entry{e})
				w.mu.Lock()
				switch {
				case err == nil:
					w.acked++
					w.ackedSeqs[e.Seq] = r.Epoch
				case errors.Is(err, journal.ErrFenced):
					w.fenced++
				}
				w.mu.Unlock()
				if errors.Is(err, journal.ErrFenced) {
					break
				}
				if r2, _ := n.Route("shop", "orders", journal.Row{{Name: "id", Value: journal.Int(1)}}); !r2.Serving {
					break
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Millisecond): // a pace for the load, not a synchronization
		}
	}
}

func zkService(t testing.TB, root string, session time.Duration, d *testenv.CutDialer) locks.Service {
	t.Helper()
	cfg := locks.DefaultZooKeeperConfig()
	cfg.Servers = []string{testenv.ZooKeeper(t)}
	cfg.SessionTimeout = session
	cfg.Root = root
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := slog.New(slog.DiscardHandler)
	var z *locks.ZooKeeper
	var err error
	if d != nil {
		z, err = locks.DialZooKeeperWith(ctx, cfg, logger, d.Dial)
	} else {
		z, err = locks.DialZooKeeper(ctx, cfg, logger)
	}
	if err != nil {
		t.Fatal(err)
	}
	s, err := locks.NewZooKeeperService(ctx, z, locks.ZooKeeperServiceConfig{ReapInterval: 300 * time.Millisecond, Logger: logger})
	if err != nil {
		z.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(); z.Close() })
	return s
}

func cassandraStore(t testing.TB) journal.Store {
	t.Helper()
	ccfg := journal.DefaultCassandraConfig()
	ccfg.ContactPoints = []string{testenv.Cassandra(t)}
	ccfg.Keyspace = testenv.UniqueName("musicd_own_")
	ccfg.Timeout = 10 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cass, err := journal.DialCassandra(ctx, ccfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	store, err := journal.OpenCassandraStore(ctx, cass, ccfg, slog.New(slog.DiscardHandler))
	if err != nil {
		cass.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cass.Session.Query(`DROP KEYSPACE ` + ccfg.Keyspace).Exec()
		cass.Close()
	})
	return store
}

// Three sites over real ZooKeeper (one session each) and Cassandra: the owner's session is cut
// during a write load; its site is declared lost after the grace, the next preferred site catches
// up (told the handover was unclean) before it serves, the cut owner stops serving on its own and
// its appends are fenced; no two instances ever serve one partition at once and no acknowledged
// write is lost. When the network is mended, the preferred site gets its partition back by a
// planned move: the interim owner drains and hands over cleanly.
func TestFailoverThreeSites(t *testing.T) {
	root := "/" + testenv.UniqueName("musicd-test-own-")
	store := cassandraStore(t)
	pol := testPolicy(2 * time.Second)
	var h history
	cut := &testenv.CutDialer{}
	nodes := []*testNode{
		start(t, "a", pol, zkService(t, root, 4*time.Second, cut), store, &h),
		start(t, "b", pol, zkService(t, root, 10*time.Second, nil), store, &h),
		start(t, "c", pol, zkService(t, root, 10*time.Second, nil), store, &h),
	}
	testenv.WaitFor(t, 60*time.Second, "every partition served by its desired site", func() bool {
		return settled(nodes, []string{"a", "b", "c"})
	})
	if o := ownerOf(nodes[1], "orders"); o != "a" {
		t.Fatalf("orders is owned by %q, want a (preferred)", o)
	}

	w := &writer{ackedSeqs: map[uint64]uint64{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx, n, store) }()
	}
	testenv.WaitFor(t, 30*time.Second, "writes acknowledged at a", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.acked >= 20
	})

	before, _ := nodes[0].Route("shop", "orders", journal.Row{{Name: "id", Value: journal.Int(1)}})
	if !before.Serving {
		t.Fatal("a does not serve orders")
	}
	cut.SetCut(true)
	testenv.WaitFor(t, 60*time.Second, "b and c to own every partition", func() bool {
		return settled(nodes[1:], []string{"b", "c"})
	})
	// An owner that was cut off and does not know it yet (a frozen process that resumes) still
	// holds a's epoch: the store refuses its append.
	if h, err := store.Head(ctx, PartitionStream("orders")); err != nil {
		t.Fatal(err)
	} else if err := store.Append(ctx, PartitionStream("orders"), before.Epoch, []journal.Entry{{Seq: h.Seq + 1,
		Op: journal.OpMark, Statement: "stale write", Tx: journal.Tx{ID: "w", Count: 1, Last: true}}}); !errors.Is(err, journal.ErrFenced) {
		t.Errorf("an append at the lost owner's epoch %d: %v, want ErrFenced", before.Epoch, err)
	}
	if o := ownerOf(nodes[1], "orders"); o != "b" {
		t.Fatalf("after a is lost orders is owned by %q, want b", o)
	}
	testenv.WaitFor(t, 30*time.Second, "writes acknowledged at b", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		for seq, e := range w.ackedSeqs {
			if seq > 0 && e == nodes[1].View().Partitions[0].Owner.Epoch {
				return true
			}
		}
		return false
	})
	// b caught up before serving, knowing the handover was unclean.
	evs := h.snapshot()
	var sawCatchUp bool
	for _, ev := range evs {
		if ev.Partition != "orders" || ev.Instance != "b-1" {
			continue
		}
		if ev.Kind == EventCatching && ev.Unclean {
			sawCatchUp = true
		}
		if ev.Kind == EventServing {
			if !sawCatchUp {
				t.Error("b served orders before catching up from an unclean handover")
			}
			break
		}
	}
	// a stopped serving on its own (its session was lost).
	if r, _ := nodes[0].Route("shop", "orders", journal.Row{{Name: "id", Value: journal.Int(1)}}); r.Serving {
		t.Error("a still serves orders after its session was cut")
	}
	if !slices.ContainsFunc(evs, func(ev Event) bool { return ev.Instance == "a-1" && ev.Kind == EventLost }) {
		t.Error("a never reported its ownership lost")
	}
	// Cut off, a cannot prove who owns what: its view names no owner.
	if v := nodes[0].View(); v.Confirmed || slices.ContainsFunc(v.Partitions, func(p PartitionView) bool { return p.Owner != nil }) {
		t.Errorf("a's view while cut off: confirmed %v, partitions %+v", v.Confirmed, v.Partitions)
	}

	cut.SetCut(false)
	testenv.WaitFor(t, 60*time.Second, "a to own orders again", func() bool {
		return settled(nodes, []string{"a", "b", "c"}) && ownerOf(nodes[2], "orders") == "a"
	})
	cancel()
	wg.Wait()

	evs = h.snapshot()
	checkOneOwner(t, evs)
	var drained, clean bool
	for _, ev := range evs {
		if ev.Partition == "orders" && ev.Instance == "b-1" && ev.Kind == EventReleased {
			drained = true
		}
		if drained && ev.Partition == "orders" && ev.Instance == "a-1" && ev.Kind == EventCatching && !ev.Unclean {
			clean = true
		}
	}
	if !drained || !clean {
		t.Errorf("the move back to a: b released %v, a took over cleanly %v", drained, clean)
	}

	// The stream holds every acknowledged write at the epoch it was acknowledged with; epochs
	// never go down; every write is by the owner whose transfer record precedes it.
	es := readAll(t, store, PartitionStream("orders"))
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fenced == 0 {
		t.Log("no append was fenced (a noticed the loss before writing again)")
	}
	bySeq := map[uint64]journal.Entry{}
	var last, owner uint64
	for _, e := range es {
		bySeq[e.Seq] = e
		if e.Epoch < last {
			t.Errorf("seq %d: epoch %d after %d", e.Seq, e.Epoch, last)
		}
		last = e.Epoch
		if e.Statement != "write" {
			owner = e.Epoch
		} else if e.Epoch != owner {
			t.Errorf("seq %d: a write at epoch %d while the owner's epoch is %d", e.Seq, e.Epoch, owner)
		}
	}
	for seq, epoch := range w.ackedSeqs {
		if e, ok := bySeq[seq]; !ok || e.Epoch != epoch || e.Statement != "write" {
			t.Errorf("acknowledged write at seq %d (epoch %d) is not in the stream", seq, epoch)
		}
	}
	t.Logf("%d writes acknowledged, %d fenced, %d entries, %d events", w.acked, w.fenced, len(es), len(evs))
}

func readAll(t *testing.T, store journal.Store, stream string) []journal.Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []journal.Entry
	for from := uint64(1); ; {
		es, err := store.Read(ctx, stream, from, 500)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) == 0 {
			return out
		}
		out = append(out, es...)
		from = es[len(es)-1].Seq + 1
	}
}

// Manual moves and drains (embedded journal, in-process locks: one daemon's three sites): a move
// takes effect with a clean handover; invalid changes fail with ErrInvalid and change nothing.
func TestMovesAndDrains(t *testing.T) {
	store, err := journal.OpenEmbedded(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	svc := locks.NewInProcess(locks.InProcessConfig{})
	t.Cleanup(func() { _ = svc.Close() })
	pol := testPolicy(time.Second)
	var h history
	nodes := []*testNode{start(t, "a", pol, svc, store, &h), start(t, "b", pol, svc, store, &h), start(t, "c", pol, svc, store, &h)}
	all := []string{"a", "b", "c"}
	testenv.WaitFor(t, 30*time.Second, "every partition served", func() bool { return settled(nodes, all) })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	version := nodes[0].View().Version
	for _, bad := range []struct {
		name string
		do   func() error
	}{
		{"unknown partition", func() error { return nodes[0].Move(ctx, "orders/1", "b") }},
		{"unknown site", func() error { return nodes[0].Move(ctx, "orders", "z") }},
		{"drain of an unknown site", func() error { return nodes[0].Drain(ctx, "z", true) }},
	} {
		if err := bad.do(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", bad.name, err)
		}
	}
	if v := nodes[1].View().Version; v != version {
		t.Errorf("the map changed after invalid changes: version %d, was %d", v, version)
	}

	// A write admitted at the owner (a) before the move is drained: c does not serve orders
	// until it is done, and done says a no longer served it.
	key := journal.Row{{Name: "id", Value: journal.Int(1)}}
	r, done, err := nodes[0].Admit("shop", "orders", key)
	if err != nil || !r.Serving {
		t.Fatalf("admit at a: %+v, %v", r, err)
	}
	if err := nodes[1].Move(ctx, "orders", "c"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "a to drain orders", func() bool {
		r, _ := nodes[0].Route("shop", "orders", key)
		return r.State == stateDraining
	})
	if r, _ := nodes[2].Route("shop", "orders", key); r.Serving || r.State != "" {
		t.Errorf("c takes orders over while a write admitted at a is in flight: %+v", r)
	}
	if done() {
		t.Error("done says a still served orders after it started draining")
	}
	testenv.WaitFor(t, 30*time.Second, "orders moved to c", func() bool {
		return settled(nodes, all) && ownerOf(nodes[0], "orders") == "c"
	})
	if r, _, _ := nodes[0].Admit("shop", "orders", key); r.Serving {
		t.Error("a admits a write of a partition it handed over")
	}
	if err := nodes[2].Drain(ctx, "c", true); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "c drained", func() bool {
		if !settled(nodes, all) {
			return false
		}
		for _, p := range nodes[0].View().Partitions {
			if p.Owner.Site == "c" {
				return false
			}
		}
		return true
	})
	v := nodes[0].View()
	if !slices.Equal(v.Drained, []string{"c"}) || v.Moves["orders"] != "c" {
		t.Errorf("view: drained %v, moves %v", v.Drained, v.Moves)
	}
	if o := ownerOf(nodes[0], "orders"); o != "a" {
		t.Errorf("orders, moved to a drained site, is owned by %q, want a (placement)", o)
	}
	if err := nodes[0].Move(ctx, "orders", ""); err != nil {
		t.Fatal(err)
	}
	if err := nodes[0].Drain(ctx, "c", false); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "c owns partitions again", func() bool {
		if !settled(nodes, all) {
			return false
		}
		return slices.ContainsFunc(nodes[0].View().Partitions, func(p PartitionView) bool { return p.Owner.Site == "c" })
	})
	evs := h.snapshot()
	checkOneOwner(t, evs)
	for _, ev := range evs {
		if ev.Kind == EventLost || ev.Kind == EventFailed || (ev.Kind == EventCatching && ev.Unclean) {
			t.Errorf("planned moves only, yet: %+v", ev)
		}
	}
	// The partition and the owners named by Route agree with the view.
	r, err = nodes[1].Route("shop", "users", journal.Row{{Name: "id", Value: journal.Int(42)}})
	if err != nil || !r.Partitioned || r.Owner == nil {
		t.Fatalf("route: %+v, %v", r, err)
	}
	if got := ownerOf(nodes[1], r.Partition); got != r.Owner.Site {
		t.Errorf("route names %s, the view %s", r.Owner.Site, got)
	}
	if r, err := nodes[1].Route("shop", "other", nil); err != nil || r.Partitioned {
		t.Errorf("a table in no set: %+v, %v", r, err)
	}
}

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"orders":   "orders",
		"users/3":  "users=2F3",
		"geo/eu-*": "geo=2Feu-=2A",
		"geo/é":    "geo=2F=C3=A9",
	} {
		if got := escape(in); got != want {
			t.Errorf("escape(%q) = %q, want %q", in, got, want)
		}
		if err := locks.ValidateName(PartitionElection(in)); err != nil {
			t.Error(err)
		}
		if err := journal.ValidateStreamID(PartitionStream(in)); err != nil {
			t.Error(err)
		}
	}
	long := escape(string(make([]byte, 100)))
	if len(long) > 150 || long[:2] != "h=" {
		t.Errorf("long id escaped to %q", long)
	}
}
