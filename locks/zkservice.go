package locks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-zookeeper/zk"
)

// ZooKeeperServiceConfig tunes NewZooKeeperService.
type ZooKeeperServiceConfig struct {
	// Root is the znode under which the service keeps locks/, elections/, sessions/ and clock.
	// Default: the Root of the ZooKeeper session's configuration (/music).
	Root string
	// ReapInterval: how often the reaper scans every lock for references whose lease ran out or
	// whose session is gone. Waiters already remove their own blocker promptly; the reaper
	// handles locks nobody waits for. Default 2s.
	ReapInterval time.Duration
	// Clock drives timers (never lease judgement, which uses ZooKeeper's clock). Default: real.
	Clock Clock
	// Logger; default discards.
	Logger *slog.Logger
}

func (c *ZooKeeperServiceConfig) ensureDefaults(z *ZooKeeper) {
	if c.Root == "" {
		c.Root = z.cfg.Root
	}
	if c.Root == "" {
		c.Root = DefaultZooKeeperConfig().Root
	}
	if c.ReapInterval == 0 {
		c.ReapInterval = 2 * time.Second
	}
	if c.Clock == nil {
		c.Clock = RealClock()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c ZooKeeperServiceConfig) validate() error {
	if !strings.HasPrefix(c.Root, "/") || strings.HasSuffix(c.Root, "/") || strings.Contains(c.Root, "//") {
		return fmt.Errorf("root: %q must be an absolute znode path without a trailing slash", c.Root)
	}
	if c.ReapInterval < 10*time.Millisecond || c.ReapInterval > time.Hour {
		return fmt.Errorf("reap_interval: %s is outside 10ms-1h", c.ReapInterval)
	}
	return nil
}

// zkService is the ZooKeeper implementation of Service. See docs/locks.md for the model.
//
// Goroutines, all started through goroutine() and waited for by Close: sessionLoop (this
// service's session key and liveness node), livenessLoop (the set of live session keys),
// reaper, one monitor per tracked reference (its token, and its removal by others), one per
// Watch/Observe. ZooKeeper calls made through call() run on a goroutine of their own, bounded by
// the client (an answer, or ErrConnectionClosed/ErrNoServer within about a second of losing the
// server), so that ctx is honoured; Close waits for them too.
type zkService struct {
	z     *ZooKeeper
	conn  *zk.Conn
	cfg   ZooKeeperServiceConfig
	log   *slog.Logger
	clock Clock
	acl   []zk.ACL
	id    string // random: several services may share one session

	closing chan struct{} // closed by Close: no new operations, waiters give up
	stop    chan struct{} // closed by Close after its cleanup: goroutines end
	wg      sync.WaitGroup
	calls   sync.WaitGroup

	mu struct {
		sync.Mutex
		closed  bool
		stopped bool // no more calls: Close is waiting for them
		// owner is this service's session key; ownerReady is closed while its liveness node
		// exists and the session is not declared lost.
		owner      string
		ownerSID   int64
		ownerGen   int
		ownerReady chan struct{}
		lostOwners map[string]bool // session keys of this service declared lost
		refs       map[string]*zkRef
		tombs      tombstones
		// live is the last listing of sessions/ (nil before the first); liveChanged is closed
		// and replaced when it changes.
		live        map[string]bool
		liveChanged chan struct{}
		clockOffset time.Duration // ZooKeeper's clock minus ours, from the last probe
		gcSeen      map[string]int64
	}
}

var _ Service = (*zkService)(nil)

// zkRef is a reference this service created or acquired. Fields above mu-guarded ones are set
// before the ref is published and never change.
type zkRef struct {
	ref    Ref
	path   string
	parent string
	typ    LockType

	infoReady chan struct{} // closed when czxid/data are known, or the node is gone
	gone      chan struct{} // closed when the node no longer exists
	lost      chan struct{} // closed when lost (Grant.Lost)
	done      chan struct{} // closed when released here (stops the monitor)

	// guarded by zkService.mu
	czxid     int64
	data      []byte
	info      nodeData
	grant     *Grant
	renewed   time.Time // our clock: last create or renewal made here
	releasing bool
	ended     bool // gone, released or lost: channels closed as appropriate
	isLost    bool
}

// NewZooKeeperService starts the lock service on an open session. z stays the caller's: Close
// the service before closing z. It waits (bounded by ctx) until the service's liveness node
// exists.
func NewZooKeeperService(ctx context.Context, z *ZooKeeper, cfg ZooKeeperServiceConfig) (*zkService, error) {
	cfg.ensureDefaults(z)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &zkService{z: z, conn: z.Conn, cfg: cfg, log: cfg.Logger.With("component", "locks"),
		clock: cfg.Clock, acl: zk.WorldACL(zk.PermAll), id: newGUID()[:8],
		closing: make(chan struct{}), stop: make(chan struct{})}
	s.mu.ownerReady = make(chan struct{})
	s.mu.lostOwners = map[string]bool{}
	s.mu.refs = map[string]*zkRef{}
	s.mu.liveChanged = make(chan struct{})
	s.mu.gcSeen = map[string]int64{}
	for _, p := range []string{cfg.Root, s.spacePath(spaceLocks), s.spacePath(spaceElections), s.sessionsPath(), s.clockPath()} {
		if err := s.ensurePath(ctx, p); err != nil {
			return nil, fmt.Errorf("locks: %w", err)
		}
	}
	if _, err := s.probe(ctx); err != nil {
		return nil, fmt.Errorf("locks: clock probe: %w", err)
	}
	s.goroutine(s.sessionLoop)
	s.goroutine(s.livenessLoop)
	s.goroutine(s.reaper)
	if _, err := s.currentOwner(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("locks: %w", err)
	}
	return s, nil
}

func (s *zkService) spacePath(sp space) string { return s.cfg.Root + "/" + sp.String() }
func (s *zkService) sessionsPath() string      { return s.cfg.Root + "/sessions" }
func (s *zkService) clockPath() string         { return s.cfg.Root + "/clock" }

func (s *zkService) goroutine(f func()) bool {
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

// call runs one ZooKeeper request, returning early (the request goes on to its own end) when ctx
// ends or the service stops.
func (s *zkService) call(ctx context.Context, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	s.mu.Lock()
	if s.mu.stopped {
		s.mu.Unlock()
		return ErrClosed
	}
	s.calls.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.calls.Done()
		done <- f()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stop:
		return ErrClosed
	}
}

// retryable errors leave the request's effect unknown (or not applied) and go away by themselves.
func retryable(err error) bool {
	// While the server goes away, go-zookeeper can also hand back the socket's own error
	// (connection reset, broken pipe, EOF) for a request in flight: the session may well live on.
	var netErr *net.OpError
	return errors.Is(err, zk.ErrConnectionClosed) || errors.Is(err, zk.ErrNoServer) ||
		errors.Is(err, zk.ErrSessionMoved) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 20 * time.Millisecond
	b.MaxInterval = time.Second
	b.MaxElapsedTime = 0 // bounded by the callers: attempts, ctx
	b.Reset()
	return b
}

// pause waits d, or returns ctx's error / ErrClosed.
func (s *zkService) pause(ctx context.Context, d time.Duration) error {
	select {
	case <-s.clock.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return ErrClosed
	}
}

// retry runs f until it succeeds, fails with a non-retryable error, or maxAttempts are spent.
const maxAttempts = 10

func (s *zkService) retry(ctx context.Context, f func() error) error {
	b := newBackoff()
	var err error
	for range maxAttempts {
		if err = f(); err == nil || !retryable(err) {
			return err
		}
		if perr := s.pause(ctx, b.NextBackOff()); perr != nil {
			return perr
		}
	}
	return err
}

func (s *zkService) ensurePath(ctx context.Context, p string) error {
	return s.retry(ctx, func() error {
		return s.call(ctx, func() error {
			_, err := s.conn.Create(p, nil, 0, s.acl)
			if errors.Is(err, zk.ErrNodeExists) {
				return nil
			}
			if errors.Is(err, zk.ErrNoNode) && p != "/" {
				if err := s.ensureParents(p); err != nil {
					return err
				}
				_, err = s.conn.Create(p, nil, 0, s.acl)
				if errors.Is(err, zk.ErrNodeExists) {
					return nil
				}
			}
			if err != nil {
				return fmt.Errorf("create %s: %w", p, err)
			}
			return nil
		})
	})
}

// ensureParents creates the ancestors of p (on the calling goroutine: use inside call).
func (s *zkService) ensureParents(p string) error {
	parts := strings.Split(strings.TrimPrefix(path.Dir(p), "/"), "/")
	cur := ""
	for _, part := range parts {
		if part == "" {
			continue
		}
		cur += "/" + part
		if _, err := s.conn.Create(cur, nil, 0, s.acl); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return fmt.Errorf("create %s: %w", cur, err)
		}
	}
	return nil
}

// probe reads ZooKeeper's clock (the mtime of a write to the clock node) and records its offset
// from ours.
func (s *zkService) probe(ctx context.Context) (time.Time, error) {
	var st *zk.Stat
	t0 := s.clock.Now()
	err := s.retry(ctx, func() error {
		return s.call(ctx, func() (err error) { st, err = s.conn.Set(s.clockPath(), nil, -1); return })
	})
	if err != nil {
		return time.Time{}, err
	}
	t1 := s.clock.Now()
	server := time.UnixMilli(st.Mtime)
	s.mu.Lock()
	s.mu.clockOffset = server.Sub(t0.Add(t1.Sub(t0) / 2))
	s.mu.Unlock()
	return server, nil
}

// serverNow estimates ZooKeeper's clock; used only to schedule checks that then probe.
func (s *zkService) serverNow() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clock.Now().Add(s.mu.clockOffset)
}

// ---- session key and liveness ----

// currentOwner waits until this service has a live session key.
func (s *zkService) currentOwner(ctx context.Context) (string, error) {
	for {
		s.mu.Lock()
		owner, ready := s.mu.owner, s.mu.ownerReady
		s.mu.Unlock()
		select {
		case <-ready:
			return owner, nil
		default:
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return "", fmt.Errorf("no zookeeper session: %w", ctx.Err())
		case <-s.closing:
			return "", ErrClosed
		}
	}
}

// sessionLoop keeps this service's session key: a new one (and its ephemeral liveness node
// sessions/<key>) for every new session, and after the old one was declared lost. It declares
// the key lost when the session expires, or when the connection has been down for half the
// session timeout (the server may expire it soon after; holders must stop trusting their locks).
func (s *zkService) sessionLoop() {
	var downTimer <-chan time.Time
	timeout := s.z.cfg.SessionTimeout
	if timeout <= 0 {
		timeout = DefaultZooKeeperConfig().SessionTimeout
	}
	b := newBackoff()
	for {
		state, changed := s.z.sessionState()
		var retry <-chan time.Time
		switch state {
		case zk.StateHasSession:
			downTimer = nil
			sid := s.conn.SessionID()
			s.mu.Lock()
			need := s.mu.owner == "" || s.mu.ownerSID != sid || s.mu.lostOwners[s.mu.owner]
			old := s.mu.owner
			s.mu.Unlock()
			if need && sid != 0 {
				if err := s.newOwner(sid, old); err != nil {
					s.log.Warn("locks: cannot register session", "error", err)
					retry = s.clock.After(b.NextBackOff())
				} else {
					b.Reset()
				}
			}
		case zk.StateExpired:
			s.declareLost("session expired")
		default:
			if downTimer == nil {
				downTimer = s.clock.After(timeout / 2)
			}
		}
		select {
		case <-changed:
		case <-retry:
		case <-downTimer:
			downTimer = nil
			s.declareLost("disconnected for half the session timeout")
		case <-s.stop:
			return
		}
	}
}

func (s *zkService) newOwner(sid int64, old string) error {
	s.mu.Lock()
	gen := s.mu.ownerGen + 1
	s.mu.Unlock()
	key := fmt.Sprintf("%016x-%s-%d", sid, s.id, gen)
	if old != "" {
		s.declareLost("new session") // no-op when already declared
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if old != "" && strings.HasPrefix(old, fmt.Sprintf("%016x-%s-", sid, s.id)) {
		// Same session, key declared lost: remove its liveness node so that every daemon
		// removes the references it owned, as they would after an expiry.
		err := s.call(ctx, func() error { return s.conn.Delete(s.sessionsPath()+"/"+old, -1) })
		if err != nil && !errors.Is(err, zk.ErrNoNode) {
			return err
		}
	}
	err := s.call(ctx, func() error {
		_, err := s.conn.Create(s.sessionsPath()+"/"+key, nil, zk.FlagEphemeral, s.acl)
		return err
	})
	if err != nil && !errors.Is(err, zk.ErrNodeExists) {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn.SessionID() != sid { // the session changed meanwhile: the next state event redoes this
		return nil
	}
	s.mu.owner, s.mu.ownerSID, s.mu.ownerGen = key, sid, gen
	close(s.mu.ownerReady)
	s.log.Info("locks: session registered", "session", key)
	return nil
}

// declareLost marks the current session key lost: every reference it owns is lost.
func (s *zkService) declareLost(why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	owner := s.mu.owner
	if owner == "" || s.mu.lostOwners[owner] {
		return
	}
	s.log.Warn("locks: session lost; every lock it held is lost", "session", owner, "reason", why)
	s.mu.lostOwners[owner] = true
	s.mu.ownerReady = make(chan struct{})
	for _, r := range s.mu.refs {
		if r.info.Owner == owner {
			s.loseLocked(r)
		}
	}
}

// livenessLoop keeps the set of live session keys (children of sessions/), for waiters to notice
// that their blocker's owner died.
func (s *zkService) livenessLoop() {
	b := newBackoff()
	for {
		children, _, ch, err := s.conn.ChildrenW(s.sessionsPath())
		if err != nil {
			select {
			case <-s.clock.After(b.NextBackOff()):
				continue
			case <-s.stop:
				return
			}
		}
		b.Reset()
		live := make(map[string]bool, len(children))
		for _, c := range children {
			live[c] = true
		}
		s.mu.Lock()
		s.mu.live = live
		close(s.mu.liveChanged)
		s.mu.liveChanged = make(chan struct{})
		s.mu.Unlock()
		select {
		case <-ch:
		case <-s.stop:
			return
		}
	}
}

// ownerDead reports whether a session key is gone for good. A key missing from the last listing
// is confirmed by a read: a node's data is read after its owner's liveness node was created (same
// server, zxid order), so a missing liveness node cannot be one not yet seen.
func (s *zkService) ownerDead(ctx context.Context, owner string) (bool, error) {
	s.mu.Lock()
	live := s.mu.live
	listed := live == nil || live[owner]
	lostHere := s.mu.lostOwners[owner]
	s.mu.Unlock()
	if listed && !lostHere {
		return false, nil
	}
	var ok bool
	err := s.call(ctx, func() (err error) { ok, _, err = s.conn.Exists(s.sessionsPath() + "/" + owner); return })
	return err == nil && !ok, err
}

// ---- references ----

func (s *zkService) enter() error {
	select {
	case <-s.closing:
		return ErrClosed
	default:
		return nil
	}
}

func (s *zkService) namePath(sp space, name string) string { return s.spacePath(sp) + "/" + name }

func (s *zkService) refPaths(ref Ref) (node, parent string, q qnode, err error) {
	if err := ValidateName(ref.Name); err != nil {
		return "", "", qnode{}, err
	}
	q, ok := parseRefID(ref.ID)
	if !ok {
		return "", "", qnode{}, fmt.Errorf("%w: %q", ErrInvalidRef, ref.ID)
	}
	parent = s.namePath(ref.space, ref.Name)
	return parent + "/" + ref.ID, parent, q, nil
}

func (s *zkService) CreateRef(ctx context.Context, name string, opts RefOptions) (Ref, error) {
	return s.createRef(ctx, spaceLocks, name, opts)
}

func (s *zkService) createRef(ctx context.Context, sp space, name string, opts RefOptions) (Ref, error) {
	if err := ValidateName(name); err != nil {
		return Ref{}, fmt.Errorf("create reference: %w", err)
	}
	if err := opts.validate(); err != nil {
		return Ref{}, fmt.Errorf("create reference for %s: %w", name, err)
	}
	if err := s.enter(); err != nil {
		return Ref{}, fmt.Errorf("create reference for %s: %w", name, err)
	}
	owner, err := s.currentOwner(ctx)
	if err != nil {
		return Ref{}, fmt.Errorf("create reference for %s: %w", name, err)
	}
	info := nodeData{Owner: owner, LeaseMS: opts.Lease.Milliseconds(), Label: opts.Owner}
	data := encodeNode(info)
	parent := s.namePath(sp, name)
	guid := newGUID()
	prefix := parent + "/" + nodePrefix(opts.Type, guid)
	created := s.clock.Now()
	var p string
	b := newBackoff()
	for attempt := 0; ; attempt++ {
		err = s.call(ctx, func() (err error) { p, err = s.conn.Create(prefix, data, zk.FlagSequence, s.acl); return })
		if err == nil {
			break
		}
		if attempt >= maxAttempts {
			return Ref{}, fmt.Errorf("create reference for %s: %w", name, err)
		}
		switch {
		case errors.Is(err, zk.ErrNoNode): // first use of the name, or its idle node was collected
			if err := s.ensurePath(ctx, parent); err != nil {
				return Ref{}, fmt.Errorf("create reference for %s: %w", name, err)
			}
			continue
		case errors.Is(err, zk.ErrConnectionClosed): // the create may have happened: look for it
			var children []string
			if s.call(ctx, func() (err error) { children, _, err = s.conn.Children(parent); return }) == nil {
				for _, c := range children {
					if strings.HasPrefix(c, nodePrefix(opts.Type, guid)) {
						p = parent + "/" + c
						break
					}
				}
			}
			if p != "" {
				err = nil
			}
		case !retryable(err):
			return Ref{}, fmt.Errorf("create reference for %s: %w", name, err)
		}
		if p != "" {
			break
		}
		if err := s.pause(ctx, b.NextBackOff()); err != nil {
			return Ref{}, fmt.Errorf("create reference for %s: %w", name, err)
		}
	}
	ref := Ref{Name: name, ID: path.Base(p), space: sp}
	r := s.newRef(ref, p, parent, opts.Type)
	r.data, r.info, r.renewed = data, info, created
	s.mu.Lock()
	lost := s.mu.lostOwners[owner]
	s.mu.refs[p] = r
	if lost { // the session went while we created: the reference is born lost
		s.loseLocked(r)
	}
	s.mu.Unlock()
	if !s.goroutine(func() { s.monitor(r) }) {
		return Ref{}, fmt.Errorf("create reference for %s: %w", name, ErrClosed)
	}
	return ref, nil
}

func (s *zkService) newRef(ref Ref, p, parent string, t LockType) *zkRef {
	return &zkRef{ref: ref, path: p, parent: parent, typ: t,
		infoReady: make(chan struct{}), gone: make(chan struct{}), lost: make(chan struct{}), done: make(chan struct{})}
}

// track returns the service's record of ref, starting to monitor a reference created elsewhere.
func (s *zkService) track(ref Ref, p, parent string, t LockType) (*zkRef, error) {
	s.mu.Lock()
	if r := s.mu.refs[p]; r != nil {
		s.mu.Unlock()
		return r, nil
	}
	if s.mu.tombs.lost(p) {
		s.mu.Unlock()
		return nil, ErrLockLost
	}
	r := s.newRef(ref, p, parent, t)
	s.mu.refs[p] = r
	s.mu.Unlock()
	if !s.goroutine(func() { s.monitor(r) }) {
		return nil, ErrClosed
	}
	return r, nil
}

// monitor learns r's token (czxid) and data, then watches the node until it is removed, released
// here, or the service stops.
func (s *zkService) monitor(r *zkRef) {
	b := newBackoff()
	first := true
	for {
		data, st, ch, err := s.conn.GetW(r.path)
		switch {
		case errors.Is(err, zk.ErrNoNode):
			s.refGone(r)
			return
		case err != nil:
			select {
			case <-s.clock.After(b.NextBackOff()):
				continue
			case <-r.done:
				return
			case <-s.stop:
				return
			}
		}
		b.Reset()
		if first {
			first = false
			info, derr := decodeNode(data)
			s.mu.Lock()
			r.czxid = st.Czxid
			if r.data == nil {
				r.data, r.info = data, info
				if derr != nil {
					s.log.Warn("locks: foreign reference data", "ref", r.ref, "error", derr)
				}
				if s.mu.lostOwners[info.Owner] {
					s.loseLocked(r)
				}
			}
			select {
			case <-r.infoReady: // refGone closed it (the reference was removed here meanwhile)
			default:
				close(r.infoReady)
			}
			s.mu.Unlock()
		}
		select {
		case ev := <-ch:
			if ev.Type == zk.EventNodeDeleted {
				s.refGone(r)
				return
			}
		case <-r.done:
			return
		case <-s.stop:
			return
		}
	}
}

// refGone records that r's node no longer exists. A granted reference that was not being released
// here is lost.
func (s *zkService) refGone(r *zkRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-r.gone:
		return
	default:
	}
	close(r.gone)
	select {
	case <-r.infoReady:
	default:
		close(r.infoReady)
	}
	if r.grant != nil && !r.releasing {
		s.loseLocked(r)
	}
	if s.mu.refs[r.path] == r && !r.releasing {
		delete(s.mu.refs, r.path)
	}
}

func (s *zkService) loseLocked(r *zkRef) {
	if r.isLost {
		return
	}
	r.isLost = true
	close(r.lost)
	s.mu.tombs.add(r.path)
}

// forgetLocked drops r after its release here.
func (s *zkService) forgetLocked(r *zkRef) {
	select {
	case <-r.done:
	default:
		close(r.done)
	}
	if s.mu.refs[r.path] == r {
		delete(s.mu.refs, r.path)
	}
}

// notQueued is the error for a reference missing from its queue.
func (s *zkService) notQueued(r *zkRef) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return ErrClosed // Close removed the reference
	}
	if r.grant != nil && !r.isLost {
		s.loseLocked(r)
	}
	if r.isLost {
		return ErrLockLost
	}
	if s.mu.refs[r.path] == r {
		delete(s.mu.refs, r.path)
	}
	return ErrNotHeld
}

func (s *zkService) Acquire(ctx context.Context, ref Ref) (*Grant, error) {
	return s.acquire(ctx, ref, true)
}

func (s *zkService) TryAcquire(ctx context.Context, ref Ref) (*Grant, error) {
	return s.acquire(ctx, ref, false)
}

func (s *zkService) acquire(ctx context.Context, ref Ref, block bool) (*Grant, error) {
	g, err := s.acquire1(ctx, ref, block)
	if err != nil {
		return nil, fmt.Errorf("acquire %s: %w", ref, err)
	}
	return g, nil
}

func (s *zkService) acquire1(ctx context.Context, ref Ref, block bool) (*Grant, error) {
	p, parent, q, err := s.refPaths(ref)
	if err != nil {
		return nil, err
	}
	if err := s.enter(); err != nil {
		return nil, err
	}
	r, err := s.track(ref, p, parent, q.typ)
	if err != nil {
		return nil, err
	}
	b := newBackoff()
	for {
		s.mu.Lock()
		g, isLost := r.grant, r.isLost
		s.mu.Unlock()
		if isLost {
			return nil, ErrLockLost
		}
		if g != nil {
			return g, nil
		}
		var children []string
		var pst *zk.Stat
		err := s.call(ctx, func() (err error) { children, pst, err = s.conn.Children(parent); return })
		switch {
		case errors.Is(err, zk.ErrNoNode):
			return nil, s.notQueued(r)
		case retryable(err):
			if err := s.pause(ctx, b.NextBackOff()); err != nil {
				return nil, err
			}
			continue
		case err != nil:
			return nil, err
		}
		b.Reset()
		blk, found := blocker(parseQueue(children), ref.ID)
		if !found {
			return nil, s.notQueued(r)
		}
		if blk == "" {
			return s.grant(ctx, r, pst)
		}
		if !block {
			return nil, ErrWouldBlock
		}
		if err := s.waitBlocker(ctx, r, parent+"/"+blk, blk); err != nil {
			return nil, err
		}
	}
}

// grant makes r's grant: it holds (first in line at the listing that came with pst).
func (s *zkService) grant(ctx context.Context, r *zkRef, pst *zk.Stat) (*Grant, error) {
	select {
	case <-r.infoReady:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.closing:
		return nil, ErrClosed
	}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil, ErrClosed // Close may have removed the holder ahead: no grant through a closed service
	}
	if r.isLost {
		s.mu.Unlock()
		return nil, ErrLockLost
	}
	select {
	case <-r.gone:
		s.mu.Unlock()
		return nil, s.notQueued(r)
	default:
	}
	if r.grant == nil {
		r.grant = &Grant{Ref: r.ref, Type: r.typ, Token: uint64(r.czxid),
			PreviousUnclean: pst.DataLength == int32(len(markUnreleased)), lost: r.lost}
	}
	g, lease, renewed := r.grant, r.info.lease(), r.renewed
	s.mu.Unlock()
	if lease > 0 && s.clock.Now().Sub(renewed) > lease/4 {
		if err := s.renew(ctx, r); err != nil {
			return nil, err
		}
	}
	return g, nil
}

// waitBlocker waits until the reference blk (at bpath) that keeps r from holding changes or goes,
// removing it when its lease ran out or its owner's session is gone. It renews r's own lease
// meanwhile. nil means: look again.
func (s *zkService) waitBlocker(ctx context.Context, r *zkRef, bpath, blk string) error {
	var data []byte
	var st *zk.Stat
	var ch <-chan zk.Event
	err := s.call(ctx, func() (err error) { data, st, ch, err = s.conn.GetW(bpath); return })
	switch {
	case errors.Is(err, zk.ErrNoNode):
		return nil
	case retryable(err):
		return s.pause(ctx, 50*time.Millisecond)
	case err != nil:
		return err
	}
	info, err := decodeNode(data)
	if err != nil {
		return err
	}
	s.mu.Lock()
	liveChanged := s.mu.liveChanged
	s.mu.Unlock()
	if dead, err := s.ownerDead(ctx, info.Owner); err != nil {
		return s.quiet(ctx, err)
	} else if dead {
		err := s.removeUnclean(ctx, r.parent, blk, -1)
		if err != nil && !errors.Is(err, ErrNotHeld) {
			return s.quiet(ctx, err)
		}
		return nil
	}
	var expiry <-chan time.Time
	if info.LeaseMS > 0 {
		left := time.UnixMilli(st.Mtime + info.LeaseMS).Sub(s.serverNow())
		expiry = s.clock.After(max(left, 0) + 2*time.Millisecond)
	}
	for {
		var renew <-chan time.Time
		s.mu.Lock()
		if lease := r.info.lease(); lease > 0 {
			renew = s.clock.After(max(r.renewed.Add(lease/2).Sub(s.clock.Now()), 0))
		}
		s.mu.Unlock()
		select {
		case <-ch:
			return nil
		case <-liveChanged:
			return nil
		case <-expiry:
			if _, err := s.expireIfDue(ctx, r.parent, blk); err != nil {
				return s.quiet(ctx, err)
			}
			return nil
		case <-renew:
			if err := s.renew(ctx, r); err != nil {
				return s.quiet(ctx, err)
			}
		case <-r.gone:
			return nil
		case <-r.lost:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-s.closing:
			return ErrClosed
		}
	}
}

// quiet turns a transient error of a waiter's housekeeping into "look again" after a pause.
func (s *zkService) quiet(ctx context.Context, err error) error {
	if retryable(err) || errors.Is(err, zk.ErrNoNode) || errors.Is(err, zk.ErrBadVersion) {
		return s.pause(ctx, 50*time.Millisecond)
	}
	if errors.Is(err, ErrNotHeld) || errors.Is(err, ErrLockLost) {
		return nil // the acquire loop reports it from the listing
	}
	return err
}

func (s *zkService) Renew(ctx context.Context, ref Ref) error {
	p, parent, q, err := s.refPaths(ref)
	if err == nil {
		err = s.enter()
	}
	if err != nil {
		return fmt.Errorf("renew %s: %w", ref, err)
	}
	s.mu.Lock()
	r := s.mu.refs[p]
	lost := s.mu.tombs.lost(p)
	s.mu.Unlock()
	if r == nil {
		if lost {
			return fmt.Errorf("renew %s: %w", ref, ErrLockLost)
		}
		r = s.newRef(ref, p, parent, q.typ) // not tracked: renew by reading its data
	}
	if err := s.renew(ctx, r); err != nil {
		return fmt.Errorf("renew %s: %w", ref, err)
	}
	return nil
}

// renew rewrites r's node with its own data: ZooKeeper's mtime, from which the lease runs, moves.
func (s *zkService) renew(ctx context.Context, r *zkRef) error {
	s.mu.Lock()
	data, isLost := r.data, r.isLost
	s.mu.Unlock()
	if isLost {
		return ErrLockLost
	}
	version := int32(-1)
	if data == nil {
		var st *zk.Stat
		err := s.retry(ctx, func() error {
			return s.call(ctx, func() (err error) { data, st, err = s.conn.Get(r.path); return })
		})
		if errors.Is(err, zk.ErrNoNode) {
			return s.notQueued(r)
		}
		if err != nil {
			return err
		}
		version = st.Version
	}
	t := s.clock.Now()
	err := s.retry(ctx, func() error {
		return s.call(ctx, func() error { _, err := s.conn.Set(r.path, data, version); return err })
	})
	switch {
	case errors.Is(err, zk.ErrNoNode):
		return s.notQueued(r)
	case errors.Is(err, zk.ErrBadVersion): // renewed by someone else meanwhile: still renewed
	case err != nil:
		return err
	}
	s.mu.Lock()
	r.renewed = t
	s.mu.Unlock()
	return nil
}

func (s *zkService) Release(ctx context.Context, ref Ref) error { return s.release(ctx, ref) }

func (s *zkService) release(ctx context.Context, ref Ref) error {
	if err := s.release1(ctx, ref); err != nil {
		return fmt.Errorf("release %s: %w", ref, err)
	}
	return nil
}

// endOps are the operations that end a holder: a write holder also records how it ended.
func (s *zkService) endOps(parent, p string, t LockType, mark string, version int32) []any {
	del := &zk.DeleteRequest{Path: p, Version: version}
	if t == Read {
		return []any{del}
	}
	return []any{&zk.SetDataRequest{Path: parent, Data: []byte(mark), Version: -1}, del}
}

func (s *zkService) release1(ctx context.Context, ref Ref) error {
	p, parent, q, err := s.refPaths(ref)
	if err != nil {
		return err
	}
	if err := s.enter(); err != nil {
		return err
	}
	s.mu.Lock()
	r := s.mu.refs[p]
	if r == nil && s.mu.tombs.lost(p) {
		s.mu.Unlock()
		return ErrLockLost
	}
	if r != nil {
		if r.isLost {
			s.mu.Unlock()
			return ErrLockLost
		}
		r.releasing = true
	}
	known := r != nil && r.grant != nil
	s.mu.Unlock()
	if r == nil {
		r = s.newRef(ref, p, parent, q.typ)
	}
	err = s.remove(ctx, r.parent, ref.ID, q.typ, markReleased, -1, known)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		// r.releasing stays set: the watch on r's node may report its deletion after this
		// returns, and that deletion is this release, not a loss.
		s.forgetLocked(r)
		return nil
	}
	r.releasing = false
	switch {
	case errors.Is(err, ErrNotHeld):
		if r.grant != nil {
			s.loseLocked(r)
			return ErrLockLost
		}
		if s.mu.refs[r.path] == r {
			delete(s.mu.refs, r.path)
		}
		return ErrNotHeld
	}
	return err
}

// remove deletes the reference id of parent. A holder's end is recorded with mark (write locks);
// a waiter is removed on the condition that its blocker still exists, since without it it would
// hold and its end would have to be recorded. holds says the caller knows id holds. version -1
// deletes whatever the node's version. ErrNotHeld when the node is not there.
func (s *zkService) remove(ctx context.Context, parent, id string, t LockType, mark string, version int32, holds bool) error {
	p := parent + "/" + id
	b := newBackoff()
	for range maxAttempts {
		blk := ""
		if !holds {
			var children []string
			err := s.call(ctx, func() (err error) { children, _, err = s.conn.Children(parent); return })
			if errors.Is(err, zk.ErrNoNode) {
				return ErrNotHeld
			}
			if err != nil {
				if !retryable(err) {
					return err
				}
				if err := s.pause(ctx, b.NextBackOff()); err != nil {
					return err
				}
				continue
			}
			var found bool
			if blk, found = blocker(parseQueue(children), id); !found {
				return ErrNotHeld
			}
		}
		var ops []any
		if blk == "" {
			ops = s.endOps(parent, p, t, mark, version)
		} else {
			ops = []any{&zk.CheckVersionRequest{Path: parent + "/" + blk, Version: -1},
				&zk.DeleteRequest{Path: p, Version: version}}
		}
		err := s.call(ctx, func() error { _, err := s.conn.Multi(ops...); return err })
		switch {
		case err == nil:
			// A reference this process tracks is gone now, not when the watch event arrives:
			// a holder forced out here must not be granted again by TryAcquire in between.
			s.mu.Lock()
			r := s.mu.refs[p]
			s.mu.Unlock()
			if r != nil {
				s.refGone(r)
			}
			return nil
		case blk != "" && errors.Is(err, zk.ErrNoNode):
			continue // the blocker went (it may hold now), or the node did: look again
		case errors.Is(err, zk.ErrNoNode):
			// The reference is gone (a name node is never removed while it has children, so the
			// SetData of the marker cannot be what failed).
			return ErrNotHeld
		case retryable(err):
			// The multi may have happened: look again (a missing node then reads as ErrNotHeld;
			// for a connection loss after a successful delete that is the answer we give).
			if err := s.pause(ctx, b.NextBackOff()); err != nil {
				return err
			}
			if ok, _ := s.exists(ctx, p); !ok {
				return nil
			}
			continue
		default:
			return err
		}
	}
	return fmt.Errorf("%s: gave up after %d attempts", p, maxAttempts)
}

func (s *zkService) exists(ctx context.Context, p string) (bool, error) {
	var ok bool
	err := s.call(ctx, func() (err error) { ok, _, err = s.conn.Exists(p); return })
	return ok, err
}

// removeUnclean removes a reference that did not release: if it held a write lock, the next
// grant reports PreviousUnclean.
func (s *zkService) removeUnclean(ctx context.Context, parent, id string, version int32) error {
	q, ok := parseRefID(id)
	if !ok {
		return fmt.Errorf("%w: %q", ErrInvalidRef, id)
	}
	return s.remove(ctx, parent, id, q.typ, markUnreleased, version, false)
}

// expireIfDue removes the reference id when its lease has run out by ZooKeeper's clock.
func (s *zkService) expireIfDue(ctx context.Context, parent, id string) (bool, error) {
	now, err := s.probe(ctx)
	if err != nil {
		return false, err
	}
	var data []byte
	var st *zk.Stat
	err = s.call(ctx, func() (err error) { data, st, err = s.conn.Get(parent + "/" + id); return })
	if errors.Is(err, zk.ErrNoNode) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	info, err := decodeNode(data)
	if err != nil || !expired(info, st.Mtime, now) {
		return false, err
	}
	err = s.removeUnclean(ctx, parent, id, st.Version)
	switch {
	case err == nil, errors.Is(err, ErrNotHeld):
		s.log.Info("locks: lease expired; reference removed", "lock", parent, "ref", id)
		return true, nil
	case errors.Is(err, zk.ErrBadVersion): // renewed meanwhile
		return false, nil
	}
	return false, err
}

func (s *zkService) ForceRelease(ctx context.Context, name, id string) error {
	ref := Ref{Name: name, ID: id}
	_, parent, _, err := s.refPaths(ref)
	if err == nil {
		err = s.enter()
	}
	if err == nil {
		err = s.removeUnclean(ctx, parent, id, -1)
	}
	if err != nil {
		return fmt.Errorf("force release %s: %w", ref, err)
	}
	s.log.Info("locks: reference forcibly released", "lock", name, "ref", id)
	return nil
}

func (s *zkService) ReleaseExpired(ctx context.Context, name string) (int, error) {
	if err := ValidateName(name); err != nil {
		return 0, fmt.Errorf("release expired: %w", err)
	}
	if err := s.enter(); err != nil {
		return 0, fmt.Errorf("release expired %s: %w", name, err)
	}
	n, err := s.reapName(ctx, s.namePath(spaceLocks, name), true)
	if err != nil {
		return n, fmt.Errorf("release expired %s: %w", name, err)
	}
	return n, nil
}

// reapName removes the references of one name whose lease ran out, and, with dead, those whose
// owner's session is gone.
func (s *zkService) reapName(ctx context.Context, parent string, dead bool) (int, error) {
	now, err := s.probe(ctx)
	if err != nil {
		return 0, err
	}
	var children []string
	err = s.call(ctx, func() (err error) { children, _, err = s.conn.Children(parent); return })
	if errors.Is(err, zk.ErrNoNode) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, q := range parseQueue(children) {
		var data []byte
		var st *zk.Stat
		err := s.call(ctx, func() (err error) { data, st, err = s.conn.Get(parent + "/" + q.id); return })
		if errors.Is(err, zk.ErrNoNode) {
			continue
		}
		if err != nil {
			return n, err
		}
		info, err := decodeNode(data)
		if err != nil {
			continue // not ours to judge
		}
		version := st.Version
		gone := expired(info, st.Mtime, now)
		if !gone && dead {
			isDead, err := s.ownerDead(ctx, info.Owner)
			if err != nil {
				return n, err
			}
			gone, version = isDead, -1
		}
		if !gone {
			continue
		}
		switch err := s.removeUnclean(ctx, parent, q.id, version); {
		case err == nil:
			n++
			s.log.Info("locks: stale reference removed", "lock", parent, "ref", q.id, "owner", info.Owner)
		case errors.Is(err, ErrNotHeld), errors.Is(err, zk.ErrBadVersion):
		default:
			return n, err
		}
	}
	return n, nil
}

// reaper removes, every ReapInterval, the references whose lease ran out or whose owner is gone,
// in every lock and election, and the name nodes idle since the previous scan whose last write
// holder released cleanly (an unclean marker is kept: the next holder must see it).
func (s *zkService) reaper() {
	for {
		select {
		case <-s.clock.After(s.cfg.ReapInterval):
		case <-s.stop:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(s.cfg.ReapInterval, 5*time.Second))
		if err := s.reapAll(ctx); err != nil && !errors.Is(err, ErrClosed) {
			s.log.Debug("locks: reaper pass failed", "error", err)
		}
		cancel()
	}
}

func (s *zkService) reapAll(ctx context.Context) error {
	seen := map[string]int64{}
	defer func() {
		s.mu.Lock()
		s.mu.gcSeen = seen
		s.mu.Unlock()
	}()
	for _, sp := range []space{spaceLocks, spaceElections} {
		var names []string
		err := s.call(ctx, func() (err error) { names, _, err = s.conn.Children(s.spacePath(sp)); return })
		if err != nil {
			return err
		}
		for _, name := range names {
			parent := s.namePath(sp, name)
			if _, err := s.reapName(ctx, parent, true); err != nil {
				return err
			}
			var children []string
			var st *zk.Stat
			err := s.call(ctx, func() (err error) { children, st, err = s.conn.Children(parent); return })
			if err != nil || len(children) > 0 || st.DataLength == int32(len(markUnreleased)) {
				continue
			}
			s.mu.Lock()
			prev, ok := s.mu.gcSeen[parent]
			s.mu.Unlock()
			if ok && prev == st.Pzxid {
				_ = s.call(ctx, func() error { return s.conn.Delete(parent, st.Version) })
			} else {
				seen[parent] = st.Pzxid
			}
		}
	}
	return nil
}

// ---- holders and watches ----

func (s *zkService) Holders(ctx context.Context, name string) ([]Holder, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("holders: %w", err)
	}
	if err := s.enter(); err != nil {
		return nil, fmt.Errorf("holders %s: %w", name, err)
	}
	parent := s.namePath(spaceLocks, name)
	err := s.retry(ctx, func() error {
		return s.call(ctx, func() error { _, err := s.conn.Sync(parent); return err })
	})
	if err != nil && !errors.Is(err, zk.ErrNoNode) {
		return nil, fmt.Errorf("holders %s: %w", name, err)
	}
	hs, err := s.holders(ctx, spaceLocks, name, nil)
	if err != nil {
		return nil, fmt.Errorf("holders %s: %w", name, err)
	}
	return hs, nil
}

// holders reads the holders of a name (from children when given).
func (s *zkService) holders(ctx context.Context, sp space, name string, children []string) ([]Holder, error) {
	parent := s.namePath(sp, name)
	for range maxAttempts {
		if children == nil {
			err := s.retry(ctx, func() error {
				return s.call(ctx, func() (err error) { children, _, err = s.conn.Children(parent); return })
			})
			if errors.Is(err, zk.ErrNoNode) {
				return nil, nil
			}
			if err != nil {
				return nil, err
			}
		}
		var out []Holder
		again := false
		for _, q := range holdersOf(parseQueue(children)) {
			var data []byte
			var st *zk.Stat
			err := s.retry(ctx, func() error {
				return s.call(ctx, func() (err error) { data, st, err = s.conn.Get(parent + "/" + q.id); return })
			})
			if errors.Is(err, zk.ErrNoNode) {
				again = true
				break
			}
			if err != nil {
				return nil, err
			}
			info, _ := decodeNode(data)
			out = append(out, Holder{Ref: Ref{Name: name, ID: q.id, space: sp}, Type: q.typ,
				Token: uint64(st.Czxid), Owner: info.Label, Lease: info.lease()})
		}
		if !again {
			return out, nil
		}
		children = nil
	}
	return nil, errors.New("holders changed too often to be read")
}

func (s *zkService) Watch(ctx context.Context, name string) (<-chan []Holder, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	ch, err := s.watch(ctx, spaceLocks, name)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", name, err)
	}
	return ch, nil
}

func (s *zkService) watch(ctx context.Context, sp space, name string) (<-chan []Holder, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	out := make(chan []Holder, 1)
	parent := s.namePath(sp, name)
	wctx, cancel := context.WithCancel(ctx)
	ok := s.goroutine(func() {
		defer close(out)
		defer cancel()
		var last []Holder
		first := true
		b := newBackoff()
		for wctx.Err() == nil {
			var children []string
			var ch <-chan zk.Event
			err := s.call(wctx, func() (err error) { children, _, ch, err = s.conn.ChildrenW(parent); return })
			if errors.Is(err, zk.ErrNoNode) {
				var ok bool
				err = s.call(wctx, func() (err error) { ok, _, ch, err = s.conn.ExistsW(parent); return })
				if err == nil && ok {
					continue // created meanwhile
				}
				children = []string{}
			}
			if err != nil {
				if s.pause(wctx, b.NextBackOff()) != nil {
					return
				}
				continue
			}
			hs, err := s.holders(wctx, sp, name, children)
			if err != nil {
				if s.pause(wctx, b.NextBackOff()) != nil {
					return
				}
				continue
			}
			b.Reset()
			if first || !sameHolders(hs, last) {
				first, last = false, hs
				sendLatest(out, hs)
			}
			select {
			case <-ch:
			case <-wctx.Done():
				return
			case <-s.closing:
				return
			}
		}
	})
	if !ok {
		cancel()
		return nil, ErrClosed
	}
	return out, nil
}

func sameHolders(a, b []Holder) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Ref.ID != b[i].Ref.ID {
			return false
		}
	}
	return true
}

// ---- elections ----

func (s *zkService) Campaign(ctx context.Context, election, candidate string) (*Leadership, error) {
	return campaign(ctx, s, election, candidate)
}

func (s *zkService) Observe(ctx context.Context, election string) (<-chan Leader, error) {
	return observe(ctx, s, election)
}

// ---- close ----

// Close refuses new operations, wakes every waiter with ErrClosed, removes the liveness node of
// its session key (so that other daemons remove its references at once) and the references it
// created (bounded to a few seconds), then stops its goroutines and waits for them.
func (s *zkService) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	close(s.closing)
	owner := s.mu.owner
	lostOwner := s.mu.lostOwners[owner]
	var mine []*zkRef
	for _, r := range s.mu.refs {
		if r.info.Owner == owner && !r.isLost {
			mine = append(mine, r)
		}
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if owner != "" && !lostOwner {
		for _, r := range mine {
			_ = s.removeUnclean(ctx, r.parent, r.ref.ID, -1)
		}
		_ = s.call(ctx, func() error { return s.conn.Delete(s.sessionsPath()+"/"+owner, -1) })
	}
	s.mu.Lock()
	for _, r := range s.mu.refs {
		s.loseLocked(r) // nothing held through a closed service
	}
	s.mu.stopped = true
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()
	s.calls.Wait()
	return nil
}

// tombstones remembers the last paths of references lost here, so that a late Release or Renew
// says ErrLockLost rather than ErrNotHeld. Bounded: the oldest are forgotten.
type tombstones struct {
	set  map[string]bool
	ring []string
	next int
}

const maxTombstones = 4096

func (t *tombstones) add(p string) {
	if t.set == nil {
		t.set = make(map[string]bool)
	}
	if t.set[p] {
		return
	}
	if len(t.ring) < maxTombstones {
		t.ring = append(t.ring, p)
	} else {
		delete(t.set, t.ring[t.next])
		t.ring[t.next] = p
		t.next = (t.next + 1) % maxTombstones
	}
	t.set[p] = true
}

func (t *tombstones) lost(p string) bool { return t.set[p] }
