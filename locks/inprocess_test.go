package locks

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when Advance is called.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, fakeTimer{c.now.Add(d), ch})
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

func TestInProcessConformance(t *testing.T) {
	runConformance(t, func(t *testing.T) backend {
		clock := newFakeClock()
		s := NewInProcess(InProcessConfig{Clock: clock})
		t.Cleanup(func() { _ = s.Close() })
		return backend{open: func() Service { return s }, advance: clock.Advance, lease: 10 * time.Second}
	})
}

// Close wakes waiters with ErrClosed and loses every grant.
func TestInProcessClose(t *testing.T) {
	s := NewInProcess(InProcessConfig{})
	a := mustRef(t, s, "x", RefOptions{})
	ga := mustTry(t, s, a)
	b := mustRef(t, s, "x", RefOptions{})
	ch := acquireAsync(t, s, b)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if res := <-ch; res.err == nil {
		t.Fatal("waiter granted after Close")
	}
	select {
	case <-ga.Lost():
	default:
		t.Fatal("grant not lost at Close")
	}
	if _, err := s.CreateRef(tctx(t, time.Second), "x", RefOptions{}); err == nil {
		t.Fatal("CreateRef after Close")
	}
}
