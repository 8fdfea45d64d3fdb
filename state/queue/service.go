package queue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/state"
)

// Config configures the queue service. Zero fields take the defaults of DefaultConfig.
type Config struct {
	// Candidates is how many ready jobs of a shard one read returns; a claim tries them in a
	// random order, so that workers reading the same shard at once rarely race for one job.
	// Default 32.
	Candidates int `yaml:"candidates" help:"ready jobs one read of a shard returns (a claim tries them in random order)"`
	// ReapInterval is how often the reaper (one per deployment, elected) looks for leases that
	// ran out. Default 1s.
	ReapInterval time.Duration `yaml:"reap_interval" help:"how often the elected reaper returns jobs whose lease ran out"`
	// ReapGrace is how long after a lease's end the reaper waits before returning the job: the
	// allowance for clock differences between daemons. Default 500ms.
	ReapGrace time.Duration `yaml:"reap_grace" help:"how long after a lease ends before its job is returned (clock differences between daemons)"`
	// PollInterval is how long a waiting claim waits for a notification before it reads the
	// queue again anyway (the fallback when a notification is lost). Default 2s.
	PollInterval time.Duration `yaml:"poll_interval" help:"how often a waiting claim reads the queue without a notification (fallback)"`
	// DefRecheck is how long a daemon trusts its copy of a queue's definition. Default 2s.
	DefRecheck time.Duration `yaml:"def_recheck" help:"how long a queue definition is cached"`
	// FloorMargin: a claim reads a shard from the due time of the first job it saw there, less
	// this margin, so that it does not read again past the rows of jobs claimed before (Cassandra
	// tombstones). A job enqueued elsewhere with an earlier due time (a clock behind ours) lowers
	// the floor by its notice; the margin covers such a job whose notice was lost, for clocks up
	// to this far apart, and the next full read (FloorReset) any other. Default 100ms.
	FloorMargin time.Duration `yaml:"floor_margin" help:"how far before the first due job a claim reads a shard from"`
	// CandidateTTL is how long the candidates of a read that a claim did not take stay the
	// next claims' candidates in this daemon (each saves a read; one another daemon took costs
	// a failed conditional write). Default 500ms.
	CandidateTTL time.Duration `yaml:"candidate_ttl" help:"how long unclaimed candidates of a read are tried by the next claims here"`
	// FloorReset is how often a shard is read from its start regardless: the longest a job
	// enqueued behind the floor waits when its notice is lost. Default 30s.
	FloorReset time.Duration `yaml:"floor_reset" help:"how often a claim reads a shard from its start"`
	// MaxClaims bounds this daemon's claims in flight on one queue (each a Paxos round): a
	// claim beyond them waits for one in flight at its priority level, which claims a job for
	// it in the same conditional write. Fewer, bigger rounds claim more jobs per second when
	// Cassandra is the bottleneck. 0: no bound. Default 4.
	MaxClaims int `yaml:"max_claims" help:"claims in flight per queue in this daemon; more wait and join them (0: no bound)"`
	// MaxWait bounds how long one claim may wait for a job. Default 60s.
	MaxWait time.Duration `yaml:"max_wait" help:"longest wait a claim may ask for"`
	// OpTimeout bounds the reaper's store calls. Default 10s.
	OpTimeout time.Duration `yaml:"op_timeout" help:"time limit of the reaper's store calls"`
	// SerialConsistency is the Paxos consistency of claims and every change of an existing job
	// in distributed mode: SERIAL (exclusive across sites, the default) or LOCAL_SERIAL (within
	// the local data center only: two sites could claim one job).
	SerialConsistency string `yaml:"serial_consistency" help:"Cassandra Paxos consistency of claims: SERIAL (across sites) or LOCAL_SERIAL"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Candidates: 32, MaxClaims: 4, ReapInterval: time.Second, ReapGrace: 500 * time.Millisecond, PollInterval: 2 * time.Second,
		DefRecheck: 2 * time.Second, FloorMargin: 100 * time.Millisecond, CandidateTTL: 500 * time.Millisecond, FloorReset: 30 * time.Second, MaxWait: time.Minute, OpTimeout: 10 * time.Second,
		SerialConsistency: "SERIAL"}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Candidates < 1 || c.Candidates > 100:
		return fmt.Errorf("candidates: must be 1-100, not %d", c.Candidates)
	case c.MaxClaims < 0:
		return fmt.Errorf("max_claims: must not be negative, not %d", c.MaxClaims)
	case c.ReapInterval <= 0, c.ReapGrace < 0, c.CandidateTTL < 0, c.PollInterval <= 0, c.DefRecheck <= 0, c.FloorMargin < 0,
		c.FloorReset <= 0, c.MaxWait <= 0, c.OpTimeout <= 0:
		return errors.New("reap_interval, poll_interval, def_recheck, floor_reset, max_wait, op_timeout: must be positive; reap_grace, floor_margin, candidate_ttl: not negative")
	case c.SerialConsistency != "SERIAL" && c.SerialConsistency != "LOCAL_SERIAL":
		return fmt.Errorf("serial_consistency: %q is not SERIAL or LOCAL_SERIAL", c.SerialConsistency)
	}
	return nil
}

// Notice tells other daemons that a queue has a job of Priority due at Due (microseconds) in
// Shard.
type Notice struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Shard     int    `json:"shard"`
	Priority  int    `json:"priority"`
	Due       int64  `json:"due"`
}

// Deps are what the service uses.
type Deps struct {
	Store Store
	// Now is the clock (time.Now when nil); Rand the source of claim tokens and of the order in
	// which shards and candidates are tried (rand.Uint64 when nil).
	Now  func() time.Time
	Rand func() uint64
	// Notify publishes a notice (NATS in the daemon); nil: none. Best effort: a lost notice
	// costs waiting claims a PollInterval.
	Notify func(Notice)
	// Elector elects the reaper (election "queue.reaper"); nil: this service always reaps.
	Elector   locks.Campaigner
	Candidate string
	Logger    *slog.Logger
	// Registerer receives the metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// Service is the work queue: queues of jobs with priorities and delays, claimed with a lease by
// exactly one worker from any site, completed, released, extended, dead-lettered after too many
// failed attempts. See docs/queue.md.
type Service struct {
	cfg    Config
	store  Store
	now    func() time.Time
	rand   func() uint64
	notify func(Notice)
	elect  locks.Campaigner
	cand   string
	log    *slog.Logger
	m      *metrics

	mu struct {
		sync.Mutex
		defs   map[string]cachedDef
		queues map[string]*hints
	}
}

type cachedDef struct {
	d       Def
	fetched time.Time
}

// New builds the service; Run runs its reaper.
func New(cfg Config, deps Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Store == nil || deps.Logger == nil {
		return nil, errors.New("queue: Store and Logger are required")
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Rand == nil {
		deps.Rand = rand.Uint64
	}
	m, err := newMetrics(deps.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, store: deps.Store, now: deps.Now, rand: deps.Rand, notify: deps.Notify, elect: deps.Elector,
		cand: deps.Candidate, log: deps.Logger.With("component", "queue"), m: m}
	s.store = oneAtATime{Store: deps.Store, s: s}
	s.mu.defs = map[string]cachedDef{}
	s.mu.queues = map[string]*hints{}
	return s, nil
}

// ReaperElection is the name of the reaper's election.
const ReaperElection = "queue.reaper"

// Run reaps expired leases until ctx ends: always, or while this daemon leads the reaper's
// election when the service has an Elector.
func (s *Service) Run(ctx context.Context) error {
	if s.elect == nil {
		s.reapLoop(ctx)
		return nil
	}
	return locks.RunElected(ctx, s.elect, ReaperElection, s.cand, s.log, func(ctx context.Context, _ uint64) error {
		s.reapLoop(ctx)
		return nil
	})
}

func (s *Service) nowMicros() int64 { return s.now().UnixMicro() }

// CreateQueue creates a queue (defaults filled in). Creating a queue that exists with the same
// settings returns it; with other settings, state.ErrExists.
func (s *Service) CreateQueue(ctx context.Context, d Def) (Def, error) {
	d = d.WithDefaults()
	if err := d.Validate(); err != nil {
		return Def{}, err
	}
	d.Created = s.nowMicros()
	cur, err := s.store.CreateQueue(ctx, d)
	if errors.Is(err, state.ErrExists) {
		same := cur
		same.Created = d.Created
		if same == d {
			return cur, nil
		}
		return cur, fmt.Errorf("%w: queue %s exists with other settings", state.ErrExists, d.Key())
	}
	if err == nil {
		s.m.ops.WithLabelValues("create", "ok").Inc()
	}
	return cur, err
}

// DropQueue removes a queue and its jobs.
func (s *Service) DropQueue(ctx context.Context, namespace, name string) error {
	if err := ValidateName(namespace, name); err != nil {
		return err
	}
	err := s.store.DropQueue(ctx, namespace, name)
	s.mu.Lock()
	delete(s.mu.defs, namespace+"."+name)
	s.mu.Unlock()
	return err
}

// Queues lists the queues of a namespace.
func (s *Service) Queues(ctx context.Context, namespace string) ([]Def, error) {
	if err := state.ValidateIdentifier("namespace", namespace); err != nil {
		return nil, err
	}
	return s.store.Queues(ctx, namespace)
}

// Queue returns a queue's definition, from a copy at most DefRecheck old.
func (s *Service) Queue(ctx context.Context, namespace, name string) (Def, error) {
	if err := ValidateName(namespace, name); err != nil {
		return Def{}, err
	}
	key := namespace + "." + name
	s.mu.Lock()
	c, ok := s.mu.defs[key]
	s.mu.Unlock()
	if ok && s.now().Sub(c.fetched) < s.cfg.DefRecheck {
		return c.d, nil
	}
	d, err := s.store.Queue(ctx, namespace, name)
	if err != nil {
		return Def{}, err
	}
	s.mu.Lock()
	s.mu.defs[key] = cachedDef{d, s.now()}
	s.mu.Unlock()
	return d, nil
}

// NewJob is what a client enqueues.
type NewJob struct {
	// ID, when given, deduplicates: enqueuing an id seen within the queue's dedup window, or the
	// id of a job that is still in the queue (ready, claimed or dead), returns that job and
	// changes nothing. Empty: the service generates one.
	ID string
	// Unique (with ID): the id is refused (dup) only while a job with it is in the queue; it is
	// not remembered after the job is gone (completed or deleted), so it can be enqueued again.
	Unique   bool
	Payload  []byte
	Priority int
	Delay    time.Duration
}

// MaxDelay bounds a job's delay (and a release's).
const MaxDelay = 30 * 24 * time.Hour

// Enqueue adds a job. dup reports that a job with the same client-supplied id was enqueued
// within the dedup window: nothing changed, and j carries only its id.
func (s *Service) Enqueue(ctx context.Context, namespace, name string, nj NewJob) (j Job, dup bool, err error) {
	defer func() { s.m.observe("enqueue", err) }()
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return Job{}, false, err
	}
	mode := insertDedup
	if nj.Unique {
		mode = insertUnique
	}
	if nj.ID == "" {
		mode = insertNew
		nj.ID = strconv.FormatUint(s.rand(), 36) + strconv.FormatUint(s.rand(), 36)
	}
	if err := ValidateID(nj.ID); err != nil {
		return Job{}, false, err
	}
	switch {
	case len(nj.Payload) > d.MaxPayload:
		return Job{}, false, fmt.Errorf("%w: payload of %d bytes is over queue %s's limit of %d", state.ErrInvalid, len(nj.Payload), d.Key(), d.MaxPayload)
	case nj.Priority < 0 || nj.Priority >= d.Priorities:
		return Job{}, false, fmt.Errorf("%w: priority %d: queue %s has priorities 0-%d", state.ErrInvalid, nj.Priority, d.Key(), d.Priorities-1)
	case nj.Delay < 0 || nj.Delay > MaxDelay:
		return Job{}, false, fmt.Errorf("%w: delay must be 0-%s", state.ErrInvalid, MaxDelay)
	}
	now := s.nowMicros()
	j = Job{Shard: shardOf(nj.ID, d.Shards), ID: nj.ID, Priority: nj.Priority, Payload: nj.Payload, Enqueued: now,
		Due: now + nj.Delay.Microseconds()}
	dup, err = s.store.Insert(ctx, d, j, mode)
	if err != nil {
		return Job{}, false, err
	}
	if dup {
		return Job{ID: nj.ID, Shard: j.Shard}, true, nil
	}
	s.announce(d, j.Shard, j.Priority, j.Due)
	return j, false, nil
}

// announce wakes this daemon's waiting claims and tells the others.
func (s *Service) announce(d Def, shard, priority int, due int64) {
	n := Notice{Namespace: d.Namespace, Name: d.Name, Shard: shard, Priority: priority, Due: due}
	s.Woken(n)
	if s.notify != nil {
		s.notify(n)
	}
}

// Claim claims the next job of a queue for worker, with a lease (0: the queue's), waiting up to
// wait for one to be due. It returns nil when none was due within wait. Exactly one claimant
// holds a job at a time, from any site: the claim is one conditional write that moves the job
// from the ready rows to the claimed ones with a new random token.
func (s *Service) Claim(ctx context.Context, namespace, name, worker string, lease, wait time.Duration) (j *Job, err error) {
	defer func() { s.m.observe("claim", err) }()
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	if lease == 0 {
		lease = time.Duration(d.Lease)
	}
	switch {
	case lease < 100*time.Millisecond || lease > 24*time.Hour:
		return nil, fmt.Errorf("%w: lease must be 100ms-24h, not %s", state.ErrInvalid, lease)
	case wait < 0 || wait > s.cfg.MaxWait:
		return nil, fmt.Errorf("%w: wait must be 0-%s, not %s", state.ErrInvalid, s.cfg.MaxWait, wait)
	case worker != "" && ValidateID(worker) != nil:
		return nil, fmt.Errorf("%w: worker name %q must be 1-128 of A-Z a-z 0-9 . _ : -", state.ErrInvalid, worker)
	}
	h := s.hintsOf(d)
	deadline := s.now().Add(wait)
	for {
		wake := h.waitChan()
		j, err := s.tryClaim(ctx, d, h, worker, lease)
		if j != nil || err != nil {
			return j, err
		}
		left := deadline.Sub(s.now())
		if left <= 0 {
			return nil, nil
		}
		t := time.NewTimer(min(left, s.cfg.PollInterval, h.untilNextDue(s.now())))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: claim: %w", state.ErrUnavailable, ctx.Err())
		case <-wake:
		case <-t.C:
			h.forgetEmpty() // the fallback: look at every shard again
		}
		t.Stop()
	}
}

// maxClaimRounds bounds how often one tryClaim looks at the shards again after waiting for
// another claim of this daemon (each round follows that claim's end).
const maxClaimRounds = 64

// tryClaim looks for a due job from the highest priority down, reading the shards of a level
// starting at a random one, and tries to claim a candidate. A shard where this daemon has a
// claim or conditional write in flight is skipped: their Paxos rounds would contend (Cassandra
// makes the loser sleep and try again). When every shard of a level that may hold jobs is busy
// here, the claim waits for one of them: the claim in flight there claims a job for it too, in
// its own conditional write, if it has a candidate to spare; else it looks again.
func (s *Service) tryClaim(ctx context.Context, d Def, h *hints, worker string, lease time.Duration) (*Job, error) {
rounds:
	for range maxClaimRounds {
		for p := d.Priorities - 1; p >= 0; p-- {
			start := int(s.rand() % uint64(d.Shards))
			busy := -1
			for i := range d.Shards {
				shard := (start + i) % d.Shards
				if h.isEmpty(shard, p) {
					continue
				}
				r := h.reserveClaim(shard, p, s.cfg.MaxClaims)
				if r == joinOne {
					if c := h.claimAt(p); c >= 0 {
						busy = c
						break
					}
					r = h.reserveClaim(shard, p, 0)
				}
				if r == shardBusy {
					if busy < 0 {
						busy = shard
					}
					continue
				}
				j, err := s.claimIn(ctx, d, h, shard, p, worker, lease)
				h.unreserveClaim(shard)
				if j != nil || err != nil {
					return j, err
				}
			}
			if busy < 0 {
				continue // nothing due at this level
			}
			w := newWaiter(worker, lease, p)
			lead := h.wait(busy, w) // free again: claim there
			if !lead {
				a, err := s.awaitClaim(ctx, h, busy, w)
				if a.job != nil || err != nil {
					return a.job, err
				}
				lead = a.lead
			}
			if lead {
				j, err := s.claimIn(ctx, d, h, busy, p, worker, lease)
				h.unreserveClaim(busy)
				if j != nil || err != nil {
					return j, err
				}
			}
			continue rounds
		}
		return nil, nil
	}
	return nil, nil
}

// awaitClaim waits for w's answer from the claim in flight on shard. When ctx ends first, a
// lead handed to w meanwhile is passed on.
func (s *Service) awaitClaim(ctx context.Context, h *hints, shard int, w *waiter) (answer, error) {
	select {
	case a := <-w.res:
		return a, nil
	case <-ctx.Done():
	}
	err := fmt.Errorf("%w: claim: %w", state.ErrUnavailable, ctx.Err())
	if h.leave(shard, w) {
		return answer{}, err
	}
	// w was answered, or a claim took it: then its answer comes within that claim's store calls
	// (each bounded).
	t := time.NewTimer(2 * s.cfg.OpTimeout)
	defer t.Stop()
	select {
	case a := <-w.res:
		if a.lead {
			h.unreserveClaim(shard)
			return answer{}, err
		}
		return a, nil
	case <-t.C:
		return answer{}, err
	}
}

// claimIn tries to claim one of a shard's due jobs of priority p: candidates that an earlier
// read here returned and no claim here took yet (at most CandidateTTL old), or else those of a
// new read. The caller holds the shard's reservation, so this daemon's claims do not race each
// other for candidates. Claims waiting for this shard get a candidate each, as far as there are
// candidates, in the same conditional write.
func (s *Service) claimIn(ctx context.Context, d Def, h *hints, shard, p int, worker string, lease time.Duration) (*Job, error) {
	if h.isEmpty(shard, p) { // read empty since the claim was handed this shard
		return nil, nil
	}
	jobs, until := h.takeCandidates(shard, p, s.now())
	if len(jobs) == 0 {
		until = s.now().Add(s.cfg.CandidateTTL)
		gen := h.generation(shard, p)
		var err error
		jobs, err = s.store.Ready(ctx, d, shard, p, h.floor(shard, p, s.now()), s.nowMicros(), s.cfg.Candidates)
		if err != nil {
			return nil, err
		}
		if len(jobs) == 0 {
			// Nothing is due here up to now: the next read starts from now (less the margin for
			// clocks behind ours), past the rows claimed before (Cassandra tombstones).
			h.markEmpty(shard, p, gen, s.nowMicros()-s.cfg.FloorMargin.Microseconds())
			return nil, nil
		}
		h.raiseFloor(shard, p, jobs[0].slot.Due-s.cfg.FloorMargin.Microseconds())
		// Start at a random candidate: workers of other daemons reading this shard at the same
		// time seldom pick the same job.
		off := int(s.rand() % uint64(len(jobs)))
		jobs = append(jobs[off:], jobs[:off]...)
	}
	ws := append([]*waiter{newWaiter(worker, lease, p)}, h.takeWaiters(shard, p, len(jobs)-1)...)
	defer func() {
		for _, w := range ws[1:] { // those not served look again
			w.res <- answer{}
		}
	}()
	for tries := len(jobs); len(jobs) > 0 && tries > 0; tries-- { // each failed try drops a candidate
		k := min(len(jobs), len(ws))
		got, rest, err := s.claimBatch(ctx, d, shard, jobs, ws[:k])
		jobs = rest
		if err != nil {
			return nil, err
		}
		if got == nil {
			continue // a candidate was gone: the others again
		}
		for i, w := range ws[1:k] {
			w.res <- answer{job: got[i+1]}
		}
		ws = append(ws[:1], ws[k:]...)
		h.keepCandidates(shard, p, jobs, until)
		return got[0], nil
	}
	return nil, nil
}

// claimBatch claims cands[i] for ws[i] (i < len(ws)), all in one conditional write. It returns
// the claimed jobs, or nil when a candidate was gone (then nothing is claimed), and the
// candidates still worth trying.
func (s *Service) claimBatch(ctx context.Context, d Def, shard int, cands []Job, ws []*waiter) ([]*Job, []Job, error) {
	now := s.now()
	from := make([]slot, len(ws))
	claims := make([]*Job, len(ws))
	for i, w := range ws {
		j := cands[i]
		from[i] = j.slot // claimed in place
		j.Attempts++
		j.LeaseUntil = now.Add(w.lease).UnixMicro()
		j.Holder, j.Token = w.worker, s.newToken(j.LeaseUntil, j.slot)
		claims[i] = &j
	}
	ok, exist, err := s.store.ClaimAll(ctx, d, shard, from, claims)
	if err != nil {
		// Unknown outcome (all or nothing): a linearizable read of one claimed row settles it.
		got, gerr := s.store.Get(ctx, d, shard, claims[0].slot)
		if gerr != nil || got == nil || got.Token != claims[0].Token {
			return nil, nil, err
		}
		ok = true
	}
	rest := cands[len(ws):]
	if !ok {
		var still []Job
		for i, e := range exist {
			if e {
				still = append(still, cands[i])
			} else {
				s.m.lost.Inc()
			}
		}
		return nil, append(still, rest...), nil
	}
	s.m.batch.Observe(float64(len(claims)))
	for _, j := range claims {
		s.m.latency.Observe(float64(now.UnixMicro()-max(j.Due, j.Enqueued)) / 1e6)
	}
	return claims, rest, nil
}

// move is Store.Move with the shard marked busy in this daemon's hints meanwhile, so that claims
// here prefer other shards.
func (s *Service) move(ctx context.Context, d Def, shard int, from slot, c cond, to ...*Job) (bool, *Job, error) {
	h := s.hintsOf(d)
	h.reserve(shard)
	defer h.unreserve(shard)
	return s.store.Move(ctx, d, shard, from, c, to...)
}

// newToken names a claim: its lease's end (microseconds), 64 random bits, and the slot of the
// job's row (priority and due time), in base 36. The daemon that is asked to complete, release
// or extend a claim checks the lease's end from the token without a read (Cassandra 2.1's
// lightweight transactions compare only for equality) and finds the row from it; the store's
// condition on the token makes the change exclusive.
func (s *Service) newToken(leaseUntil int64, at slot) string {
	return strconv.FormatInt(leaseUntil, 36) + "." + strconv.FormatUint(s.rand(), 36) + "." +
		strconv.Itoa(at.Priority) + "." + strconv.FormatInt(at.Due, 36)
}

var tokenRE = regexp.MustCompile(`^[0-9a-z]{1,13}\.[0-9a-z]{1,13}\.[0-9]{1,3}\.[0-9a-z]{1,13}$`)

// claimOf returns the lease's end a token names and the slot of job id's row it names.
func claimOf(id, token string) (int64, slot, error) {
	if tokenRE.MatchString(token) {
		f := strings.Split(token, ".")
		end, err1 := strconv.ParseInt(f[0], 36, 64)
		prio, err2 := strconv.Atoi(f[2])
		due, err3 := strconv.ParseInt(f[3], 36, 64)
		if err1 == nil && err2 == nil && err3 == nil && prio < 256 {
			return end, slot{Kind: kindReady, Priority: prio, Due: due, ID: id}, nil
		}
	}
	return 0, slot{}, fmt.Errorf("%w: %q is not a claim token", state.ErrInvalid, token)
}

// checkToken checks that a token names a lease that has not ended, and returns the slot of the
// job's row it names and the condition of a change of the claim.
func (s *Service) checkToken(d Def, id, token string) (slot, cond, error) {
	if err := ValidateID(id); err != nil {
		return slot{}, cond{}, err
	}
	end, at, err := claimOf(id, token)
	if err != nil {
		return slot{}, cond{}, err
	}
	if end <= s.nowMicros() {
		return slot{}, cond{}, fmt.Errorf("%w: job %s of %s", ErrLeaseExpired, id, d.Key())
	}
	return at, cond{token: token, leaseUntil: end}, nil
}

// held reads the claimed row of a job linearizably and checks the caller's token and lease; it
// returns the row and the condition of a change of the claim.
func (s *Service) held(ctx context.Context, d Def, id, token string) (*Job, cond, error) {
	at, c, err := s.checkToken(d, id, token)
	if err != nil {
		return nil, cond{}, err
	}
	j, err := s.store.Get(ctx, d, shardOf(id, d.Shards), at)
	if err != nil {
		return nil, cond{}, err
	}
	if j == nil || j.Token != token {
		return nil, cond{}, notClaimant(d, id)
	}
	return j, c, nil
}

func notClaimant(d Def, id string) error {
	return fmt.Errorf("%w: job %s of %s", ErrNotClaimant, id, d.Key())
}

// Complete completes a job the caller holds (token) before its lease ends. Completing again with
// the same token (an answer lost on the way) succeeds again, within the dedup window.
func (s *Service) Complete(ctx context.Context, namespace, name, id, token string) (err error) {
	defer func() { s.m.observe("complete", err) }()
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return err
	}
	shard := shardOf(id, d.Shards)
	done := &Job{slot: slot{Kind: kindDone, ID: id}, ID: id, Token: token, Died: s.nowMicros()}
	at, c, err := s.checkToken(d, id, token)
	if err != nil {
		if errors.Is(err, ErrLeaseExpired) {
			if got, gerr := s.store.Get(ctx, d, shard, done.slot); gerr == nil && got != nil && got.Token == token {
				return nil // completed before, in time; this is a retry
			}
		}
		return err
	}
	ok, _, err := s.move(ctx, d, shard, at, c, done)
	if ok {
		return nil
	}
	// Unknown outcome, or no claimed row: a completion with this token already done is a success.
	if got, gerr := s.store.Get(ctx, d, shard, done.slot); gerr == nil && got != nil && got.Token == token {
		return nil
	}
	if err != nil {
		return err
	}
	return notClaimant(d, id)
}

// Release gives a held job back: ready again after delay, or, when it failed (errMsg not empty)
// for the queue's MaxAttempts-th time, to the dead letters. A release without an error does not
// count as an attempt. It returns the job as it now is.
func (s *Service) Release(ctx context.Context, namespace, name, id, token string, delay time.Duration, errMsg string) (_ Job, err error) {
	defer func() { s.m.observe("release", err) }()
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return Job{}, err
	}
	if delay < 0 || delay > MaxDelay {
		return Job{}, fmt.Errorf("%w: delay must be 0-%s", state.ErrInvalid, MaxDelay)
	}
	if len(errMsg) > 4096 {
		return Job{}, fmt.Errorf("%w: error message over 4096 bytes", state.ErrInvalid)
	}
	j, c, err := s.held(ctx, d, id, token)
	if err != nil {
		return Job{}, err
	}
	next := s.afterAttempt(d, *j, delay, errMsg)
	ok, _, err := s.move(ctx, d, j.Shard, j.slot, c, &next)
	if err != nil {
		return Job{}, err
	}
	if !ok {
		return Job{}, notClaimant(d, id)
	}
	if next.slot.Kind == kindReady {
		s.announce(d, next.Shard, next.Priority, next.Due)
	}
	return next, nil
}

// afterAttempt is where a claimed job goes when its attempt ends without completion: failed
// (errMsg) MaxAttempts times, to the dead letters; otherwise ready again after delay.
func (s *Service) afterAttempt(d Def, j Job, delay time.Duration, errMsg string) Job {
	now := s.nowMicros()
	next := j
	next.Holder, next.Token, next.LeaseUntil = "", "", 0
	if errMsg == "" {
		next.Attempts-- // a plain give-back does not count
	} else {
		next.Error = errMsg
	}
	if errMsg != "" && next.Attempts >= d.MaxAttempts {
		next.slot = slot{Kind: kindDead, ID: j.ID}
		next.Died = now
		s.m.dead.Inc()
		return next
	}
	next.Due = now + delay.Microseconds()
	next.slot = slot{Kind: kindReady, Priority: j.Priority, Due: next.Due, ID: j.ID}
	return next
}

// Extend sets the lease of a held job to end lease from now, under a new token (the old one is
// no longer valid). It returns the job's id, token and lease.
func (s *Service) Extend(ctx context.Context, namespace, name, id, token string, lease time.Duration) (_ Job, err error) {
	defer func() { s.m.observe("extend", err) }()
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return Job{}, err
	}
	if lease == 0 {
		lease = time.Duration(d.Lease)
	}
	if lease < 100*time.Millisecond || lease > 24*time.Hour {
		return Job{}, fmt.Errorf("%w: lease must be 100ms-24h, not %s", state.ErrInvalid, lease)
	}
	at, c, err := s.checkToken(d, id, token)
	if err != nil {
		return Job{}, err
	}
	shard := shardOf(id, d.Shards)
	next := Job{Shard: shard, slot: at, ID: id, LeaseUntil: s.now().Add(lease).UnixMicro()}
	next.Token = s.newToken(next.LeaseUntil, at)
	ok, _, err := s.move(ctx, d, shard, next.slot, c, &next)
	if err != nil {
		// Unknown outcome: a linearizable read settles it.
		got, gerr := s.store.Get(ctx, d, shard, next.slot)
		if gerr != nil || got == nil || got.Token != next.Token {
			return Job{}, err
		}
		ok = true
	}
	if !ok {
		return Job{}, notClaimant(d, id)
	}
	return next, nil
}

// Peek returns up to limit jobs that are due, in the order claims take them (highest priority,
// then earliest due), without claiming them. It reads every shard of each priority level it
// needs (a bounded read each).
func (s *Service) Peek(ctx context.Context, namespace, name string, limit int) ([]Job, error) {
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	if limit < 1 || limit > MaxPeek {
		return nil, fmt.Errorf("%w: limit must be 1-%d", state.ErrInvalid, MaxPeek)
	}
	now := s.nowMicros()
	var out []Job
	for p := d.Priorities - 1; p >= 0 && len(out) < limit; p-- {
		var level []Job
		for shard := range d.Shards {
			jobs, err := s.store.Ready(ctx, d, shard, p, 0, now, limit-len(out))
			if err != nil {
				return nil, err
			}
			level = append(level, jobs...)
		}
		slices.SortFunc(level, func(a, b Job) int {
			if a.Due != b.Due {
				return cmp.Compare(a.Due, b.Due)
			}
			return cmp.Compare(a.ID, b.ID)
		})
		out = append(out, level[:min(len(level), limit-len(out))]...)
	}
	return out, nil
}

// Dead lists up to limit dead-lettered jobs, shard by shard; next continues the listing ("" at
// the end).
func (s *Service) Dead(ctx context.Context, namespace, name, page string, limit int) (_ []Job, next string, err error) {
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return nil, "", err
	}
	if limit < 1 || limit > MaxPeek {
		return nil, "", fmt.Errorf("%w: limit must be 1-%d", state.ErrInvalid, MaxPeek)
	}
	shard, after := 0, ""
	if page != "" {
		sh, id, ok := cutPage(page)
		if !ok || sh >= d.Shards {
			return nil, "", fmt.Errorf("%w: page token %q", state.ErrInvalid, page)
		}
		shard, after = sh, id
	}
	var out []Job
	for ; shard < d.Shards; shard, after = shard+1, "" {
		jobs, err := s.store.Rows(ctx, d, shard, kindDead, after, limit-len(out))
		if err != nil {
			return nil, "", err
		}
		out = append(out, jobs...)
		if len(out) == limit {
			return out, strconv.Itoa(shard) + ":" + out[len(out)-1].ID, nil
		}
	}
	return out, "", nil
}

func cutPage(p string) (int, string, bool) {
	for i := range len(p) {
		if p[i] == ':' {
			n, err := strconv.Atoi(p[:i])
			return n, p[i+1:], err == nil && n >= 0 && ValidateID(p[i+1:]) == nil
		}
	}
	return 0, "", false
}

// Retry moves a dead-lettered job back to the ready jobs, with its attempts reset.
func (s *Service) Retry(ctx context.Context, namespace, name, id string) (_ Job, err error) {
	defer func() { s.m.observe("retry", err) }()
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return Job{}, err
	}
	if err := ValidateID(id); err != nil {
		return Job{}, err
	}
	shard := shardOf(id, d.Shards)
	from := slot{Kind: kindDead, ID: id}
	j, err := s.store.Get(ctx, d, shard, from)
	if err != nil {
		return Job{}, err
	}
	if j == nil {
		return Job{}, fmt.Errorf("%w: no dead-lettered job %s in %s", state.ErrNotFound, id, d.Key())
	}
	next := *j
	next.Attempts, next.Died, next.Due = 0, 0, s.nowMicros()
	next.slot = slot{Kind: kindReady, Priority: j.Priority, Due: next.Due, ID: id}
	ok, _, err := s.move(ctx, d, shard, from, cond{}, &next)
	if err != nil {
		return Job{}, err
	}
	if !ok {
		return Job{}, fmt.Errorf("%w: no dead-lettered job %s in %s", state.ErrNotFound, id, d.Key())
	}
	s.announce(d, shard, next.Priority, next.Due)
	return next, nil
}

// reapLoop returns the jobs whose lease ran out, every ReapInterval, until ctx ends.
func (s *Service) reapLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.ReapOnce(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("reaping expired leases failed; trying again", "err", err, "in", s.cfg.ReapInterval)
		}
	}
}

// ReapOnce returns every job whose lease ended more than ReapGrace ago to the queue (or to the
// dead letters after MaxAttempts), in every queue.
func (s *Service) ReapOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.OpTimeout)
	defer cancel()
	defs, err := s.store.Queues(ctx, "")
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range defs {
		for shard := range d.Shards {
			if err := s.reapShard(ctx, d, shard); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (s *Service) reapShard(ctx context.Context, d Def, shard int) error {
	leases, err := s.store.Leases(ctx, d, shard, s.nowMicros()-s.cfg.ReapGrace.Microseconds(), maxReap)
	if err != nil {
		return err
	}
	for _, l := range leases {
		j, err := s.store.Get(ctx, d, shard, l.slot)
		if err != nil {
			return err
		}
		if j == nil || j.Token != l.Token {
			continue // changed since the read of the leases
		}
		next := s.afterAttempt(d, *j, 0, "lease expired (held by "+j.Holder+")")
		ok, _, err := s.move(ctx, d, shard, j.slot, cond{token: j.Token, leaseUntil: j.LeaseUntil}, &next)
		if err != nil {
			return err
		}
		if ok {
			s.m.expired.Inc()
			s.log.Debug("lease expired", "queue", d.Key(), "job", j.ID, "holder", j.Holder, "attempts", j.Attempts)
			if next.slot.Kind == kindReady {
				s.announce(d, shard, next.Priority, next.Due)
			}
		}
	}
	return nil
}

// maxReap bounds the expired leases of a shard the reaper returns in one pass (the rest in the
// next).
const maxReap = 1000
