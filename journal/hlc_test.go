package journal

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// fakeTime is a settable physical clock.
type fakeTime struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeTime) now() time.Time  { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeTime) set(t time.Time) { f.mu.Lock(); defer f.mu.Unlock(); f.t = t }

func TestHLC(t *testing.T) {
	pt := &fakeTime{t: time.Unix(100, 0)}
	c := NewClock(pt.now, time.Second)
	a := c.Now()
	b := c.Now() // same physical time: logical ticks
	if !a.Less(b) || b.Wall != a.Wall || b.Logical != a.Logical+1 {
		t.Fatalf("same physical time: %v then %v", a, b)
	}
	pt.set(time.Unix(99, 0)) // the physical clock steps back: HLC does not
	if c2 := c.Now(); !b.Less(c2) {
		t.Fatalf("after the clock stepped back: %v then %v", b, c2)
	}
	pt.set(time.Unix(101, 0))
	if d := c.Now(); d.Wall != time.Unix(101, 0).UnixNano() || d.Logical != 0 {
		t.Fatalf("physical time moved on: %v", d)
	}

	// A remote timestamp ahead of ours (within the offset) is merged: ours follow it.
	remote := Timestamp{Wall: time.Unix(101, 500_000_000).UnixNano(), Logical: 4}
	r, err := c.Update(remote)
	if err != nil || !remote.Less(r) || r.Wall != remote.Wall || r.Logical != 5 {
		t.Fatalf("update with a remote ahead: %v %v", r, err)
	}
	if n := c.Now(); !r.Less(n) {
		t.Fatalf("local event after a receive: %v then %v", r, n)
	}
	// A remote timestamp behind ours changes nothing but the logical tick.
	before := c.Now()
	if r, _ := c.Update(Timestamp{Wall: 5}); !before.Less(r) {
		t.Fatalf("update with an old remote: %v then %v", before, r)
	}
	// Too far ahead: a broken clock somewhere, refused.
	if _, err := c.Update(Timestamp{Wall: time.Unix(200, 0).UnixNano()}); !errors.Is(err, ErrClockOffset) {
		t.Fatalf("remote 99 s ahead: %v", err)
	}
}

// Causality across sites: a message chain a -> b -> a is ordered even with skewed clocks.
func TestHLCCausalityAcrossSkewedClocks(t *testing.T) {
	ptA, ptB := &fakeTime{t: time.Unix(1000, 0)}, &fakeTime{t: time.Unix(990, 0)} // b is 10 s slow
	a, b := NewClock(ptA.now, 0), NewClock(ptB.now, 0)
	send := a.Now()
	recv, _ := b.Update(send)
	reply := b.Now()
	back, _ := a.Update(reply)
	if !(send.Less(recv) && recv.Less(reply) && reply.Less(back)) {
		t.Fatalf("causal chain out of order: %v %v %v %v", send, recv, reply, back)
	}
}

func TestHLCLogicalOverflow(t *testing.T) {
	ts := Timestamp{Wall: 10, Logical: ^uint32(0)}
	if n := ts.tick(); n.Wall != 11 || n.Logical != 0 || !ts.Less(n) {
		t.Fatalf("overflow tick: %v", n)
	}
}

func TestHLCConcurrentNowIsStrictlyIncreasing(t *testing.T) {
	c := NewClock(time.Now, 0)
	const n, g = 2000, 4
	out := make([][]Timestamp, g)
	var wg sync.WaitGroup
	for i := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				out[i] = append(out[i], c.Now())
			}
		}()
	}
	wg.Wait()
	seen := map[Timestamp]bool{}
	for _, ts := range out {
		for j, x := range ts {
			if seen[x] {
				t.Fatalf("timestamp %v issued twice", x)
			}
			seen[x] = true
			if j > 0 && !ts[j-1].Less(x) {
				t.Fatalf("not increasing within a goroutine: %v then %v", ts[j-1], x)
			}
		}
	}
}

// NowN issues what as many calls of Now would: increasing timestamps after every earlier one,
// starting at the physical time when it has moved on, and before every later one.
func TestHLCNowN(t *testing.T) {
	pt := &fakeTime{t: time.Unix(100, 0)}
	c := NewClock(pt.now, 0)
	before := c.Now()
	var got []Timestamp
	c.NowN(3, func(i int, ts Timestamp) {
		if i != len(got) {
			t.Fatalf("index %d, want %d", i, len(got))
		}
		got = append(got, ts)
	})
	want := []Timestamp{{before.Wall, 1}, {before.Wall, 2}, {before.Wall, 3}}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("same physical time: %v, want %v", got, want)
	}
	pt.set(time.Unix(101, 0))
	got = got[:0]
	c.NowN(2, func(_ int, ts Timestamp) { got = append(got, ts) })
	wall := time.Unix(101, 0).UnixNano()
	if len(got) != 2 || got[0] != (Timestamp{wall, 0}) || got[1] != (Timestamp{wall, 1}) {
		t.Fatalf("physical time moved on: %v", got)
	}
	if after := c.Now(); !got[1].Less(after) {
		t.Fatalf("Now after NowN: %v then %v", got[1], after)
	}
	c.NowN(0, func(int, Timestamp) { t.Fatal("called for n = 0") })
}
