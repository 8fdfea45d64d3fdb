package queue

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// hints is what this daemon knows about where a queue's due jobs are, so that a claim reads as
// few rows as it can. A hint is only ever an optimization: the claim's conditional write decides,
// and every hint expires (PollInterval, FloorReset), so a wrong one delays a job, never loses it.
type hints struct {
	shards, priorities int
	floorReset         time.Duration
	candTTL            time.Duration
	// turns[shard] (capacity 1) is held by this daemon's conditional write or linearizable read
	// of the shard in flight (see oneAtATime).
	turns []chan struct{}

	mu struct {
		sync.Mutex
		// wake is closed (and replaced) when a notice says a job may be due.
		wake chan struct{}
		// empty[shard*priorities+p]: the last read found nothing due there, and no notice came
		// since.
		empty []bool
		// gens[shard*priorities+p] counts the notices for that level: a read that finds it empty
		// marks it so only if no notice came while it ran (see markEmpty).
		gens []uint64
		// floors[shard*priorities+p]: read that level from this due time on (the rows before
		// it were claimed); reset at floorsAt + floorReset.
		floors   []int64
		floorsAt time.Time
		// nextDue is the earliest future due time a notice announced (0: none).
		nextDue int64
		// busy[shard]: this daemon's claims and conditional writes in flight on the shard.
		busy []int
		// claiming[shard]: the priority level of this daemon's claim in flight on the shard,
		// -1 if none; claims counts them.
		claiming []int
		claims   int
		// waiters[shard]: claims of this daemon waiting for the shard's claim or write in
		// flight (see wait).
		waiters [][]*waiter
		// cands[shard*priorities+p]: due jobs a read returned that no claim here took yet,
		// until candsUntil.
		cands      [][]Job
		candsUntil []time.Time
	}
}

func (s *Service) hintsOf(d Def) *hints {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := storageKey(d)
	h := s.mu.queues[key]
	if h == nil {
		h = &hints{shards: d.Shards, priorities: d.Priorities, floorReset: s.cfg.FloorReset}
		h.mu.wake = make(chan struct{})
		h.mu.empty = make([]bool, d.Shards*d.Priorities)
		h.mu.gens = make([]uint64, d.Shards*d.Priorities)
		h.mu.floors = make([]int64, d.Shards*d.Priorities)
		h.mu.busy = make([]int, d.Shards)
		h.mu.claiming = make([]int, d.Shards)
		for i := range h.mu.claiming {
			h.mu.claiming[i] = -1
		}
		h.mu.waiters = make([][]*waiter, d.Shards)
		h.turns = make([]chan struct{}, d.Shards)
		for i := range h.turns {
			h.turns[i] = make(chan struct{}, 1)
		}
		h.mu.cands = make([][]Job, d.Shards*d.Priorities)
		h.mu.candsUntil = make([]time.Time, d.Shards*d.Priorities)
		h.candTTL = s.cfg.CandidateTTL
		h.mu.floorsAt = s.now()
		s.mu.queues[key] = h
	}
	return h
}

// Woken tells the service that a queue may have a job due at n.Due in n.Shard (a notice from
// another daemon, or this one's own enqueue or release).
func (s *Service) Woken(n Notice) {
	s.mu.Lock()
	var hs []*hints
	for key, h := range s.mu.queues {
		// The notice names the queue, not its generation: every generation cached here hears it.
		if strings.HasPrefix(key, n.Namespace+"."+n.Name+"/") {
			hs = append(hs, h)
		}
	}
	s.mu.Unlock()
	now := s.nowMicros()
	for _, h := range hs {
		h.notice(n, now)
	}
}

func (h *hints) notice(n Notice, now int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n.Shard >= 0 && n.Shard < h.shards && n.Priority >= 0 && n.Priority < h.priorities {
		i := n.Shard*h.priorities + n.Priority
		h.mu.empty[i] = false
		h.mu.gens[i]++
		// A job due earlier than the floor (a clock behind ours) is read from its due time.
		h.mu.floors[i] = min(h.mu.floors[i], n.Due)
	}
	if n.Due > now {
		if h.mu.nextDue == 0 || n.Due < h.mu.nextDue {
			h.mu.nextDue = n.Due
		}
		return
	}
	close(h.mu.wake)
	h.mu.wake = make(chan struct{})
}

// waitChan is closed by the next notice of a due job.
func (h *hints) waitChan() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.wake
}

// untilNextDue is how long until the earliest announced future job is due (an hour if none).
func (h *hints) untilNextDue(now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.nextDue == 0 {
		return time.Hour
	}
	d := time.Duration(h.mu.nextDue-now.UnixMicro()) * time.Microsecond
	if d <= 0 {
		h.mu.nextDue = 0
		for i := range h.mu.empty {
			h.mu.empty[i] = false
		}
		return 0
	}
	return d
}

func (h *hints) isEmpty(shard, p int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.empty[shard*h.priorities+p]
}

// generation is the count of notices for a level so far.
func (h *hints) generation(shard, p int) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.gens[shard*h.priorities+p]
}

// markEmpty records that a read begun at notice generation gen found nothing due at the level
// up to now, so that claims skip it and read it from now (less margin) on, unless a notice came
// while the read ran: its job may not have been visible to the read.
func (h *hints) markEmpty(shard, p int, gen uint64, floor int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := shard*h.priorities + p
	if h.mu.gens[i] != gen {
		return
	}
	h.mu.empty[i] = true
	h.mu.floors[i] = max(h.mu.floors[i], floor)
}

// forgetEmpty makes the next claim read every shard again.
func (h *hints) forgetEmpty() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.mu.empty {
		h.mu.empty[i] = false
	}
}

// floor is the due time to read a shard's priority level from (0: its start).
func (h *hints) floor(shard, p int, now time.Time) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.mu.floorsAt) >= h.floorReset {
		clear(h.mu.floors)
		h.mu.floorsAt = now
	}
	return h.mu.floors[shard*h.priorities+p]
}

// raiseFloor records that the level's first due job is at or after f.
func (h *hints) raiseFloor(shard, p int, f int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if i := shard*h.priorities + p; f > h.mu.floors[i] {
		h.mu.floors[i] = f
	}
}

// reserve marks a shard busy with a conditional write (not a claim): this daemon's claims
// prefer other shards meanwhile.
func (h *hints) reserve(shard int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.busy[shard]++
}

// reservation is what reserveClaim did.
type reservation int

const (
	reserved  reservation = iota // the shard is the claim's
	shardBusy                    // a claim or conditional write of this daemon is in flight there
	joinOne                      // maxClaims claims are in flight: wait for one at this level
)

// reserveClaim reserves a free shard for a claim at priority level p, unless max claims are in
// flight in this daemon already and one of them is at level p (then the claim should wait for
// it: see wait). max 0: no bound.
func (h *hints) reserveClaim(shard, p, max int) reservation {
	h.mu.Lock()
	defer h.mu.Unlock()
	if max > 0 && h.mu.claims >= max && slices.Contains(h.mu.claiming, p) {
		return joinOne
	}
	if h.mu.busy[shard] > 0 {
		return shardBusy
	}
	h.mu.busy[shard]++
	h.mu.claiming[shard] = p
	h.mu.claims++
	return reserved
}

// claimAt returns the shard of a claim in flight at level p with the fewest waiters, or -1.
func (h *hints) claimAt(p int) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	best := -1
	for shard, lp := range h.mu.claiming {
		if lp == p && (best < 0 || len(h.mu.waiters[shard]) < len(h.mu.waiters[best])) {
			best = shard
		}
	}
	return best
}

// unreserveClaim ends a claim's reservation (see unreserve).
func (h *hints) unreserveClaim(shard int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.mu.claiming[shard] = -1
	h.mu.claims--
	h.endLocked(shard)
}

// unreserve ends a conditional write's reservation (see reserve).
func (h *hints) unreserve(shard int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.endLocked(shard)
}

// endLocked ends a reservation. When the shard is free and claims wait for it, the oldest
// becomes the shard's next claim (it leads) and claims for the others as far as it has
// candidates: the claims that arrived while a round was in flight go together in the next
// (group commit).
func (h *hints) endLocked(shard int) {
	h.mu.busy[shard]--
	if h.mu.busy[shard] > 0 || len(h.mu.waiters[shard]) == 0 {
		return
	}
	w := h.mu.waiters[shard][0]
	h.mu.waiters[shard] = slices.Delete(h.mu.waiters[shard], 0, 1)
	h.mu.busy[shard]++
	h.mu.claiming[shard] = w.p
	h.mu.claims++
	w.res <- answer{lead: true}
}

// waiter is a claim waiting for another claim of this daemon on a shard, which may claim a job
// for it in the same conditional write.
type waiter struct {
	worker string
	lease  time.Duration
	p      int // the priority level it claims at
	// res (buffered) gets exactly one answer.
	res chan answer
}

// answer is what a waiting claim is told: a job claimed for it; or that it has the shard and
// claims there (lead); or neither: look again.
type answer struct {
	job  *Job
	lead bool
}

func newWaiter(worker string, lease time.Duration, p int) *waiter {
	return &waiter{worker: worker, lease: lease, p: p, res: make(chan answer, 1)}
}

// wait reserves the shard for a claim at level p if it is free (true); else it adds w to the
// shard's waiters (false).
func (h *hints) wait(shard int, w *waiter) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.busy[shard] == 0 {
		h.mu.busy[shard]++
		h.mu.claiming[shard] = w.p
		h.mu.claims++
		return true
	}
	h.mu.waiters[shard] = append(h.mu.waiters[shard], w)
	return false
}

// leave removes w from the shard's waiters; false if it was answered already (the answer is in
// w.res).
func (h *hints) leave(shard int, w *waiter) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	ws := h.mu.waiters[shard]
	if i := slices.Index(ws, w); i >= 0 {
		h.mu.waiters[shard] = slices.Delete(ws, i, i+1)
		return true
	}
	return false
}

// takeWaiters removes and returns up to n of the shard's waiters at level p, oldest first.
func (h *hints) takeWaiters(shard, p, n int) []*waiter {
	h.mu.Lock()
	defer h.mu.Unlock()
	var taken []*waiter
	h.mu.waiters[shard] = slices.DeleteFunc(h.mu.waiters[shard], func(w *waiter) bool {
		if len(taken) < n && w.p == p {
			taken = append(taken, w)
			return true
		}
		return false
	})
	return taken
}

// takeCandidates returns (and forgets) the level's cached candidates, if still fresh, and until
// when they are.
func (h *hints) takeCandidates(shard, p int, now time.Time) ([]Job, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := shard*h.priorities + p
	c, until := h.mu.cands[i], h.mu.candsUntil[i]
	h.mu.cands[i] = nil
	if !now.Before(until) {
		return nil, time.Time{}
	}
	return c, until
}

// keepCandidates caches the candidates a claim did not try, for the next claims here, until
// until (the freshness of the read that returned them).
func (h *hints) keepCandidates(shard, p int, jobs []Job, until time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	i := shard*h.priorities + p
	h.mu.cands[i] = append(h.mu.cands[i][:0:0], jobs...)
	h.mu.candsUntil[i] = until
}
