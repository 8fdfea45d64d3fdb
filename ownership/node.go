package ownership

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/policies"
)

// Names in the lock service and the journal.
const (
	ControllerElection = "ownership.controller"
	MapStream          = "ownership/map"
	PolicyStream       = "ownership/policy"
	policyLock         = "ownership.policy"
	transferTx         = "ownership.transfer"
)

// ErrInvalid: a change of the policy that would make it invalid, or bad input. Nothing changed.
var ErrInvalid = errors.New("invalid ownership change")

// SiteLock is the lock whose read references say which instances of site are alive.
func SiteLock(site string) string { return "site." + site }

// PartitionElection is the election whose leader owns partition.
func PartitionElection(partition string) string { return "partition." + escape(partition) }

// PartitionStream is the journal stream of partition: every transfer is recorded there, under
// the new owner's epoch, which fences the previous owner's appends.
func PartitionStream(partition string) string { return "prom/" + escape(partition) }

// escape keeps partition ids usable as lock names and stream ids: letters, digits, '.', '_' and
// '-' stay, every other byte is written =XX; ids that would grow past 150 bytes are hashed.
func escape(id string) string {
	out := make([]byte, 0, len(id))
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
			out = append(out, c)
		default:
			out = append(out, fmt.Sprintf("=%02X", c)...)
		}
	}
	if len(out) > 150 {
		sum := sha256.Sum256([]byte(id))
		return "h=" + hex.EncodeToString(sum[:20])
	}
	return string(out)
}

// Config configures a Node.
type Config struct {
	// Site is this instance's site; it must be one of Policy.Sites.
	Site string
	// Instance names this process among every instance (unique, stable for its life).
	Instance string
	// Address is where this instance's REST API is reached; a non-owner's 409 names it.
	Address string
	// Policy is the ownership policy from the configuration (its moves and drains apply until
	// the REST API changes them).
	Policy policies.Ownership
	// Poll is how often the map and the policy are read again without a wake-up. Default 1s.
	Poll time.Duration
	// Lease is how long one confirmation that this instance's ZooKeeper session is alive (its
	// presence reference read back from ZooKeeper, every Lease/4) lets it serve. An instance
	// that cannot confirm - cut off, or frozen and resumed - stops accepting writes when the
	// lease runs out, before its session can have expired if Lease is at most half the session
	// timeout. Default 5s.
	Lease time.Duration
}

// Deps are what a Node uses.
type Deps struct {
	Locks   locks.Service
	Journal journal.Store
	Logger  *slog.Logger
	// Registerer receives the metrics (nil: none).
	Registerer prometheus.Registerer
	// CatchUp brings this instance up to date for partition before it serves it: called once
	// the partition's election is won (epoch) and its stream fenced. unclean: the previous owner
	// did not hand over. An error means the instance does not serve; it resigns and tries again.
	// Nil: nothing to catch up.
	CatchUp func(ctx context.Context, partition string, epoch uint64, unclean bool) error
	// Drain is called when the map moves partition away, after this instance stopped accepting
	// it and before it resigns: it flushes what was accepted. Nil: nothing to flush.
	Drain func(ctx context.Context, partition string) error
	// OnEvent is told every change this Node makes (the map, when it is the controller; its own
	// ownership transitions). It must not block. Nil: none.
	OnEvent func(Event)
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Event kinds.
const (
	EventMap      = "map"      // the controller appended a new desired map
	EventServing  = "serving"  // this instance owns the partition and accepts writes
	EventDraining = "draining" // it stopped accepting (planned move) and flushes
	EventReleased = "released" // it resigned after draining
	EventLost     = "lost"     // its leadership was lost (ZooKeeper session gone): it stopped at once
	EventCatching = "catchup"  // it won the election and catches up before serving
	EventFailed   = "failed"   // the transfer failed (fence, catch-up): it resigned and retries
	stateNone     = ""         // not held
	stateCatching = "catchup"  // won, catching up: refuses writes
	stateServing  = "serving"  // accepting writes
	stateDraining = "draining" // planned move: refuses writes, flushing
	// stateUnconfirmed: serving, but the session has not been confirmed within the lease (cut
	// off, or frozen and resumed): refuses writes until it is, or until the loss is known.
	stateUnconfirmed = "unconfirmed"
	drainTimeout     = 30 * time.Second
	resignTimeout    = 5 * time.Second
)

// Event is one ownership change, as published on NATS.
type Event struct {
	Kind      string            `json:"kind"`
	Partition string            `json:"partition,omitempty"`
	Site      string            `json:"site"`
	Instance  string            `json:"instance,omitempty"`
	Address   string            `json:"address,omitempty"`
	Epoch     uint64            `json:"epoch,omitempty"`
	Unclean   bool              `json:"previous_unclean,omitempty"`
	Version   uint64            `json:"version,omitempty"`
	Owners    map[string]string `json:"owners,omitempty"`
	Error     string            `json:"error,omitempty"`
	At        time.Time         `json:"at"`
}

// Map is a desired ownership map: the owner site of every partition that has one, computed by
// the controller from the policy and the live sites.
type Map struct {
	// Version is the map's seq in MapStream (0: no map yet).
	Version uint64 `json:"version"`
	// ControllerEpoch is the epoch of the controller that wrote it.
	ControllerEpoch uint64            `json:"controller_epoch"`
	Live            []string          `json:"live"`
	Owners          map[string]string `json:"owners"`
	Moves           map[string]string `json:"moves,omitempty"`
	Drained         []string          `json:"drained,omitempty"`
	At              time.Time         `json:"at"`
}

// Overrides are the manual moves and drains in force.
type Overrides struct {
	Moves   map[string]string `json:"moves"`
	Drained []string          `json:"drained"`
}

// Owner is the instance that holds a partition's election.
type Owner struct {
	Site     string `json:"site"`
	Instance string `json:"instance"`
	Address  string `json:"address,omitempty"`
	Epoch    uint64 `json:"epoch"`
}

// Node is one musicd's part in ownership. Its methods are safe for concurrent use.
type Node struct {
	cfg   Config
	deps  Deps
	log   *slog.Logger
	now   func() time.Time
	ids   []string        // every partition, in policy order
	known map[string]bool // the same, as a set
	// tables: "database.table" of every partitioned table.
	tables map[string]bool
	cand   string // this instance as an election candidate (JSON of Owner without epoch)
	// wakeFollow and wakeControl are Wake's signals to the follower and the controller.
	wakeFollow, wakeControl chan struct{}
	metrics                 *metrics

	mu struct {
		sync.Mutex
		m       Map
		leaders map[string]Owner
		held    map[string]*held
		present bool
		// confirmed: when the last read that found this instance's presence reference in
		// ZooKeeper was sent (zero: none since the reference was taken).
		confirmed time.Time
	}
}

// held is a partition this instance campaigns for or holds.
type held struct {
	cancel context.CancelFunc
	state  string
	epoch  uint64
	// inflight counts the writes admitted (Admit) and not yet done; idle, when set, is closed
	// when it drops to zero (a drain waits on it).
	inflight int
	idle     chan struct{}
}

// New checks the configuration and returns a Node; Run starts it.
func New(cfg Config, deps Deps) (*Node, error) {
	cfg.Policy = cfg.Policy.WithDefaults()
	if err := cfg.Policy.Validate(); err != nil {
		return nil, fmt.Errorf("ownership: %w", err)
	}
	if !slices.Contains(cfg.Policy.Sites, cfg.Site) {
		return nil, fmt.Errorf("ownership.sites: this site %q is not listed", cfg.Site)
	}
	if cfg.Instance == "" {
		return nil, errors.New("ownership: no instance name")
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 5 * time.Second
	}
	if deps.Locks == nil || deps.Journal == nil {
		return nil, errors.New("ownership: a lock service and a journal are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	cand, _ := json.Marshal(Owner{Site: cfg.Site, Instance: cfg.Instance, Address: cfg.Address})
	if len(cand) > 256 {
		return nil, errors.New("ownership: site, instance and address take more than 256 bytes")
	}
	n := &Node{cfg: cfg, deps: deps, log: deps.Logger.With("component", "ownership"), now: deps.Now,
		ids: cfg.Policy.PartitionIDs(), known: map[string]bool{}, cand: string(cand),
		wakeFollow: make(chan struct{}, 1), wakeControl: make(chan struct{}, 1)}
	for _, id := range n.ids {
		n.known[id] = true
	}
	n.tables = map[string]bool{}
	for _, p := range cfg.Policy.Partitions {
		for _, t := range p.Tables {
			n.tables[t] = true
		}
	}
	n.mu.leaders = map[string]Owner{}
	n.mu.held = map[string]*held{}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, err
	}
	n.metrics = m
	return n, nil
}

// Wake makes the Node read the map and the policy again now (the daemon calls it on an ownership
// announcement from NATS).
func (n *Node) Wake() {
	for _, ch := range []chan struct{}{n.wakeFollow, n.wakeControl} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Run keeps this instance present, campaigns for the controller, follows the map and observes
// every partition's owner until ctx ends; then it stops serving, resigns and returns nil.
func (n *Node) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	gos := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	gos(n.presence)
	gos(func(ctx context.Context) {
		_ = locks.RunElected(ctx, n.deps.Locks, ControllerElection, n.cfg.Instance, n.log, n.control)
	})
	gos(n.observe)
	gos(n.follow)
	wg.Wait()
	return nil
}

// ---- presence ----

// presence holds a read reference on the site's lock for as long as ctx lasts, taking a new one
// when the session that held it is lost.
func (n *Node) presence(ctx context.Context) {
	b := newBackoff()
	for ctx.Err() == nil {
		err := n.present(ctx)
		n.setPresent(false)
		if ctx.Err() != nil {
			return
		}
		n.log.Warn("ownership: presence lost; registering again", "site", n.cfg.Site, "err", err)
		if !sleep(ctx, b.NextBackOff()) {
			return
		}
	}
}

func (n *Node) present(ctx context.Context) error {
	ref, err := n.deps.Locks.CreateRef(ctx, SiteLock(n.cfg.Site), locks.RefOptions{Type: locks.Read, Owner: n.cand})
	if err != nil {
		return err
	}
	g, err := n.deps.Locks.Acquire(ctx, ref)
	if err != nil {
		n.release(ref)
		return err
	}
	n.setPresent(true)
	every := n.cfg.Lease / 4
	for {
		sent := n.now()
		cctx, cancel := context.WithTimeout(ctx, every)
		hs, err := n.deps.Locks.Holders(cctx, SiteLock(n.cfg.Site))
		cancel()
		if err == nil {
			if !slices.ContainsFunc(hs, func(h locks.Holder) bool { return h.Ref.ID == ref.ID }) {
				return errors.New("the site reference is gone from ZooKeeper")
			}
			n.mu.Lock()
			n.mu.confirmed = sent
			n.mu.Unlock()
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			n.release(ref)
			return nil
		case <-g.Lost():
			t.Stop()
			return errors.New("the site reference was lost with its session")
		case <-t.C:
		}
	}
}

// confirmedLocked reports whether this instance's session was confirmed within the lease.
func (n *Node) confirmedLocked() bool {
	return n.mu.present && n.now().Sub(n.mu.confirmed) < n.cfg.Lease
}

func (n *Node) release(ref locks.Ref) {
	ctx, cancel := context.WithTimeout(context.Background(), resignTimeout)
	defer cancel()
	_ = n.deps.Locks.Release(ctx, ref)
}

func (n *Node) setPresent(p bool) {
	n.mu.Lock()
	n.mu.present = p
	n.mu.confirmed = time.Time{}
	n.mu.Unlock()
}

// ---- the controller ----

// siteUpdate says whether a site has an instance present.
type siteUpdate struct {
	site    string
	present bool
}

// control is the controller's run while it leads at epoch: it computes the desired map from the
// live sites and the policy and appends every change of it.
func (n *Node) control(ctx context.Context, epoch uint64) error {
	// Fencing the map stream first: a deposed controller's appends fail from now on.
	head, err := n.deps.Journal.Fence(ctx, MapStream, epoch)
	if err != nil {
		return fmt.Errorf("fence %s: %w", MapStream, err)
	}
	cur, err := n.readMap(ctx, head.Seq)
	if err != nil {
		return err
	}
	updates := make(chan siteUpdate, len(n.cfg.Policy.Sites))
	var wg sync.WaitGroup
	defer wg.Wait()
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	for _, s := range n.cfg.Policy.Sites {
		ch, err := n.deps.Locks.Watch(wctx, SiteLock(s))
		if err != nil {
			return fmt.Errorf("watch site %s: %w", s, err)
		}
		wg.Add(1)
		go func() { // ends when ch closes (wctx ended)
			defer wg.Done()
			for hs := range ch {
				select {
				case updates <- siteUpdate{s, len(hs) > 0}:
				case <-wctx.Done():
					return
				}
			}
		}()
	}
	start := n.now()
	present := map[string]bool{}
	lastSeen := map[string]time.Time{}
	for _, s := range n.cfg.Policy.Sites {
		lastSeen[s] = start // a site absent at the start gets the grace from now
	}
	grace := n.cfg.Policy.FailoverGrace
	tick := time.NewTicker(n.cfg.Poll)
	defer tick.Stop()
	// A killed instance's presence reference outlives its session until something removes it
	// (the lock service's reaper, every few seconds): the controller removes those of present
	// sites itself, so that a site's loss is seen when its last session expires.
	reap := time.NewTicker(min(max(grace/2, 100*time.Millisecond), time.Second))
	defer reap.Stop()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// The moves and drains in force are read at the start, then on each poll tick and wake-up
	// (a change through the API wakes every instance); presence changes and timers reuse them.
	var ov Overrides
	haveOv, readOv := false, true
	for {
		if readOv {
			if o, err := n.readOverrides(ctx); err != nil {
				n.log.Warn("ownership: reading the policy", "err", err)
			} else {
				ov, haveOv, readOv = o, true, false
			}
		}
		if haveOv {
			now := n.now()
			var live []string
			next := time.Duration(0)
			for _, s := range n.cfg.Policy.Sites {
				if present[s] {
					lastSeen[s] = now
				}
				if left := grace - now.Sub(lastSeen[s]); present[s] || left > 0 {
					live = append(live, s)
					if !present[s] && (next == 0 || left < next) {
						next = left
					}
				}
			}
			pol := n.policyWith(ov)
			owners := pol.Assign(live)
			if cur.Version == 0 || !slices.Equal(cur.Live, live) || !maps.Equal(cur.Owners, owners) ||
				!maps.Equal(cur.Moves, ov.Moves) || !slices.Equal(cur.Drained, ov.Drained) {
				m := Map{Version: cur.Version + 1, ControllerEpoch: epoch, Live: live, Owners: owners,
					Moves: ov.Moves, Drained: ov.Drained, At: now.UTC()}
				if err := n.appendJSON(ctx, MapStream, epoch, m.Version, m); err != nil {
					return fmt.Errorf("append the map: %w", err)
				}
				n.log.Info("ownership: new map", "version", m.Version, "live", live, "partitions", len(owners))
				cur = m
				n.setMap(m)
				select { // this instance's follower acts on it at once
				case n.wakeFollow <- struct{}{}:
				default:
				}
				n.metrics.mapVersion.Set(float64(m.Version))
				n.emit(Event{Kind: EventMap, Site: n.cfg.Site, Instance: n.cfg.Instance, Version: m.Version, Owners: owners, Epoch: epoch})
			}
			if timer != nil {
				timer.Stop()
				timer = nil
			}
			if next > 0 {
				timer = time.NewTimer(next)
			}
		}
		var fire <-chan time.Time
		if timer != nil {
			fire = timer.C
		}
		select {
		case u := <-updates:
			present[u.site] = u.present
			lastSeen[u.site] = n.now()
		case <-fire:
			timer = nil
		case <-tick.C:
			readOv = true
		case <-reap.C:
			for _, s := range n.cfg.Policy.Sites {
				if present[s] {
					rctx, cancel := context.WithTimeout(ctx, time.Second)
					_, _ = n.deps.Locks.ReleaseExpired(rctx, SiteLock(s)) // the watch reports a removal
					cancel()
				}
			}
		case <-n.wakeControl:
			readOv = true
		case <-ctx.Done():
			return nil
		}
	}
}

// policyWith is the configured policy with ov's moves and drains.
func (n *Node) policyWith(ov Overrides) policies.Ownership {
	p := n.cfg.Policy
	p.Moves, p.Drained = ov.Moves, ov.Drained
	return p
}

// ---- the journal records ----

// appendJSON appends v as a mark entry with seq to stream under epoch.
func (n *Node) appendJSON(ctx context.Context, stream string, epoch, seq uint64, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	e := journal.Entry{Seq: seq, Op: journal.OpMark, Origin: n.cfg.Site, Statement: string(body),
		Tx: journal.Tx{ID: stream, Count: 1, Last: true}}
	return n.deps.Journal.Append(ctx, stream, epoch, []journal.Entry{e})
}

// readLast decodes the entry at seq of stream into v; false when seq is 0.
func (n *Node) readLast(ctx context.Context, stream string, seq uint64, v any) (bool, error) {
	if seq == 0 {
		return false, nil
	}
	es, err := n.deps.Journal.Read(ctx, stream, seq, 1)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", stream, err)
	}
	if len(es) == 0 {
		return false, fmt.Errorf("read %s: entry %d is not visible yet", stream, seq)
	}
	if err := json.Unmarshal([]byte(es[0].Statement), v); err != nil {
		return false, fmt.Errorf("read %s at %d: %w", stream, seq, err)
	}
	return true, nil
}

// readMap reads the map at seq (the zero Map when seq is 0).
func (n *Node) readMap(ctx context.Context, seq uint64) (Map, error) {
	var m Map
	_, err := n.readLast(ctx, MapStream, seq, &m)
	m.Version = seq
	return m, err
}

// readOverrides reads the moves and drains in force: the last ones the API set, or the
// configuration's.
func (n *Node) readOverrides(ctx context.Context) (Overrides, error) {
	h, err := n.deps.Journal.Head(ctx, PolicyStream)
	if err != nil {
		return Overrides{}, err
	}
	var ov Overrides
	ok, err := n.readLast(ctx, PolicyStream, h.Seq, &ov)
	if err != nil {
		return Overrides{}, err
	}
	if !ok {
		ov = Overrides{Moves: n.cfg.Policy.Moves, Drained: n.cfg.Policy.Drained}
	}
	return ov.normalized(), nil
}

func (o Overrides) normalized() Overrides {
	out := Overrides{Drained: slices.Clone(o.Drained)}
	if len(o.Moves) > 0 {
		out.Moves = make(map[string]string, len(o.Moves))
		for k, v := range o.Moves {
			out.Moves[k] = v
		}
	}
	slices.Sort(out.Drained)
	out.Drained = slices.Compact(out.Drained)
	if len(out.Drained) == 0 {
		out.Drained = nil
	}
	return out
}

// ---- manual moves and drains ----

// Move pins partition to site (site empty: removes the partition's move). It is validated
// against the whole policy; an invalid change fails with ErrInvalid and changes nothing.
func (n *Node) Move(ctx context.Context, partition, site string) error {
	return n.update(ctx, func(ov *Overrides) error {
		if !n.known[partition] {
			return fmt.Errorf("%w: no partition %q", ErrInvalid, partition)
		}
		if site == "" {
			delete(ov.Moves, partition)
			return nil
		}
		if ov.Moves == nil {
			ov.Moves = map[string]string{}
		}
		ov.Moves[partition] = site
		return nil
	})
}

// Drain makes site own nothing (drained true) or lets it own partitions again.
func (n *Node) Drain(ctx context.Context, site string, drained bool) error {
	return n.update(ctx, func(ov *Overrides) error {
		if !slices.Contains(n.cfg.Policy.Sites, site) {
			return fmt.Errorf("%w: no site %q", ErrInvalid, site)
		}
		ov.Drained = slices.DeleteFunc(ov.Drained, func(s string) bool { return s == site })
		if drained {
			ov.Drained = append(ov.Drained, site)
		}
		return nil
	})
}

// update changes the overrides under the policy lock: read, change, validate, append.
func (n *Node) update(ctx context.Context, change func(*Overrides) error) error {
	ref, err := n.deps.Locks.CreateRef(ctx, policyLock, locks.RefOptions{Lease: time.Minute, Owner: n.cfg.Instance})
	if err != nil {
		return err
	}
	defer n.release(ref)
	g, err := n.deps.Locks.Acquire(ctx, ref)
	if err != nil {
		return err
	}
	h, err := n.deps.Journal.Fence(ctx, PolicyStream, g.Token)
	if err != nil {
		return err
	}
	ov, err := n.readOverrides(ctx)
	if err != nil {
		return err
	}
	if err := change(&ov); err != nil {
		return err
	}
	ov = ov.normalized()
	if err := n.policyWith(ov).Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := n.appendJSON(ctx, PolicyStream, g.Token, h.Seq+1, ov); err != nil {
		return err
	}
	n.Wake()
	return nil
}

// ---- following the map ----

func (n *Node) setMap(m Map) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if m.Version > n.mu.m.Version {
		n.mu.m = m
	}
}

// follow reads the map when woken or every Poll and campaigns for the partitions it gives this
// site; when the map moves one away, the campaign is cancelled (drain, resign).
func (n *Node) follow(ctx context.Context) {
	tick := time.NewTicker(n.cfg.Poll)
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		if err := n.refresh(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("ownership: reading the map", "err", err)
		}
		n.reconcile(ctx, &wg)
		select {
		case <-tick.C:
		case <-n.wakeFollow:
		case <-ctx.Done():
			return
		}
	}
}

// refresh reads the latest map if it is newer than the one known.
func (n *Node) refresh(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, err := n.deps.Journal.Head(rctx, MapStream)
	if err != nil {
		return err
	}
	n.mu.Lock()
	known := n.mu.m.Version
	n.mu.Unlock()
	if h.Seq <= known {
		return nil
	}
	m, err := n.readMap(rctx, h.Seq)
	if err != nil {
		return err
	}
	n.setMap(m)
	n.metrics.mapVersion.Set(float64(m.Version))
	return nil
}

// reconcile starts a campaign for each partition the map gives this site and cancels those it
// gives elsewhere (or to none).
func (n *Node) reconcile(ctx context.Context, wg *sync.WaitGroup) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.m.Version == 0 || ctx.Err() != nil {
		return
	}
	for p, h := range n.mu.held {
		if n.mu.m.Owners[p] != n.cfg.Site && h.cancel != nil {
			h.cancel()
			h.cancel = nil
		}
	}
	for _, p := range n.ids {
		if n.mu.m.Owners[p] != n.cfg.Site || n.mu.held[p] != nil {
			continue
		}
		pctx, cancel := context.WithCancel(ctx)
		h := &held{cancel: cancel}
		n.mu.held[p] = h
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel()
			n.own(pctx, p, h)
			n.mu.Lock()
			delete(n.mu.held, p)
			n.mu.Unlock()
			n.Wake() // the map may want it again
		}()
	}
}

// own campaigns for partition until ctx ends, serving it whenever it leads.
func (n *Node) own(ctx context.Context, p string, h *held) {
	b := newBackoff()
	for ctx.Err() == nil {
		lead, err := n.deps.Locks.Campaign(ctx, PartitionElection(p), n.cand)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Warn("ownership: campaign failed", "partition", p, "err", err)
			if !sleep(ctx, b.NextBackOff()) {
				return
			}
			continue
		}
		err = n.serve(ctx, p, h, lead)
		if err == nil || ctx.Err() != nil {
			return
		}
		n.log.Warn("ownership: partition not served; campaigning again", "partition", p, "epoch", lead.Epoch, "err", err)
		if !sleep(ctx, b.NextBackOff()) {
			return
		}
	}
}

func (n *Node) setState(p string, h *held, state string, epoch uint64) {
	n.mu.Lock()
	h.state, h.epoch = state, epoch
	n.mu.Unlock()
	serving := 0.0
	if state == stateServing {
		serving = 1
	}
	n.metrics.serving.WithLabelValues(p).Set(serving)
}

func (n *Node) event(kind, p string, epoch uint64, unclean bool, err error) {
	ev := Event{Kind: kind, Partition: p, Site: n.cfg.Site, Instance: n.cfg.Instance, Address: n.cfg.Address,
		Epoch: epoch, Unclean: unclean}
	if err != nil {
		ev.Error = err.Error()
	}
	n.emit(ev)
}

func (n *Node) emit(ev Event) {
	ev.At = n.now().UTC()
	n.metrics.events.WithLabelValues(ev.Kind).Inc()
	if n.deps.OnEvent != nil {
		n.deps.OnEvent(ev)
	}
}

// serve runs one leadership of partition p: fence, record, catch up, serve until the map moves
// it away (drain, resign: nil) or the leadership is lost (an error: campaign again).
func (n *Node) serve(ctx context.Context, p string, h *held, lead *locks.Leadership) error {
	epoch := lead.Epoch
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { // ends with lctx at the latest
		select {
		case <-lead.Lost():
			stop()
		case <-lctx.Done():
		}
	}()
	resign := func() {
		rctx, cancel := context.WithTimeout(context.Background(), resignTimeout)
		defer cancel()
		_ = lead.Resign(rctx)
	}
	fail := func(err error) error {
		n.setState(p, h, stateNone, 0)
		if lost(lead) {
			n.event(EventLost, p, epoch, false, err)
			return fmt.Errorf("leadership lost: %w", err)
		}
		n.event(EventFailed, p, epoch, lead.PreviousUnclean, err)
		resign()
		return err
	}
	n.setState(p, h, stateCatching, epoch)
	n.event(EventCatching, p, epoch, lead.PreviousUnclean, nil)
	started := n.now()
	stream := PartitionStream(p)
	head, err := n.deps.Journal.Fence(lctx, stream, epoch)
	if err != nil {
		return fail(fmt.Errorf("fence %s: %w", stream, err))
	}
	rec := Event{Kind: EventCatching, Partition: p, Site: n.cfg.Site, Instance: n.cfg.Instance, Address: n.cfg.Address,
		Epoch: epoch, Unclean: lead.PreviousUnclean, At: started.UTC()}
	if err := n.appendJSON(lctx, stream, epoch, head.Seq+1, rec); err != nil {
		return fail(fmt.Errorf("record the transfer in %s: %w", stream, err))
	}
	if n.deps.CatchUp != nil {
		if err := n.deps.CatchUp(lctx, p, epoch, lead.PreviousUnclean); err != nil {
			return fail(fmt.Errorf("catch up: %w", err))
		}
	}
	if lost(lead) {
		return fail(errors.New("the leadership was lost while catching up"))
	}
	n.setState(p, h, stateServing, epoch)
	n.metrics.transfer.Observe(n.now().Sub(started).Seconds())
	n.log.Info("ownership: serving", "partition", p, "epoch", epoch, "previous_unclean", lead.PreviousUnclean,
		"catch_up", n.now().Sub(started))
	n.event(EventServing, p, epoch, lead.PreviousUnclean, nil)
	select {
	case <-lead.Lost():
		n.setState(p, h, stateNone, 0)
		n.log.Warn("ownership: leadership lost; no longer serving", "partition", p, "epoch", epoch)
		n.event(EventLost, p, epoch, false, nil)
		return errors.New("leadership lost")
	case <-ctx.Done():
	}
	n.mu.Lock()
	confirmed := n.confirmedLocked()
	n.mu.Unlock()
	if !confirmed || lost(lead) {
		// Moved away while this instance could not confirm its session (cut off, or frozen and
		// resumed): another site may own the partition already. Nothing to drain or hand over.
		n.setState(p, h, stateNone, 0)
		n.log.Warn("ownership: moved away while the session was unconfirmed; not serving", "partition", p, "epoch", epoch)
		n.event(EventLost, p, epoch, false, nil)
		resign()
		return nil
	}
	// Moved away (or shutting down): stop accepting, let the writes in flight finish, flush,
	// hand over.
	n.setState(p, h, stateDraining, epoch)
	n.event(EventDraining, p, epoch, false, nil)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
	n.waitIdle(dctx, h)
	if n.deps.Drain != nil {
		if err := n.deps.Drain(dctx, p); err != nil {
			n.log.Warn("ownership: drain failed; handing over anyway", "partition", p, "err", err)
		}
	}
	cancel()
	resign()
	n.setState(p, h, stateNone, 0)
	n.event(EventReleased, p, epoch, false, nil)
	return nil
}

func lost(l *locks.Leadership) bool {
	select {
	case <-l.Lost():
		return true
	default:
		return false
	}
}

// ---- observing owners ----

// observe keeps the current leader of every partition's election.
func (n *Node) observe(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, p := range n.ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := newBackoff()
			for ctx.Err() == nil {
				ch, err := n.deps.Locks.Observe(ctx, PartitionElection(p))
				if err != nil {
					if !sleep(ctx, b.NextBackOff()) {
						return
					}
					continue
				}
				for l := range ch {
					n.setLeader(p, l)
				}
			}
		}()
	}
}

func (n *Node) setLeader(p string, l locks.Leader) {
	var o Owner
	if l.Candidate != "" && json.Unmarshal([]byte(l.Candidate), &o) == nil {
		o.Epoch = l.Epoch
	} else {
		o = Owner{}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if o.Site == "" {
		delete(n.mu.leaders, p)
		return
	}
	n.mu.leaders[p] = o
}

// ---- what the API reads ----

// Route says where a write of a row of database.table with primary key key goes.
type Route struct {
	// Partitioned: the table belongs to a partition set; if not, every site accepts writes.
	Partitioned bool
	Partition   string
	// Serving: this instance owns the partition and accepts writes, at Epoch.
	Serving bool
	Epoch   uint64
	// State is this instance's state for the partition: "serving", "catchup", "draining",
	// "unconfirmed" (serving, but its session not confirmed within the lease) or "".
	State string
	// Owner is the current owner as the partition's election shows it (nil: none known).
	Owner *Owner
	// Desired is the site the map gives the partition ("" when none).
	Desired string
}

// Route returns where a write to a row goes. Errors: a key that lacks a partitioning column.
func (n *Node) Route(database, table string, key journal.Row) (Route, error) {
	p, ok, err := n.cfg.Policy.PartitionOf(database, table, key)
	if err != nil || !ok {
		return Route{}, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.routeLocked(p), nil
}

// Admit is Route for a write this instance is about to make: when it serves the row's partition
// the write is counted in flight until done is called, and a planned move drains it (waits for
// done) before handing the partition over. done reports whether this instance still served the
// partition, at the same epoch and with its session confirmed, once the write was made: if not,
// the write may have landed after another owner took over, and must not be acknowledged as the
// owner's. For an unpartitioned table, or a partition not served here, done does nothing.
func (n *Node) Admit(database, table string, key journal.Row) (Route, func() bool, error) {
	p, ok, err := n.cfg.Policy.PartitionOf(database, table, key)
	if err != nil || !ok {
		return Route{}, func() bool { return true }, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	r := n.routeLocked(p)
	if !r.Serving {
		return r, func() bool { return false }, nil
	}
	h := n.mu.held[p]
	h.inflight++
	return r, func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		h.inflight--
		if h.inflight == 0 && h.idle != nil {
			close(h.idle)
			h.idle = nil
		}
		now := n.routeLocked(p)
		return now.Serving && now.Epoch == r.Epoch
	}, nil
}

// waitIdle waits until no admitted write of h is in flight, or ctx ends.
func (n *Node) waitIdle(ctx context.Context, h *held) {
	n.mu.Lock()
	if h.inflight == 0 {
		n.mu.Unlock()
		return
	}
	if h.idle == nil {
		h.idle = make(chan struct{})
	}
	idle := h.idle
	n.mu.Unlock()
	select {
	case <-idle:
	case <-ctx.Done():
	}
}

func (n *Node) routeLocked(p string) Route {
	r := Route{Partitioned: true, Partition: p, Desired: n.mu.m.Owners[p]}
	if h := n.mu.held[p]; h != nil {
		r.State = h.state
		r.Serving, r.Epoch = h.state == stateServing && n.confirmedLocked(), h.epoch
		if h.state == stateServing && !r.Serving {
			r.State = stateUnconfirmed
		}
	}
	if o, ok := n.mu.leaders[p]; ok && n.confirmedLocked() { // unproven when unconfirmed
		r.Owner = &o
	}
	if r.Serving { // this instance's own knowledge is fresher than its observation
		r.Owner = &Owner{Site: n.cfg.Site, Instance: n.cfg.Instance, Address: n.cfg.Address, Epoch: r.Epoch}
	}
	return r
}

// PartitionView is one partition in View.
type PartitionView struct {
	Partition string `json:"partition"`
	// Desired is the site the map gives it ("" when none: no live site may own it).
	Desired string `json:"desired,omitempty"`
	// Owner is the instance that holds its election (absent when none).
	Owner *Owner `json:"owner,omitempty"`
	// State is this instance's state for it, when it holds or campaigns.
	State string `json:"state,omitempty"`
}

// View is the ownership map as this instance knows it (GET /v1/ownership).
type View struct {
	Site     string `json:"site"`
	Instance string `json:"instance"`
	Present  bool   `json:"present"`
	// Confirmed: this instance's ZooKeeper session was confirmed within the lease. When it was
	// not, the view names no owner: what it last observed cannot be proven.
	Confirmed  bool              `json:"confirmed"`
	Version    uint64            `json:"version"`
	Live       []string          `json:"live"`
	Sites      []string          `json:"sites"`
	Moves      map[string]string `json:"moves,omitempty"`
	Drained    []string          `json:"drained,omitempty"`
	Partitions []PartitionView   `json:"partitions"`
}

// View returns the map, the owners and this instance's states.
func (n *Node) View() View {
	n.mu.Lock()
	defer n.mu.Unlock()
	v := View{Site: n.cfg.Site, Instance: n.cfg.Instance, Present: n.mu.present, Version: n.mu.m.Version,
		Live: slices.Clone(n.mu.m.Live), Sites: slices.Clone(n.cfg.Policy.Sites),
		Moves: n.mu.m.Moves, Drained: n.mu.m.Drained, Partitions: make([]PartitionView, 0, len(n.ids))}
	if v.Live == nil {
		v.Live = []string{}
	}
	v.Confirmed = n.confirmedLocked()
	for _, p := range n.ids {
		pv := PartitionView{Partition: p, Desired: n.mu.m.Owners[p]}
		if o, ok := n.mu.leaders[p]; ok && v.Confirmed {
			pv.Owner = &o
		}
		if h := n.mu.held[p]; h != nil {
			pv.State = h.state
			if h.state == stateServing && !n.confirmedLocked() {
				pv.State = stateUnconfirmed
			}
			if pv.State == stateServing {
				pv.Owner = &Owner{Site: n.cfg.Site, Instance: n.cfg.Instance, Address: n.cfg.Address, Epoch: h.epoch}
			}
		}
		v.Partitions = append(v.Partitions, pv)
	}
	return v
}

// ---- helpers ----

func newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0 // bounded by ctx: the Node retries while the daemon runs
	return b
}

// sleep waits d or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
