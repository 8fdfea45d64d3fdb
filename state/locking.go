package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

// holder returns the grant of ref, which must hold the lock of key kid.
func (s *Service) holder(ctx context.Context, ref LockRef, kid keyID) (*locks.Grant, error) {
	r, err := ref.parse()
	if err != nil {
		return nil, err
	}
	if r.Name != kid.lockName() {
		return nil, fmt.Errorf("%w: lock reference %s is for another key", ErrNotHolder, ref)
	}
	if g, ok := s.grants.get(ref); ok {
		select {
		case <-g.Lost():
			s.grants.drop(ref)
			return nil, fmt.Errorf("%w: lock reference %s lost its lock (lease expired or forced out)", ErrNotHolder, ref)
		default:
			return g, nil
		}
	}
	g, err := s.locks.TryAcquire(ctx, r)
	if err != nil {
		return nil, lockErr(ref, err)
	}
	s.grants.set(ref, g)
	return g, nil
}

// lockErr maps a lock service error.
func lockErr(ref LockRef, err error) error {
	switch {
	case errors.Is(err, locks.ErrWouldBlock):
		return fmt.Errorf("%w: lock reference %s is waiting, not holding", ErrNotHolder, ref)
	case errors.Is(err, locks.ErrNotHeld), errors.Is(err, locks.ErrLockLost):
		return fmt.Errorf("%w: lock reference %s is not in the lock's queue (released, expired or forced out)", ErrNotHolder, ref)
	case errors.Is(err, locks.ErrInvalidName), errors.Is(err, locks.ErrInvalidRef), errors.Is(err, locks.ErrInvalidOptions):
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return unavailable("lock service", err)
}

// CreateLock queues a new reference on the lock of a row's key.
func (s *Service) CreateLock(ctx context.Context, keyspace, table string, key journal.Row, opts locks.RefOptions) (LockRef, error) {
	t, err := s.Table(ctx, keyspace, table)
	if err != nil {
		return "", err
	}
	if err := checkKey(t, key); err != nil {
		return "", err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	r, err := s.locks.CreateRef(ctx, newKeyID(t, key).lockName(), opts)
	if err != nil {
		return "", lockErr("", err)
	}
	s.metrics.lockOps.WithLabelValues("create").Inc()
	return makeRef(r), nil
}

// AcquireLock waits up to wait for ref to hold its lock. Before it returns the grant it fences
// the key's stream with the grant's token (from then on an earlier holder cannot write) and
// brings the table up to the stream's head. Not granted by the deadline: *LockedError.
func (s *Service) AcquireLock(ctx context.Context, ref LockRef, wait time.Duration) (LockGrant, error) {
	start := time.Now()
	r, err := ref.parse()
	if err != nil {
		return LockGrant{}, err
	}
	kid, err := keyIDOfLock(r.Name)
	if err != nil {
		return LockGrant{}, err
	}
	if wait < 0 || wait > s.cfg.MaxWait {
		return LockGrant{}, fmt.Errorf("%w: wait %s outside 0-%s", ErrInvalid, wait, s.cfg.MaxWait)
	}
	t, err := s.Table(ctx, kid.keyspace, kid.table)
	if err != nil {
		return LockGrant{}, err
	}
	g, err := s.acquire(ctx, r, wait)
	if err != nil {
		return LockGrant{}, err
	}
	s.metrics.lockWait.Observe(time.Since(start).Seconds())
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	n, err := s.fenceAndCatchUp(ctx, t, kid, g.Token)
	if err != nil {
		return LockGrant{}, err
	}
	s.grants.set(ref, g)
	return LockGrant{Ref: ref, Token: g.Token, PreviousUnclean: g.PreviousUnclean, CaughtUp: n}, nil
}

// acquire waits up to wait for r's grant; at the deadline it reports the holders.
func (s *Service) acquire(ctx context.Context, r locks.Ref, wait time.Duration) (*locks.Grant, error) {
	var g *locks.Grant
	var err error
	if wait == 0 { // one try, bounded like any operation
		tctx, cancel := s.opCtx(ctx)
		g, err = s.locks.TryAcquire(tctx, r)
		cancel()
	} else {
		actx, cancel := context.WithTimeout(ctx, wait)
		g, err = s.locks.Acquire(actx, r)
		cancel()
	}
	s.metrics.lockOps.WithLabelValues("acquire").Inc()
	if err == nil {
		return g, nil
	}
	// Not granted by the deadline (a slow lock service on a single try is not "locked": 503).
	if errors.Is(err, locks.ErrWouldBlock) || (wait > 0 && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil) {
		hctx, hcancel := s.opCtx(ctx)
		defer hcancel()
		hs, herr := s.holders(hctx, r.Name)
		if herr != nil {
			return nil, herr
		}
		return nil, &LockedError{Holders: hs}
	}
	if errors.Is(err, locks.ErrNotHeld) || errors.Is(err, locks.ErrLockLost) {
		return nil, fmt.Errorf("%w: lock reference %s is not in the lock's queue (released, expired or forced out)", ErrNotFound, makeRef(r))
	}
	return nil, lockErr(makeRef(r), err)
}

// fenceAndCatchUp raises the key stream's epoch to token and re-applies its last entries.
func (s *Service) fenceAndCatchUp(ctx context.Context, t Table, kid keyID, token uint64) (int, error) {
	stream := kid.stream()
	defer s.keyMu.lock(stream)()
	h, err := s.journal.Fence(ctx, stream, token)
	if errors.Is(err, journal.ErrFenced) {
		return 0, fmt.Errorf("%w: the key's stream is fenced above token %d", ErrNotHolder, token)
	}
	if err != nil {
		return 0, unavailable("fence the key's stream", err)
	}
	st, n, err := s.catchUp(ctx, t, stream, h)
	if err != nil {
		s.keys.drop(stream)
		return 0, err
	}
	if n > 0 {
		s.metrics.caughtUp.Add(float64(n))
	}
	s.keys.set(stream, st)
	return n, nil
}

// ReleaseLock removes ref from its lock's queue (a clean release when it holds).
func (s *Service) ReleaseLock(ctx context.Context, ref LockRef) error {
	return s.refOp(ctx, ref, "release", true, s.locks.Release)
}

// RenewLock restarts ref's lease.
func (s *Service) RenewLock(ctx context.Context, ref LockRef) error {
	return s.refOp(ctx, ref, "renew", false, s.locks.Renew)
}

// ForceRelease removes ref from its lock's queue as an unclean end: the next holder catches up.
func (s *Service) ForceRelease(ctx context.Context, ref LockRef) error {
	return s.refOp(ctx, ref, "force", true, func(ctx context.Context, r locks.Ref) error {
		return s.locks.ForceRelease(ctx, r.Name, r.ID)
	})
}

// refOp runs a lock service call on ref, forgetting its cached grant first if ends.
func (s *Service) refOp(ctx context.Context, ref LockRef, op string, ends bool, call func(context.Context, locks.Ref) error) error {
	r, err := ref.parse()
	if err != nil {
		return err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	if ends {
		s.grants.drop(ref)
	}
	s.metrics.lockOps.WithLabelValues(op).Inc()
	if err := call(ctx, r); err != nil {
		return notFoundRef(ref, err)
	}
	return nil
}

func notFoundRef(ref LockRef, err error) error {
	if errors.Is(err, locks.ErrNotHeld) || errors.Is(err, locks.ErrLockLost) {
		return fmt.Errorf("%w: lock reference %s is not in the lock's queue (released, expired or forced out)", ErrNotFound, ref)
	}
	return lockErr(ref, err)
}

// LockHolders returns the current holders of a row key's lock.
func (s *Service) LockHolders(ctx context.Context, keyspace, table string, key journal.Row) ([]LockHolder, error) {
	t, err := s.Table(ctx, keyspace, table)
	if err != nil {
		return nil, err
	}
	if err := checkKey(t, key); err != nil {
		return nil, err
	}
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	return s.holders(ctx, newKeyID(t, key).lockName())
}

func (s *Service) holders(ctx context.Context, name string) ([]LockHolder, error) {
	hs, err := s.locks.Holders(ctx, name)
	if err != nil {
		return nil, lockErr("", err)
	}
	out := make([]LockHolder, len(hs))
	for i, h := range hs {
		out[i] = LockHolder{Ref: makeRef(h.Ref), Type: h.Type.String(), Token: h.Token, Owner: h.Owner, Lease: h.Lease}
	}
	return out, nil
}

// atomically takes the key's lock for one operation: it queues a reference with the configured
// lease, waits up to wait (0: the default) for it, runs fn with the grant's token, and releases.
// fn does not need the stream fenced first: its append fences it (a lightweight transaction
// fewer), and an earlier holder's late append makes that append conflict, so fn catches up and
// tries again.
func (s *Service) atomically(ctx context.Context, t Table, key journal.Row, wait time.Duration, owner string, fn func(ctx context.Context, token uint64) error) error {
	if wait == 0 {
		wait = s.cfg.DefaultWait
	}
	name := newKeyID(t, key).lockName()
	cctx, cancel := s.opCtx(ctx)
	r, err := s.locks.CreateRef(cctx, name, locks.RefOptions{Lease: s.cfg.LockLease, Owner: "atomic " + owner})
	cancel()
	if err != nil {
		return lockErr("", err)
	}
	defer func() {
		// Release even when ctx ended: a reference left behind holds the key until its lease.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.OpTimeout)
		defer cancel()
		if err := s.locks.Release(rctx, r); err != nil && !errors.Is(err, locks.ErrNotHeld) {
			s.log.Warn("releasing an atomic operation's lock", "lock", r.Name, "err", err)
		}
	}()
	g, err := s.acquire(ctx, r, wait)
	if err != nil {
		return err
	}
	octx, ocancel := s.opCtx(ctx)
	defer ocancel()
	return fn(octx, g.Token)
}
