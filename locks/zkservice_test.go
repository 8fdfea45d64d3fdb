package locks

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
)

// zkTestService opens a session and a service on root; both close with the test.
func zkTestService(t testing.TB, addr, root string, session time.Duration, dialer func(string, string, time.Duration) (net.Conn, error)) *zkService {
	t.Helper()
	return zkTestServiceReap(t, addr, root, session, dialer, 300*time.Millisecond)
}

func zkTestServiceReap(t testing.TB, addr, root string, session time.Duration, dialer func(string, string, time.Duration) (net.Conn, error), reap time.Duration) *zkService {
	t.Helper()
	cfg := DefaultZooKeeperConfig()
	cfg.Servers = []string{addr}
	cfg.SessionTimeout = session
	cfg.Root = root
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	z, err := dialZooKeeper(ctx, cfg, logger, dialer)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewZooKeeperService(ctx, z, ZooKeeperServiceConfig{ReapInterval: reap, Logger: logger})
	if err != nil {
		z.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		z.Close()
	})
	return s
}

func TestZooKeeperConformance(t *testing.T) {
	addr := testenv.ZooKeeper(t)
	runConformance(t, func(t *testing.T) backend {
		root := "/" + testenv.UniqueName("musicd-test-locks-")
		return backend{
			open:    func() Service { return zkTestService(t, addr, root, 6*time.Second, nil) },
			advance: time.Sleep, // real time: leases are judged by ZooKeeper's clock
			lease:   time.Second,
		}
	})
}

// A ZooKeeper restart (kill -9) while a lock is held and another waits: the holder keeps it (its
// session survives), the waiter is granted after the release, tokens keep increasing.
func TestZooKeeperServerRestart(t *testing.T) {
	zkp := testenv.StartPrivate(t, "zookeeper")
	root := "/" + testenv.UniqueName("musicd-test-locks-")
	s1 := zkTestService(t, zkp.Addr, root, 20*time.Second, nil)
	s2 := zkTestService(t, zkp.Addr, root, 20*time.Second, nil)
	name := "restart"
	a := mustRef(t, s1, name, RefOptions{Lease: time.Minute})
	ga := mustTry(t, s1, a)
	b := mustRef(t, s2, name, RefOptions{Lease: time.Minute})
	ch := acquireAsync(t, s2, b)
	notGranted(t, ch)

	zkp.Kill9(t)
	zkp.Start(t)

	ctx := tctx(t, 30*time.Second)
	var hs []Holder
	testenv.WaitFor(t, 20*time.Second, "holders readable after the restart", func() bool {
		var err error
		hs, err = s2.Holders(ctx, name)
		return err == nil
	})
	if len(hs) != 1 || hs[0].Ref.ID != a.ID || hs[0].Token != ga.Token {
		t.Fatalf("holders after restart %+v, want %s", hs, a)
	}
	select {
	case <-ga.Lost():
		t.Fatal("grant lost over a restart that kept the session")
	default:
	}
	notGranted(t, ch)
	mustRelease(t, s1, a)
	gb := await(t, backend{}, ch, 0)
	if gb.PreviousUnclean || gb.Token <= ga.Token {
		t.Errorf("grant after restart: %+v (previous token %d)", gb, ga.Token)
	}
	mustRelease(t, s2, b)
	c := mustRef(t, s1, name, RefOptions{})
	if gc := mustTry(t, s1, c); gc.Token <= gb.Token {
		t.Errorf("token %d after %d", gc.Token, gb.Token)
	}
	mustRelease(t, s1, c)
}

// A holder whose session expires is told its lock is lost; the waiter on another daemon is
// granted with PreviousUnclean; once reconnected, the old reference reports ErrLockLost and the
// service works again on its new session.
func TestZooKeeperSessionExpiry(t *testing.T) {
	addr := testenv.ZooKeeper(t)
	root := "/" + testenv.UniqueName("musicd-test-locks-")
	d := &testenv.CutDialer{}
	s1 := zkTestService(t, addr, root, 4*time.Second, d.Dial)
	s2 := zkTestService(t, addr, root, 10*time.Second, nil)
	name := "expiry"
	a := mustRef(t, s1, name, RefOptions{}) // no lease: only the session keeps it
	ga := mustTry(t, s1, a)
	b := mustRef(t, s2, name, RefOptions{})
	ch := acquireAsync(t, s2, b)
	notGranted(t, ch)

	d.SetCut(true)
	select {
	case <-ga.Lost():
	case <-time.After(20 * time.Second):
		t.Fatal("holder not told its session was lost")
	}
	gb := await(t, backend{}, ch, 0)
	if !gb.PreviousUnclean || gb.Token <= ga.Token {
		t.Errorf("grant after a lost session: %+v (previous token %d)", gb, ga.Token)
	}
	d.SetCut(false)

	ctx := tctx(t, 30*time.Second)
	if err := s1.Release(ctx, a); !errors.Is(err, ErrLockLost) {
		t.Errorf("Release on a lost session: %v, want ErrLockLost", err)
	}
	c := mustRef(t, s1, name, RefOptions{}) // waits for the new session
	chc := acquireAsync(t, s1, c)
	mustRelease(t, s2, b)
	if gc := await(t, backend{}, chc, 0); gc.PreviousUnclean || gc.Token <= gb.Token {
		t.Errorf("grant on the new session: %+v", gc)
	}
	mustRelease(t, s1, c)
}

// A daemon that closes hands its locks over at once (its references are removed, holders as
// unclean ends).
func TestZooKeeperCloseHandsOver(t *testing.T) {
	addr := testenv.ZooKeeper(t)
	root := "/" + testenv.UniqueName("musicd-test-locks-")
	s1 := zkTestService(t, addr, root, 10*time.Second, nil)
	s2 := zkTestService(t, addr, root, 10*time.Second, nil)
	a := mustRef(t, s1, "close", RefOptions{})
	ga := mustTry(t, s1, a)
	b := mustRef(t, s2, "close", RefOptions{})
	ch := acquireAsync(t, s2, b)
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	gb := await(t, backend{}, ch, 0)
	if !gb.PreviousUnclean || gb.Token <= ga.Token {
		t.Errorf("grant after the holder's daemon closed: %+v", gb)
	}
	if _, err := s1.CreateRef(tctx(t, time.Second), "close", RefOptions{}); !errors.Is(err, ErrClosed) {
		t.Errorf("CreateRef after Close: %v, want ErrClosed", err)
	}
}

// ReleaseExpired removes at once the references of a daemon whose session is gone, as the
// reaper would at its next pass (here: not within the test).
func TestReleaseExpiredRemovesDeadSessions(t *testing.T) {
	addr := testenv.ZooKeeper(t)
	root := "/" + testenv.UniqueName("musicd-test-locks-")
	d := &testenv.CutDialer{}
	s1 := zkTestServiceReap(t, addr, root, 2*time.Second, d.Dial, time.Hour)
	s2 := zkTestServiceReap(t, addr, root, 10*time.Second, nil, time.Hour)
	name := "presence"
	a := mustRef(t, s1, name, RefOptions{Type: Read}) // no lease: only the session keeps it
	ga := mustTry(t, s1, a)
	ctx := tctx(t, 30*time.Second)
	if n, err := s2.ReleaseExpired(ctx, name); n != 0 || err != nil {
		t.Fatalf("ReleaseExpired with the owner alive: %d, %v", n, err)
	}
	d.SetCut(true)
	<-ga.Lost()
	testenv.WaitFor(t, 30*time.Second, "the dead session's reference to be removed", func() bool {
		n, err := s2.ReleaseExpired(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	})
	if hs, err := s2.Holders(ctx, name); err != nil || len(hs) != 0 {
		t.Errorf("holders after the removal: %v, %v", hs, err)
	}
}

func TestRefIDs(t *testing.T) {
	id := nodePrefix(Read, "0123456789abcdef") + "0000000042"
	q, ok := parseRefID(id)
	if !ok || q.typ != Read || q.seq != 42 {
		t.Fatalf("parseRefID(%q) = %+v, %v", id, q, ok)
	}
	for _, bad := range []string{"", "x-0123456789abcdef-0000000042", "w-0123456789ABCDEF-0000000042",
		"w-0123456789abcdef-00000000+2", "w-0123456789abcdef-000000004", "../w-0123456789abcde-000000004"} {
		if _, ok := parseRefID(bad); ok {
			t.Errorf("parseRefID(%q) accepted", bad)
		}
	}
	q2 := parseQueue([]string{"w-0123456789abcdef-0000000003", "r-0123456789abcdef-0000000001", "junk",
		"r-0123456789abcdef-0000000002", "r-0123456789abcdef-0000000004"})
	if len(q2) != 4 || q2[0].seq != 1 || q2[3].seq != 4 {
		t.Fatalf("parseQueue: %+v", q2)
	}
	if h := holdersOf(q2); len(h) != 2 {
		t.Errorf("holders %+v, want the two first reads", h)
	}
	for _, tc := range []struct{ id, blocker string }{
		{"r-0123456789abcdef-0000000001", ""},
		{"w-0123456789abcdef-0000000003", "r-0123456789abcdef-0000000002"},
		{"r-0123456789abcdef-0000000004", "w-0123456789abcdef-0000000003"},
	} {
		if b, found := blocker(q2, tc.id); !found || b != tc.blocker {
			t.Errorf("blocker(%s) = %q, %v; want %q", tc.id, b, found, tc.blocker)
		}
	}
}

// Close stops every goroutine the service started (monitors, waiters' calls, watches, reaper),
// with waiters and watches still running.
func TestZooKeeperCloseLeavesNoGoroutines(t *testing.T) {
	addr := testenv.ZooKeeper(t)
	cfg := DefaultZooKeeperConfig()
	cfg.Servers = []string{addr}
	cfg.Root = "/" + testenv.UniqueName("musicd-test-locks-")
	ctx := tctx(t, 30*time.Second)
	z, err := DialZooKeeper(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	s, err := NewZooKeeperService(ctx, z, ZooKeeperServiceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	a := mustRef(t, s, "leak", RefOptions{Lease: time.Minute})
	mustTry(t, s, a)
	b := mustRef(t, s, "leak", RefOptions{Lease: time.Minute})
	ch := acquireAsync(t, s, b)
	if _, err := s.Watch(ctx, "leak"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Observe(ctx, "leader"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if res := <-ch; !errors.Is(res.err, ErrClosed) {
		t.Errorf("waiter at Close: %v, want ErrClosed", res.err)
	}
	// The ZooKeeper client's own goroutines come and go with its connection; what must be gone
	// is every goroutine of the service.
	deadline := time.Now().Add(10 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		left := 0
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "locks.(*zkService)") && !strings.Contains(g, "TestZooKeeperCloseLeavesNoGoroutines") {
				left++
			}
		}
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of the service left after Close:\n%s", left, stacks)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
