package locks

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Service is the lock service: lock references, grants with fencing tokens, leases, forced
// release, watches and elections. NewZooKeeperService and NewInProcess return the two
// implementations; both pass the same conformance suite (conformance_test.go) and are safe for
// concurrent use by any number of goroutines.
//
// A reference (Ref) is a place in the FIFO queue of a name. It is created with CreateRef, becomes
// the holder (a Grant) through Acquire or TryAcquire when every reference ahead of it that
// conflicts has gone, and leaves the queue by Release, by its lease running out, by ForceRelease,
// or when the ZooKeeper session of the daemon that created it is lost. A reference does not
// depend on the connection of the client that asked for it: any daemon sharing the ZooKeeper
// ensemble can acquire, renew or release it by name and ID.
//
// Errors name the lock and wrap one of the sentinels below (errors.Is), or the context's error
// (context.DeadlineExceeded, context.Canceled) when a blocking call ran out of time.
type Service interface {
	// CreateRef queues a new reference for name. The reference's lease (opts.Lease) starts now.
	// Errors: ErrInvalidName, ErrInvalidOptions, ErrClosed.
	CreateRef(ctx context.Context, name string, opts RefOptions) (Ref, error)
	// Acquire blocks until ref holds its lock, or ctx ends: then it returns ctx's error and ref
	// keeps its place in the queue (Release it to leave). While it blocks it keeps ref's lease
	// alive, and a grant leaves the holder at least three quarters of its lease. Acquiring a ref
	// that already holds returns the same grant again.
	// Errors: ErrNotHeld (ref is not in the queue: released, expired, forced out, or never
	// created), ErrLockLost (this service knows ref was lost: its session ended), ErrInvalidName,
	// ErrClosed, ctx's error.
	Acquire(ctx context.Context, ref Ref) (*Grant, error)
	// TryAcquire is Acquire without waiting: ErrWouldBlock when a conflicting reference is ahead.
	TryAcquire(ctx context.Context, ref Ref) (*Grant, error)
	// Release removes ref from its queue, whether it holds or waits. Releasing the holder of a
	// write lock is a clean release: the next holder's grant has PreviousUnclean false.
	// Errors: ErrNotHeld, ErrLockLost, ErrInvalidName, ErrClosed.
	Release(ctx context.Context, ref Ref) error
	// Renew restarts ref's lease (holding or waiting). Errors: as Release.
	Renew(ctx context.Context, ref Ref) error
	// Holders returns the current holders of name (one writer, or any number of readers), in
	// queue order; none when the lock is free. The read is linearized with ZooKeeper's sync.
	Holders(ctx context.Context, name string) ([]Holder, error)
	// ForceRelease removes the reference id of name, holding or waiting, as an unclean end: if it
	// held a write lock, the next grant has PreviousUnclean set. Errors: ErrNotHeld (no such
	// reference), ErrInvalidName, ErrClosed.
	ForceRelease(ctx context.Context, name, id string) error
	// ReleaseExpired removes every reference of name whose lease has run out or whose owner's
	// ZooKeeper session is gone (what the background reaper does, every ReapInterval) and returns
	// how many it removed.
	ReleaseExpired(ctx context.Context, name string) (int, error)
	// Watch sends the holders of name now and after every change, coalesced: a slow reader
	// receives the latest holders, never a backlog. The channel is closed when ctx ends or the
	// service closes.
	Watch(ctx context.Context, name string) (<-chan []Holder, error)

	// Campaign blocks until candidate leads election or ctx ends (then it withdraws). The
	// leadership's Epoch is a fencing token, strictly increasing from leader to leader.
	Campaign(ctx context.Context, election, candidate string) (*Leadership, error)
	// Observe sends the current leader of election (the zero Leader when none) now and after
	// every change, coalesced like Watch; closed when ctx ends or the service closes.
	Observe(ctx context.Context, election string) (<-chan Leader, error)

	// Close stops the service's goroutines and removes the references it created and still
	// tracks (holders end unclean). It does not close the ZooKeeper session it was given.
	Close() error
}

// LockType is the kind of a reference: write references exclude every other holder; read
// references share the lock with the read references next to them in the queue.
type LockType uint8

const (
	Write LockType = iota
	Read
)

func (t LockType) String() string {
	switch t {
	case Write:
		return "write"
	case Read:
		return "read"
	}
	return fmt.Sprintf("LockType(%d)", uint8(t))
}

// RefOptions describe a new reference.
type RefOptions struct {
	// Type: Write (default) or Read.
	Type LockType
	// Lease: the reference is removed once this long has passed since it was created or last
	// renewed, judged by ZooKeeper's clock (the in-process service: its clock). Zero: no lease;
	// the reference lives until released, forced out, or its service's session ends. At most
	// MaxLease; leases are kept to millisecond precision.
	Lease time.Duration
	// Owner is a free label (a client, a daemon) reported by Holders; at most 256 bytes.
	Owner string
}

// MaxLease bounds RefOptions.Lease.
const MaxLease = 24 * time.Hour

func (o RefOptions) validate() error {
	if o.Type != Write && o.Type != Read {
		return fmt.Errorf("%w: type %d", ErrInvalidOptions, o.Type)
	}
	if o.Lease < 0 || o.Lease > MaxLease || (o.Lease > 0 && o.Lease < time.Millisecond) {
		return fmt.Errorf("%w: lease %s is outside 1ms-%s (or 0 for none)", ErrInvalidOptions, o.Lease, MaxLease)
	}
	if len(o.Owner) > 256 {
		return fmt.Errorf("%w: owner is %d bytes, more than 256", ErrInvalidOptions, len(o.Owner))
	}
	return nil
}

// Ref names a reference: the lock's name and the reference's ID within it. Both are plain strings
// a REST client can carry; any daemon of the same ensemble resolves them.
type Ref struct {
	Name string
	ID   string

	space space // locks (the zero value) or elections
}

func (r Ref) String() string { return r.Name + "/" + r.ID }

// Grant is a reference that holds its lock.
type Grant struct {
	Ref  Ref
	Type LockType
	// Token is the fencing token: it strictly increases from grant to grant of the same name,
	// across holders, forced releases, daemon restarts and ZooKeeper restarts. Stores that
	// accept writes under the lock compare it (the journal's epoch).
	Token uint64
	// PreviousUnclean: the previous write holder of this name ended without releasing (its lease
	// ran out, it was forced out, or its session was lost). The new holder must bring the state
	// the lock protects up to date before trusting it.
	PreviousUnclean bool

	lost <-chan struct{}
}

// Lost is closed when the service learns that this grant no longer holds: its session was lost,
// or the reference was removed by someone else (lease expiry, ForceRelease). It is not closed by
// the holder's own Release.
func (g *Grant) Lost() <-chan struct{} { return g.lost }

// Holder describes one current holder of a lock.
type Holder struct {
	Ref   Ref
	Type  LockType
	Token uint64
	Owner string
	Lease time.Duration
}

// Leader is the current leader of an election; the zero value means none.
type Leader struct {
	Candidate string
	Epoch     uint64
}

// Sentinel errors; the methods of Service document which they return.
var (
	// ErrInvalidName: a lock or election name is empty, longer than 200 bytes, starts with a dot,
	// or holds a byte outside [A-Za-z0-9._:@=+-].
	ErrInvalidName = errors.New("invalid lock name")
	// ErrInvalidRef: a reference ID is not one this service could have made.
	ErrInvalidRef = errors.New("invalid lock reference")
	// ErrInvalidOptions: RefOptions out of range.
	ErrInvalidOptions = errors.New("invalid lock options")
	// ErrNotHeld: the reference is not in its lock's queue (released, expired, forced out, or
	// never created).
	ErrNotHeld = errors.New("lock reference not held")
	// ErrLockLost: the reference was lost with the ZooKeeper session of the service that created
	// it, or removed by someone else after this service granted it.
	ErrLockLost = errors.New("lock lost")
	// ErrWouldBlock: TryAcquire found a conflicting reference ahead.
	ErrWouldBlock = errors.New("lock is held")
	// ErrClosed: the service was closed.
	ErrClosed = errors.New("lock service closed")
)

// MaxNameLen bounds lock and election names.
const MaxNameLen = 200

// ValidateName reports whether name can name a lock or an election (ErrInvalidName otherwise).
// The alphabet keeps names usable as znode names and in URLs without escaping; callers with other
// keys escape or hash them first.
func ValidateName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: %q must be 1-%d bytes", ErrInvalidName, name, MaxNameLen)
	}
	if name[0] == '.' {
		return fmt.Errorf("%w: %q starts with a dot", ErrInvalidName, name)
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			return fmt.Errorf("%w: %q has %q at %d", ErrInvalidName, name, name[i], i)
		}
	}
	return nil
}

func nameByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '.', '_', ':', '@', '=', '+', '-':
		return true
	}
	return false
}

// space separates lock names from election names: the same string may name both.
type space uint8

const (
	spaceLocks space = iota
	spaceElections
)

func (s space) String() string {
	if s == spaceElections {
		return "elections"
	}
	return "locks"
}

// Clock is the time source of the in-process service and of the ZooKeeper service's timers (the
// ZooKeeper service judges leases by the server's clock, never by this one).
type Clock interface {
	Now() time.Time
	// After is time.After on this clock.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// RealClock is the wall clock.
func RealClock() Clock { return realClock{} }

// waitErr is the error of a blocking call whose ctx ended.
func waitErr(ctx context.Context, what string, ref Ref) error {
	return fmt.Errorf("%s %s: %w", what, ref, ctx.Err())
}
