package locks

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
)

// backend gives a conformance test a fresh namespace: open returns a service on it (for
// ZooKeeper a new one each call, as another daemon would be; in process, the same one), advance
// lets time pass for leases (a fake clock's Advance, or real time).
type backend struct {
	open    func() Service
	advance func(time.Duration)
	lease   time.Duration // a short lease for expiry tests
}

// runConformance is the one suite every Service implementation passes.
func runConformance(t *testing.T, newBackend func(t *testing.T) backend) {
	t.Run("MutualExclusion50", func(t *testing.T) { testMutualExclusion(t, newBackend(t)) })
	t.Run("FIFO", func(t *testing.T) { testFIFO(t, newBackend(t)) })
	t.Run("ReadShareWriteExclude", func(t *testing.T) { testReadWrite(t, newBackend(t)) })
	t.Run("LeaseExpiryHandsOverUnclean", func(t *testing.T) { testLeaseExpiry(t, newBackend(t)) })
	t.Run("ForceReleaseHandsOverUnclean", func(t *testing.T) { testForceRelease(t, newBackend(t)) })
	t.Run("RenewKeepsLease", func(t *testing.T) { testRenew(t, newBackend(t)) })
	t.Run("Errors", func(t *testing.T) { testErrors(t, newBackend(t)) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, newBackend(t)) })
	t.Run("Elections", func(t *testing.T) { testElections(t, newBackend(t)) })
	t.Run("RefFromAnotherDaemon", func(t *testing.T) { testOtherDaemon(t, newBackend(t)) })
}

func tctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustRef(t *testing.T, s Service, name string, opts RefOptions) Ref {
	t.Helper()
	r, err := s.CreateRef(tctx(t, 20*time.Second), name, opts)
	if err != nil {
		t.Fatalf("CreateRef %s: %v", name, err)
	}
	return r
}

func mustTry(t *testing.T, s Service, r Ref) *Grant {
	t.Helper()
	g, err := s.TryAcquire(tctx(t, 20*time.Second), r)
	if err != nil {
		t.Fatalf("TryAcquire %s: %v", r, err)
	}
	return g
}

func mustRelease(t *testing.T, s Service, r Ref) {
	t.Helper()
	if err := s.Release(tctx(t, 20*time.Second), r); err != nil {
		t.Fatalf("Release %s: %v", r, err)
	}
}

type acquired struct {
	g   *Grant
	err error
}

// acquireAsync runs a blocking Acquire; the result arrives on the channel.
func acquireAsync(t *testing.T, s Service, r Ref) <-chan acquired {
	ch := make(chan acquired, 1)
	ctx := tctx(t, 60*time.Second)
	go func() {
		g, err := s.Acquire(ctx, r)
		ch <- acquired{g, err}
	}()
	return ch
}

// await waits for an async acquire, letting lease time pass meanwhile.
func await(t *testing.T, be backend, ch <-chan acquired, step time.Duration) *Grant {
	t.Helper()
	var res *acquired
	testenv.WaitFor(t, 30*time.Second, "a grant", func() bool {
		select {
		case a := <-ch:
			res = &a
			return true
		default:
			if step > 0 {
				be.advance(step)
			}
			return false
		}
	})
	if res.err != nil {
		t.Fatalf("Acquire: %v", res.err)
	}
	return res.g
}

func notGranted(t *testing.T, ch <-chan acquired) {
	t.Helper()
	select {
	case a := <-ch:
		t.Fatalf("granted too early: grant %+v, err %v", a.g, a.err)
	default:
	}
}

// ---- mutual exclusion with a history checker ----

type event struct {
	acquire bool
	token   uint64
	who     int
}

// checkHistory verifies that write holders never overlap and that tokens strictly increase in
// grant order.
func checkHistory(h []event) error {
	holder := -1
	var last uint64
	for i, e := range h {
		if e.acquire {
			if holder != -1 {
				return fmt.Errorf("event %d: %d acquired while %d holds", i, e.who, holder)
			}
			if e.token <= last {
				return fmt.Errorf("event %d: token %d not above %d", i, e.token, last)
			}
			holder, last = e.who, e.token
		} else {
			if holder != e.who {
				return fmt.Errorf("event %d: %d released while %d holds", i, e.who, holder)
			}
			holder = -1
		}
	}
	return nil
}

func TestCheckHistory(t *testing.T) {
	ok := []event{{true, 1, 0}, {false, 1, 0}, {true, 2, 1}, {false, 2, 1}}
	if err := checkHistory(ok); err != nil {
		t.Error(err)
	}
	for _, bad := range [][]event{
		{{true, 1, 0}, {true, 2, 1}},
		{{true, 2, 0}, {false, 2, 0}, {true, 2, 1}},
		{{true, 1, 0}, {false, 1, 1}},
	} {
		if checkHistory(bad) == nil {
			t.Errorf("accepted %v", bad)
		}
	}
}

func testMutualExclusion(t *testing.T, be backend) {
	const contenders, rounds = 50, 2
	svcs := []Service{be.open(), be.open(), be.open()}
	name := "mutex"
	var (
		mu      sync.Mutex
		history []event
		inside  atomic.Int32
		wg      sync.WaitGroup
		errs    = make(chan error, contenders)
	)
	for i := range contenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := svcs[i%len(svcs)]
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for range rounds {
				r, err := s.CreateRef(ctx, name, RefOptions{Lease: time.Minute, Owner: fmt.Sprint(i)})
				if err != nil {
					errs <- err
					return
				}
				g, err := s.Acquire(ctx, r)
				if err != nil {
					errs <- err
					return
				}
				if n := inside.Add(1); n != 1 {
					errs <- fmt.Errorf("%d holders inside", n)
				}
				mu.Lock()
				history = append(history, event{true, g.Token, i})
				history = append(history, event{false, g.Token, i})
				mu.Unlock()
				inside.Add(-1)
				if err := s.Release(ctx, r); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(history) != 2*contenders*rounds {
		t.Fatalf("%d events, want %d", len(history), 2*contenders*rounds)
	}
	if err := checkHistory(history); err != nil {
		t.Fatal(err)
	}
}

// ---- FIFO ----

func testFIFO(t *testing.T, be backend) {
	s := be.open()
	name := "fifo"
	a := mustRef(t, s, name, RefOptions{})
	mustTry(t, s, a)
	refs := []Ref{mustRef(t, s, name, RefOptions{}), mustRef(t, s, name, RefOptions{}), mustRef(t, s, name, RefOptions{})}
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	for i := len(refs) - 1; i >= 0; i-- { // ask in reverse: the queue, not the call order, decides
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := tctx(t, 60*time.Second)
			g, err := s.Acquire(ctx, refs[i])
			if err != nil {
				t.Error(err)
				return
			}
			if g.PreviousUnclean {
				t.Errorf("%s: PreviousUnclean after clean releases", refs[i])
			}
			mu.Lock()
			order = append(order, refs[i].ID)
			mu.Unlock()
			if err := s.Release(ctx, refs[i]); err != nil {
				t.Error(err)
			}
		}()
	}
	mustRelease(t, s, a)
	wg.Wait()
	want := []string{refs[0].ID, refs[1].ID, refs[2].ID}
	if strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("grant order %v, want %v", order, want)
	}
}

// ---- read and write ----

func testReadWrite(t *testing.T, be backend) {
	s := be.open()
	name := "rw"
	ctx := tctx(t, 30*time.Second)
	r1 := mustRef(t, s, name, RefOptions{Type: Read})
	r2 := mustRef(t, s, name, RefOptions{Type: Read})
	w := mustRef(t, s, name, RefOptions{Type: Write})
	r3 := mustRef(t, s, name, RefOptions{Type: Read})
	g1, g2 := mustTry(t, s, r1), mustTry(t, s, r2)
	if g1.Type != Read || g2.Token <= g1.Token {
		t.Errorf("read grants %+v %+v", g1, g2)
	}
	for _, r := range []Ref{w, r3} {
		if _, err := s.TryAcquire(ctx, r); !errors.Is(err, ErrWouldBlock) {
			t.Fatalf("TryAcquire %s behind readers/writer: %v, want ErrWouldBlock", r, err)
		}
	}
	hs, err := s.Holders(ctx, name)
	if err != nil || len(hs) != 2 || hs[0].Ref.ID != r1.ID || hs[1].Ref.ID != r2.ID || hs[0].Type != Read {
		t.Fatalf("Holders = %+v, %v; want the two readers", hs, err)
	}
	mustRelease(t, s, r1)
	if _, err := s.TryAcquire(ctx, w); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("writer granted with a reader left: %v", err)
	}
	mustRelease(t, s, r2)
	gw := mustTry(t, s, w)
	if gw.Token <= g2.Token || gw.PreviousUnclean {
		t.Errorf("write grant %+v after readers %d", gw, g2.Token)
	}
	if _, err := s.TryAcquire(ctx, r3); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("reader granted while a writer holds: %v", err)
	}
	mustRelease(t, s, w)
	if g3 := mustTry(t, s, r3); g3.PreviousUnclean || g3.Token <= gw.Token {
		t.Errorf("read grant %+v after writer %d", g3, gw.Token)
	}
	mustRelease(t, s, r3)
	if hs, err := s.Holders(ctx, name); err != nil || len(hs) != 0 {
		t.Errorf("Holders after all released = %+v, %v", hs, err)
	}
}

// ---- lease expiry and forced release ----

func testLeaseExpiry(t *testing.T, be backend) {
	s1, s2 := be.open(), be.open()
	name := "lease"
	a := mustRef(t, s1, name, RefOptions{Lease: be.lease, Owner: "a"})
	ga := mustTry(t, s1, a)
	b := mustRef(t, s2, name, RefOptions{Lease: time.Minute, Owner: "b"})
	ch := acquireAsync(t, s2, b)
	gb := await(t, be, ch, be.lease/4)
	if !gb.PreviousUnclean {
		t.Error("grant after a lease expiry: PreviousUnclean is false")
	}
	if gb.Token <= ga.Token {
		t.Errorf("token %d after %d", gb.Token, ga.Token)
	}
	testenv.WaitFor(t, 20*time.Second, "the expired holder told it lost its lock", func() bool {
		select {
		case <-ga.Lost():
			return true
		default:
			return false
		}
	})
	ctx := tctx(t, 20*time.Second)
	if err := s1.Release(ctx, a); !errors.Is(err, ErrLockLost) {
		t.Errorf("Release of an expired grant: %v, want ErrLockLost", err)
	}
	if err := s1.Renew(ctx, a); !errors.Is(err, ErrLockLost) {
		t.Errorf("Renew of an expired grant: %v, want ErrLockLost", err)
	}
	mustRelease(t, s2, b)
	c := mustRef(t, s1, name, RefOptions{})
	if gc := mustTry(t, s1, c); gc.PreviousUnclean || gc.Token <= gb.Token {
		t.Errorf("grant after a clean release: %+v (previous token %d)", gc, gb.Token)
	}
	mustRelease(t, s1, c)

	// An idle reference nobody waits for goes too (no stale references), and ReleaseExpired
	// reports what it removed.
	d := mustRef(t, s1, name, RefOptions{Lease: be.lease})
	testenv.WaitFor(t, 20*time.Second, "an idle expired reference removed", func() bool {
		be.advance(be.lease / 4)
		n, err := s2.ReleaseExpired(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := s2.Holders(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return n == 1 || len(hs) == 0
	})
	if _, err := s1.TryAcquire(ctx, d); !errors.Is(err, ErrNotHeld) {
		t.Errorf("TryAcquire of an expired reference: %v, want ErrNotHeld", err)
	}
}

func testForceRelease(t *testing.T, be backend) {
	s := be.open()
	name := "force"
	ctx := tctx(t, 30*time.Second)
	a := mustRef(t, s, name, RefOptions{})
	ga := mustTry(t, s, a)
	b := mustRef(t, s, name, RefOptions{})
	c := mustRef(t, s, name, RefOptions{})
	chb := acquireAsync(t, s, b)
	// Forcing out a waiter is not an unclean end of a holder.
	if err := s.ForceRelease(ctx, name, b.ID); err != nil {
		t.Fatal(err)
	}
	if a := <-chb; !errors.Is(a.err, ErrNotHeld) {
		t.Fatalf("waiter forced out: Acquire = %+v, want ErrNotHeld", a)
	}
	chc := acquireAsync(t, s, c)
	notGranted(t, chc)
	if err := s.ForceRelease(ctx, name, a.ID); err != nil {
		t.Fatal(err)
	}
	gc := await(t, be, chc, 0)
	if !gc.PreviousUnclean || gc.Token <= ga.Token {
		t.Errorf("grant after forced release: %+v (previous token %d)", gc, ga.Token)
	}
	select {
	case <-ga.Lost():
	case <-time.After(20 * time.Second):
		t.Fatal("forced-out holder not told")
	}
	if err := s.Release(ctx, a); !errors.Is(err, ErrLockLost) {
		t.Errorf("Release after forced release: %v, want ErrLockLost", err)
	}
	if err := s.ForceRelease(ctx, name, a.ID); !errors.Is(err, ErrNotHeld) {
		t.Errorf("ForceRelease of a removed reference: %v, want ErrNotHeld", err)
	}
	mustRelease(t, s, c)
	d := mustRef(t, s, name, RefOptions{})
	if gd := mustTry(t, s, d); gd.PreviousUnclean || gd.Token <= gc.Token {
		t.Errorf("grant after clean release: %+v", gd)
	}
	mustRelease(t, s, d)
}

func testRenew(t *testing.T, be backend) {
	s1, s2 := be.open(), be.open()
	name := "renew"
	ctx := tctx(t, 30*time.Second)
	a := mustRef(t, s1, name, RefOptions{Lease: be.lease})
	mustTry(t, s1, a)
	for range 10 { // 2.5 leases in all
		be.advance(be.lease / 4)
		if err := s1.Renew(ctx, a); err != nil {
			t.Fatalf("Renew: %v", err)
		}
	}
	if n, err := s2.ReleaseExpired(ctx, name); err != nil || n != 0 {
		t.Fatalf("ReleaseExpired on a renewed holder: %d, %v", n, err)
	}
	hs, err := s2.Holders(ctx, name)
	if err != nil || len(hs) != 1 || hs[0].Ref.ID != a.ID || hs[0].Lease != be.lease {
		t.Fatalf("Holders = %+v, %v; want the renewed holder", hs, err)
	}
	mustRelease(t, s1, a)
	if err := s1.Renew(ctx, a); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Renew after Release: %v, want ErrNotHeld", err)
	}
}

// ---- errors ----

func testErrors(t *testing.T, be backend) {
	s := be.open()
	ctx := tctx(t, 30*time.Second)
	for _, bad := range []string{"", ".hidden", "a/b", "sp ace", "é", strings.Repeat("x", MaxNameLen+1)} {
		if _, err := s.CreateRef(ctx, bad, RefOptions{}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("CreateRef(%q): %v, want ErrInvalidName", bad, err)
		}
		if _, err := s.Holders(ctx, bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Holders(%q): %v, want ErrInvalidName", bad, err)
		}
		if _, err := s.Campaign(ctx, bad, "c"); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Campaign(%q): %v, want ErrInvalidName", bad, err)
		}
	}
	if _, err := s.CreateRef(ctx, "ok", RefOptions{Lease: -time.Second}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("negative lease: %v, want ErrInvalidOptions", err)
	}
	if _, err := s.CreateRef(ctx, "ok", RefOptions{Type: 7}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("bad type: %v, want ErrInvalidOptions", err)
	}
	if err := s.Release(ctx, Ref{Name: "ok", ID: "../../x"}); !errors.Is(err, ErrInvalidRef) {
		t.Errorf("Release of a malformed ID: %v, want ErrInvalidRef", err)
	}
	ghost := Ref{Name: "errors", ID: "w-0123456789abcdef-0000000001"}
	if err := s.Release(ctx, ghost); !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), ghost.String()) {
		t.Errorf("Release of an unknown reference: %v, want ErrNotHeld naming it", err)
	}
	if err := s.Renew(ctx, ghost); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Renew of an unknown reference: %v, want ErrNotHeld", err)
	}
	if _, err := s.Acquire(ctx, ghost); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Acquire of an unknown reference: %v, want ErrNotHeld", err)
	}

	a := mustRef(t, s, "errors", RefOptions{})
	ga := mustTry(t, s, a)
	if again := mustTry(t, s, a); again.Token != ga.Token {
		t.Errorf("acquiring a held reference again: token %d, want %d", again.Token, ga.Token)
	}
	b := mustRef(t, s, "errors", RefOptions{})
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := s.Acquire(short, b); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Acquire past its deadline: %v, want DeadlineExceeded", err)
	}
	mustRelease(t, s, a)
	if err := s.Release(ctx, a); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second Release: %v, want ErrNotHeld", err)
	}
	// b kept its place after its deadline: it holds now.
	if gb := mustTry(t, s, b); gb.Token <= ga.Token {
		t.Errorf("token %d after %d", gb.Token, ga.Token)
	}
	mustRelease(t, s, b)
}

// ---- watch ----

func recvUntil[T any](t *testing.T, ch <-chan T, what string, ok func(T) bool) T {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case v, open := <-ch:
			if !open {
				t.Fatalf("channel closed waiting for %s", what)
			}
			if ok(v) {
				return v
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func testWatch(t *testing.T, be backend) {
	s := be.open()
	name := "watched"
	wctx, cancel := context.WithCancel(context.Background())
	ch, err := s.Watch(wctx, name)
	if err != nil {
		t.Fatal(err)
	}
	recvUntil(t, ch, "no holder", func(hs []Holder) bool { return len(hs) == 0 })
	a := mustRef(t, s, name, RefOptions{Owner: "alice"})
	ga := mustTry(t, s, a)
	recvUntil(t, ch, "alice holding", func(hs []Holder) bool {
		return len(hs) == 1 && hs[0].Ref.ID == a.ID && hs[0].Owner == "alice" && hs[0].Token == ga.Token
	})
	mustRelease(t, s, a)
	recvUntil(t, ch, "no holder again", func(hs []Holder) bool { return len(hs) == 0 })
	cancel()
	testenv.WaitFor(t, 10*time.Second, "the watch closed", func() bool {
		select {
		case _, open := <-ch:
			return !open
		default:
			return false
		}
	})
}

// ---- elections ----

func testElections(t *testing.T, be backend) {
	s1, s2 := be.open(), be.open()
	ctx := tctx(t, 30*time.Second)
	election := "binlog.orders"
	obs, err := s2.Observe(ctx, election)
	if err != nil {
		t.Fatal(err)
	}
	recvUntil(t, obs, "no leader", func(l Leader) bool { return l == Leader{} })
	l1, err := s1.Campaign(ctx, election, "daemon-1")
	if err != nil {
		t.Fatal(err)
	}
	recvUntil(t, obs, "daemon-1 leading", func(l Leader) bool { return l.Candidate == "daemon-1" && l.Epoch == l1.Epoch })

	// A campaign that runs out of time withdraws.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := s2.Campaign(short, election, "impatient"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Campaign past its deadline: %v", err)
	}

	won := make(chan *Leadership, 1)
	go func() {
		l, err := s2.Campaign(ctx, election, "daemon-2")
		if err != nil {
			t.Error(err)
		}
		won <- l
	}()
	if err := l1.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	var l2 *Leadership
	select {
	case l2 = <-won:
	case <-ctx.Done():
		t.Fatal("daemon-2 never elected")
	}
	if l2 == nil {
		t.FailNow()
	}
	if l2.Epoch <= l1.Epoch || l2.PreviousUnclean {
		t.Errorf("second leader %+v after epoch %d", l2, l1.Epoch)
	}
	recvUntil(t, obs, "daemon-2 leading", func(l Leader) bool { return l.Candidate == "daemon-2" && l.Epoch == l2.Epoch })
	if err := l2.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	recvUntil(t, obs, "no leader after resignations", func(l Leader) bool { return l == Leader{} })
	// Elections and locks are separate name spaces.
	if hs, err := s1.Holders(ctx, election); err != nil || len(hs) != 0 {
		t.Errorf("lock %s: %+v, %v", election, hs, err)
	}
}

// ---- references across daemons ----

func testOtherDaemon(t *testing.T, be backend) {
	s1, s2 := be.open(), be.open()
	name := "shared"
	a := mustRef(t, s1, name, RefOptions{Lease: time.Minute})
	// A client carries the plain name and ID to another daemon.
	carried := Ref{Name: a.Name, ID: a.ID}
	ga := mustTry(t, s2, carried)
	if err := s2.Renew(tctx(t, 10*time.Second), carried); err != nil {
		t.Fatal(err)
	}
	mustRelease(t, s2, carried)
	b := mustRef(t, s1, name, RefOptions{})
	if gb := mustTry(t, s1, b); gb.PreviousUnclean || gb.Token <= ga.Token {
		t.Errorf("grant after a release through another daemon: %+v", gb)
	}
	mustRelease(t, s1, b)
}
