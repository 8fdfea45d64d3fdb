package journal

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// Timestamp is a hybrid logical clock reading: physical time in nanoseconds since the Unix epoch,
// and a logical counter that orders events within the same physical time. If event a happened
// before event b (same site, or b's site saw a's timestamp), a's timestamp is less than b's.
type Timestamp struct {
	Wall    int64
	Logical uint32
}

// Compare returns -1, 0 or 1 as t is before, equal to, or after o.
func (t Timestamp) Compare(o Timestamp) int {
	switch {
	case t.Wall < o.Wall:
		return -1
	case t.Wall > o.Wall:
		return 1
	case t.Logical < o.Logical:
		return -1
	case t.Logical > o.Logical:
		return 1
	}
	return 0
}

// Less reports whether t is before o.
func (t Timestamp) Less(o Timestamp) bool { return t.Compare(o) < 0 }

// IsZero reports whether t is the zero timestamp (never issued by a Clock).
func (t Timestamp) IsZero() bool { return t == Timestamp{} }

func (t Timestamp) String() string {
	return fmt.Sprintf("%s+%d", time.Unix(0, t.Wall).UTC().Format("2006-01-02T15:04:05.000000000Z"), t.Logical)
}

// ErrClockOffset is returned by Clock.Update for a remote timestamp further ahead of the local
// physical clock than the configured maximum offset: a sign of a broken clock at some site.
var ErrClockOffset = errors.New("journal: remote timestamp too far ahead of the local clock")

// Clock is a hybrid logical clock (Kulkarni et al., 2014). It is safe for concurrent use.
type Clock struct {
	physical  func() time.Time
	maxOffset time.Duration

	mu struct {
		sync.Mutex
		last Timestamp
	}
}

// NewClock returns a clock reading physical time from now (time.Now in production, a fake in
// tests). maxOffset bounds how far ahead a remote timestamp may be (0: no bound).
func NewClock(now func() time.Time, maxOffset time.Duration) *Clock {
	return &Clock{physical: now, maxOffset: maxOffset}
}

// Now returns a timestamp for a local event, greater than every timestamp the clock returned or
// observed before.
func (c *Clock) Now() Timestamp {
	pt := c.physical().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nextLocked(pt)
}

// nextLocked issues the next local timestamp at physical time pt; c.mu is held.
func (c *Clock) nextLocked(pt int64) Timestamp {
	if pt > c.mu.last.Wall {
		c.mu.last = Timestamp{Wall: pt}
	} else {
		c.mu.last = c.mu.last.tick()
	}
	return c.mu.last
}

// NowN gives n local events in order timestamps like n calls of Now, reading the physical clock
// once: set is called with i = 0..n-1 and the i-th timestamp, under the clock's lock (set must
// not use the clock).
func (c *Clock) NowN(n int, set func(i int, t Timestamp)) {
	if n <= 0 {
		return
	}
	pt := c.physical().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range n {
		set(i, c.nextLocked(pt)) // after the first, the clock is at pt or later: it ticks
	}
}

// Update merges a timestamp received from another site and returns a timestamp for the receive
// event, greater than both the remote one and every local one.
func (c *Clock) Update(remote Timestamp) (Timestamp, error) {
	pt := c.physical().UnixNano()
	if c.maxOffset > 0 && remote.Wall-pt > c.maxOffset.Nanoseconds() {
		return Timestamp{}, fmt.Errorf("%w: %v ahead (limit %v)", ErrClockOffset, time.Duration(remote.Wall-pt), c.maxOffset)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	last := c.mu.last
	switch {
	case pt > last.Wall && pt > remote.Wall:
		c.mu.last = Timestamp{Wall: pt}
	case last.Compare(remote) >= 0:
		c.mu.last = last.tick()
	default:
		c.mu.last = remote.tick()
	}
	return c.mu.last, nil
}

// tick returns the next timestamp after t at the same physical time, moving to the next
// nanosecond if the logical counter would overflow.
func (t Timestamp) tick() Timestamp {
	if t.Logical == ^uint32(0) {
		return Timestamp{Wall: t.Wall + 1}
	}
	return Timestamp{Wall: t.Wall, Logical: t.Logical + 1}
}
