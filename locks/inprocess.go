package locks

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// InProcessConfig tunes NewInProcess.
type InProcessConfig struct {
	// Clock judges leases and drives the reaper. Default: real.
	Clock Clock
	// FirstToken is the first fencing token the service gives. Tokens are only unique within one
	// service; a daemon that restarts over the same journal starts above every token it gave
	// before (embedded mode uses the start time in microseconds: no run gives more than one
	// token per microsecond). Default 1.
	FirstToken uint64
}

// inProcess is the in-process implementation of Service (embedded mode: one daemon, no
// ZooKeeper). Same semantics as the ZooKeeper one, except that there is no session to lose.
// All state is under mu; one goroutine (the reaper) expires leases by the injected clock.
type inProcess struct {
	clock   Clock
	closing chan struct{}
	wake    chan struct{} // capacity 1: the reaper recomputes its next deadline
	// tokenBase is added to the reference counter to make fencing tokens (FirstToken - 1).
	tokenBase uint64
	wg        sync.WaitGroup

	mu struct {
		sync.Mutex
		closed bool
		token  uint64 // last token given: tokens are global, so they increase per name too
		locks  map[lockKey]*ipLock
		refs   map[refKey]*ipRef
		tombs  tombstones
	}
}

var _ Service = (*inProcess)(nil)

type lockKey struct {
	sp   space
	name string
}

type refKey struct {
	lockKey
	id string
}

func (k refKey) String() string { return fmt.Sprintf("%s/%s/%s", k.sp, k.name, k.id) }

type ipLock struct {
	queue    []*ipRef      // in token (creation) order
	unclean  bool          // the last write holder did not release
	changed  chan struct{} // closed and replaced at every change of queue
	watchers int
}

type ipRef struct {
	key     refKey
	ref     Ref
	typ     LockType
	token   uint64
	lease   time.Duration
	owner   string
	renewed time.Time
	waiting int // Acquire calls blocked on it: they keep its lease alive
	grant   *Grant
	lost    chan struct{}
	isLost  bool
}

// NewInProcess starts an in-process lock service; Close stops it.
func NewInProcess(cfg InProcessConfig) *inProcess {
	if cfg.Clock == nil {
		cfg.Clock = RealClock()
	}
	s := &inProcess{clock: cfg.Clock, closing: make(chan struct{}), wake: make(chan struct{}, 1)}
	if cfg.FirstToken > 0 {
		s.tokenBase = cfg.FirstToken - 1
	}
	s.mu.locks = map[lockKey]*ipLock{}
	s.mu.refs = map[refKey]*ipRef{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.reaper()
	}()
	return s
}

func (s *inProcess) goroutine(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

func (s *inProcess) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *inProcess) lockLocked(k lockKey) *ipLock {
	l := s.mu.locks[k]
	if l == nil {
		l = &ipLock{changed: make(chan struct{})}
		s.mu.locks[k] = l
	}
	return l
}

func (s *inProcess) changedLocked(k lockKey, l *ipLock) {
	close(l.changed)
	l.changed = make(chan struct{})
	if len(l.queue) == 0 && !l.unclean && l.watchers == 0 {
		delete(s.mu.locks, k)
	}
}

// holdsLocked: r holds when no conflicting reference is ahead of it.
func holdsLocked(l *ipLock, r *ipRef) bool {
	for _, o := range l.queue {
		if o == r {
			return true
		}
		if r.typ == Write || o.typ == Write {
			return false
		}
	}
	return false
}

func (s *inProcess) enterLocked() error {
	if s.mu.closed {
		return ErrClosed
	}
	return nil
}

func (s *inProcess) CreateRef(ctx context.Context, name string, opts RefOptions) (Ref, error) {
	return s.createRef(ctx, spaceLocks, name, opts)
}

func (s *inProcess) createRef(_ context.Context, sp space, name string, opts RefOptions) (Ref, error) {
	if err := ValidateName(name); err != nil {
		return Ref{}, fmt.Errorf("create reference: %w", err)
	}
	if err := opts.validate(); err != nil {
		return Ref{}, fmt.Errorf("create reference for %s: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enterLocked(); err != nil {
		return Ref{}, fmt.Errorf("create reference for %s: %w", name, err)
	}
	s.mu.token++
	id := nodePrefix(opts.Type, newGUID()) + fmt.Sprintf("%0*d", seqLen, s.mu.token)
	k := refKey{lockKey{sp, name}, id}
	r := &ipRef{key: k, ref: Ref{Name: name, ID: id, space: sp}, typ: opts.Type, token: s.tokenBase + s.mu.token,
		lease: opts.Lease.Truncate(time.Millisecond), owner: opts.Owner, renewed: s.clock.Now(), lost: make(chan struct{})}
	l := s.lockLocked(k.lockKey)
	l.queue = append(l.queue, r)
	s.mu.refs[k] = r
	s.changedLocked(k.lockKey, l)
	if r.lease > 0 {
		s.poke()
	}
	return r.ref, nil
}

func keyOf(ref Ref) (refKey, error) {
	if err := ValidateName(ref.Name); err != nil {
		return refKey{}, err
	}
	if _, ok := parseRefID(ref.ID); !ok {
		return refKey{}, fmt.Errorf("%w: %q", ErrInvalidRef, ref.ID)
	}
	return refKey{lockKey{ref.space, ref.Name}, ref.ID}, nil
}

// refLocked finds a queued reference, or says why not.
func (s *inProcess) refLocked(k refKey) (*ipRef, error) {
	if err := s.enterLocked(); err != nil {
		return nil, err
	}
	r := s.mu.refs[k]
	switch {
	case r == nil && s.mu.tombs.lost(k.String()):
		return nil, ErrLockLost
	case r == nil:
		return nil, ErrNotHeld
	case r.isLost:
		return nil, ErrLockLost
	}
	return r, nil
}

func (s *inProcess) Acquire(ctx context.Context, ref Ref) (*Grant, error) {
	return s.acquire(ctx, ref, true)
}

func (s *inProcess) TryAcquire(ctx context.Context, ref Ref) (*Grant, error) {
	return s.acquire(ctx, ref, false)
}

func (s *inProcess) acquire(ctx context.Context, ref Ref, block bool) (*Grant, error) {
	g, err := s.acquire1(ctx, ref, block)
	if err != nil {
		return nil, fmt.Errorf("acquire %s: %w", ref, err)
	}
	return g, nil
}

func (s *inProcess) acquire1(ctx context.Context, ref Ref, block bool) (*Grant, error) {
	k, err := keyOf(ref)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var waiting *ipRef
	defer func() {
		if waiting != nil {
			waiting.waiting--
		}
	}()
	for {
		r, err := s.refLocked(k)
		if err != nil {
			return nil, err
		}
		if r.grant != nil {
			return r.grant, nil
		}
		l := s.mu.locks[k.lockKey]
		if holdsLocked(l, r) {
			r.grant = &Grant{Ref: r.ref, Type: r.typ, Token: r.token, PreviousUnclean: l.unclean, lost: r.lost}
			if now := s.clock.Now(); r.lease > 0 && now.Sub(r.renewed) > r.lease/4 {
				r.renewed = now
			}
			return r.grant, nil
		}
		if !block {
			return nil, ErrWouldBlock
		}
		if waiting == nil {
			waiting = r
			r.waiting++
		}
		changed := l.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
		case <-s.closing:
		}
		s.mu.Lock()
		if err := ctx.Err(); err != nil {
			r.renewed = s.clock.Now() // its lease runs from the end of the wait
			return nil, err
		}
	}
}

func (s *inProcess) Release(ctx context.Context, ref Ref) error { return s.release(ctx, ref) }

func (s *inProcess) release(_ context.Context, ref Ref) error {
	k, err := keyOf(ref)
	if err == nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		var r *ipRef
		if r, err = s.refLocked(k); err == nil {
			s.removeLocked(r, false)
		}
	}
	if err != nil {
		return fmt.Errorf("release %s: %w", ref, err)
	}
	return nil
}

// removeLocked takes r out of its queue. A write holder's end is recorded: clean or not.
// A granted reference removed uncleanly is lost.
func (s *inProcess) removeLocked(r *ipRef, unclean bool) {
	l := s.mu.locks[r.key.lockKey]
	if holdsLocked(l, r) && r.typ == Write {
		l.unclean = unclean
	}
	l.queue = slices.DeleteFunc(l.queue, func(o *ipRef) bool { return o == r })
	delete(s.mu.refs, r.key)
	if unclean && r.grant != nil && !r.isLost {
		r.isLost = true
		close(r.lost)
		s.mu.tombs.add(r.key.String())
	}
	s.changedLocked(r.key.lockKey, l)
}

func (s *inProcess) Renew(_ context.Context, ref Ref) error {
	k, err := keyOf(ref)
	if err == nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		var r *ipRef
		if r, err = s.refLocked(k); err == nil {
			r.renewed = s.clock.Now()
			s.poke()
		}
	}
	if err != nil {
		return fmt.Errorf("renew %s: %w", ref, err)
	}
	return nil
}

func (s *inProcess) Holders(_ context.Context, name string) ([]Holder, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("holders: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enterLocked(); err != nil {
		return nil, fmt.Errorf("holders %s: %w", name, err)
	}
	return s.holdersLocked(lockKey{spaceLocks, name}), nil
}

func (s *inProcess) holdersLocked(k lockKey) []Holder {
	l := s.mu.locks[k]
	if l == nil {
		return nil
	}
	var out []Holder
	for _, r := range l.queue {
		if !holdsLocked(l, r) {
			break
		}
		out = append(out, Holder{Ref: r.ref, Type: r.typ, Token: r.token, Owner: r.owner, Lease: r.lease})
	}
	return out
}

func (s *inProcess) ForceRelease(_ context.Context, name, id string) error {
	ref := Ref{Name: name, ID: id}
	k, err := keyOf(ref)
	if err == nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		err = s.enterLocked()
		if r := s.mu.refs[k]; err == nil && r == nil {
			err = ErrNotHeld
		} else if err == nil {
			s.removeLocked(r, true)
		}
	}
	if err != nil {
		return fmt.Errorf("force release %s: %w", ref, err)
	}
	return nil
}

func (s *inProcess) ReleaseExpired(_ context.Context, name string) (int, error) {
	if err := ValidateName(name); err != nil {
		return 0, fmt.Errorf("release expired: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.enterLocked(); err != nil {
		return 0, fmt.Errorf("release expired %s: %w", name, err)
	}
	n, _ := s.expireLocked(&lockKey{spaceLocks, name})
	return n, nil
}

// expireLocked removes the references (of one lock, or all) whose lease ran out and returns how
// many, and when the next lease runs out (zero: none).
func (s *inProcess) expireLocked(only *lockKey) (int, time.Time) {
	now := s.clock.Now()
	var next time.Time
	n := 0
	for _, r := range s.mu.refs {
		if r.lease == 0 || (only != nil && r.key.lockKey != *only) {
			continue
		}
		if r.waiting > 0 {
			r.renewed = now
		}
		end := r.renewed.Add(r.lease)
		if now.After(end) {
			s.removeLocked(r, true)
			n++
			continue
		}
		if next.IsZero() || end.Before(next) {
			next = end
		}
	}
	return n, next
}

// reaper expires leases at their deadline by the clock.
func (s *inProcess) reaper() {
	for {
		s.mu.Lock()
		_, next := s.expireLocked(nil)
		s.mu.Unlock()
		var timer <-chan time.Time
		if !next.IsZero() {
			timer = s.clock.After(next.Sub(s.clock.Now()) + time.Millisecond)
		}
		select {
		case <-timer:
		case <-s.wake:
		case <-s.closing:
			return
		}
	}
}

func (s *inProcess) Watch(ctx context.Context, name string) (<-chan []Holder, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	ch, err := s.watch(ctx, spaceLocks, name)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", name, err)
	}
	return ch, nil
}

func (s *inProcess) watch(ctx context.Context, sp space, name string) (<-chan []Holder, error) {
	k := lockKey{sp, name}
	s.mu.Lock()
	if err := s.enterLocked(); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	s.lockLocked(k).watchers++
	s.mu.Unlock()
	out := make(chan []Holder, 1)
	ok := s.goroutine(func() {
		defer close(out)
		var last []Holder
		first := true
		for {
			s.mu.Lock()
			l := s.lockLocked(k)
			hs := s.holdersLocked(k)
			changed := l.changed
			s.mu.Unlock()
			if first || !sameHolders(hs, last) {
				first, last = false, hs
				sendLatest(out, hs)
			}
			select {
			case <-changed:
				continue
			case <-ctx.Done():
			case <-s.closing:
			}
			s.mu.Lock()
			l = s.lockLocked(k)
			l.watchers--
			if len(l.queue) == 0 && !l.unclean && l.watchers == 0 {
				delete(s.mu.locks, k)
			}
			s.mu.Unlock()
			return
		}
	})
	if !ok {
		return nil, ErrClosed
	}
	return out, nil
}

func (s *inProcess) Campaign(ctx context.Context, election, candidate string) (*Leadership, error) {
	return campaign(ctx, s, election, candidate)
}

func (s *inProcess) Observe(ctx context.Context, election string) (<-chan Leader, error) {
	return observe(ctx, s, election)
}

// Close removes every reference (granted ones are lost), wakes every waiter with ErrClosed, and
// waits for the reaper and the watches.
func (s *inProcess) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	for _, r := range s.mu.refs {
		s.removeLocked(r, true)
	}
	s.mu.closed = true
	close(s.closing)
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}
