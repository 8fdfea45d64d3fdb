package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/state"
)

func newService(t *testing.T, st Store, cfg Config) *Service {
	t.Helper()
	s, err := New(cfg, Deps{Store: st, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fastConfig() Config {
	c := DefaultConfig()
	c.ReapInterval, c.ReapGrace, c.PollInterval, c.DefRecheck = 50*time.Millisecond, 0, 200*time.Millisecond, 100*time.Millisecond
	return c
}

// TestServiceLifecycle drives one job through every operation and every refusal, in both modes.
func TestServiceLifecycle(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		s := newService(t, st, fastConfig())
		if _, _, err := s.Enqueue(ctx, "app", "nope", NewJob{}); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("enqueue into an unknown queue: %v", err)
		}
		for _, bad := range []Def{
			{Namespace: "app", Name: "Bad"}, {Namespace: "app", Name: "q", Shards: 1000}, {Namespace: "app", Name: "q", Priorities: 17},
			{Namespace: "app", Name: "q", Lease: Duration(time.Millisecond)}, {Namespace: "app", Name: "q", MaxPayload: 2 << 20},
		} {
			if _, err := s.CreateQueue(ctx, bad); !errors.Is(err, state.ErrInvalid) {
				t.Errorf("create %+v: %v, want ErrInvalid", bad, err)
			}
		}
		d, err := s.CreateQueue(ctx, Def{Namespace: "app", Name: "jobs", Priorities: 2, Shards: 4, MaxAttempts: 2, MaxPayload: 16})
		if err != nil {
			t.Fatal(err)
		}
		if again, err := s.CreateQueue(ctx, Def{Namespace: "app", Name: "jobs", Priorities: 2, Shards: 4, MaxAttempts: 2, MaxPayload: 16}); err != nil || again != d {
			t.Fatalf("create again with the same settings: %+v %v", again, err)
		}
		if _, err := s.CreateQueue(ctx, Def{Namespace: "app", Name: "jobs", Shards: 8}); !errors.Is(err, state.ErrExists) {
			t.Fatalf("create again with other settings: %v", err)
		}
		for _, nj := range []NewJob{{Payload: make([]byte, 17)}, {Priority: 2}, {Priority: -1}, {ID: "bad id"}, {Delay: -time.Second}} {
			if _, _, err := s.Enqueue(ctx, "app", "jobs", nj); !errors.Is(err, state.ErrInvalid) {
				t.Errorf("enqueue %+v: %v, want ErrInvalid", nj, err)
			}
		}
		if j, err := s.Claim(ctx, "app", "jobs", "w", 0, 0); err != nil || j != nil {
			t.Fatalf("claim of an empty queue: %+v %v", j, err)
		}
		lo, _, err := s.Enqueue(ctx, "app", "jobs", NewJob{ID: "lo", Payload: []byte("low")})
		if err != nil {
			t.Fatal(err)
		}
		if _, dup, err := s.Enqueue(ctx, "app", "jobs", NewJob{ID: "lo", Payload: []byte("again")}); err != nil || !dup {
			t.Fatalf("enqueue of the same id: dup=%v %v", dup, err)
		}
		hi, _, err := s.Enqueue(ctx, "app", "jobs", NewJob{Payload: []byte("high"), Priority: 1})
		if err != nil {
			t.Fatal(err)
		}
		peek, err := s.Peek(ctx, "app", "jobs", 10)
		if err != nil || len(peek) != 2 || peek[0].ID != hi.ID || peek[1].ID != lo.ID {
			t.Fatalf("peek: %+v %v", peek, err)
		}
		// The higher priority first.
		c1, err := s.Claim(ctx, "app", "jobs", "w1", time.Minute, 0)
		if err != nil || c1 == nil || c1.ID != hi.ID || string(c1.Payload) != "high" || c1.Attempts != 1 || c1.Holder != "w1" {
			t.Fatalf("first claim: %+v %v", c1, err)
		}
		c2, err := s.Claim(ctx, "app", "jobs", "w2", time.Minute, 0)
		if err != nil || c2 == nil || c2.ID != "lo" {
			t.Fatalf("second claim: %+v %v", c2, err)
		}
		if j, err := s.Claim(ctx, "app", "jobs", "w3", 0, 0); err != nil || j != nil {
			t.Fatalf("third claim: %+v %v, want none", j, err)
		}
		// Refusals change nothing.
		if err := s.Complete(ctx, "app", "jobs", c1.ID, c2.Token); !errors.Is(err, ErrNotClaimant) {
			t.Fatalf("complete with another claim's token: %v", err)
		}
		if err := s.Complete(ctx, "app", "jobs", c1.ID, "garbage"); !errors.Is(err, state.ErrInvalid) {
			t.Fatalf("complete with a malformed token: %v", err)
		}
		past := strconvToken(time.Now().Add(-time.Second))
		if err := s.Complete(ctx, "app", "jobs", c1.ID, past); !errors.Is(err, ErrLeaseExpired) {
			t.Fatalf("complete with an expired token: %v", err)
		}
		// Extend: a new token; the old one no longer works.
		ext, err := s.Extend(ctx, "app", "jobs", c1.ID, c1.Token, 2*time.Minute)
		if err != nil || ext.Token == c1.Token || ext.LeaseUntil <= c1.LeaseUntil {
			t.Fatalf("extend: %+v %v", ext, err)
		}
		if err := s.Complete(ctx, "app", "jobs", c1.ID, c1.Token); !errors.Is(err, ErrNotClaimant) {
			t.Fatalf("complete with the token before extend: %v", err)
		}
		if err := s.Complete(ctx, "app", "jobs", c1.ID, ext.Token); err != nil {
			t.Fatal(err)
		}
		if err := s.Complete(ctx, "app", "jobs", c1.ID, ext.Token); err != nil {
			t.Fatalf("a retried complete: %v, want success", err)
		}
		if _, err := s.Release(ctx, "app", "jobs", c1.ID, ext.Token, 0, ""); !errors.Is(err, ErrNotClaimant) {
			t.Fatalf("release of a completed job: %v", err)
		}
		// Release without an error: ready again, the attempt not counted.
		r, err := s.Release(ctx, "app", "jobs", "lo", c2.Token, 0, "")
		if err != nil || r.Attempts != 0 {
			t.Fatalf("release: %+v %v", r, err)
		}
		// Two failures (MaxAttempts 2): dead.
		for i := 1; i <= 2; i++ {
			c, err := s.Claim(ctx, "app", "jobs", "w", time.Minute, time.Second)
			if err != nil || c == nil || c.ID != "lo" || c.Attempts != i {
				t.Fatalf("claim %d: %+v %v", i, c, err)
			}
			r, err := s.Release(ctx, "app", "jobs", "lo", c.Token, 0, fmt.Sprintf("failure %d", i))
			if err != nil || r.Error != fmt.Sprintf("failure %d", i) {
				t.Fatalf("failed release %d: %+v %v", i, r, err)
			}
		}
		if j, err := s.Claim(ctx, "app", "jobs", "w", 0, 0); err != nil || j != nil {
			t.Fatalf("claim after dead-lettering: %+v %v", j, err)
		}
		dead, next, err := s.Dead(ctx, "app", "jobs", "", 10)
		if err != nil || len(dead) != 1 || dead[0].ID != "lo" || dead[0].Error != "failure 2" || dead[0].Died == 0 || next != "" {
			t.Fatalf("dead letters: %+v %q %v", dead, next, err)
		}
		if _, err := s.Retry(ctx, "app", "jobs", "lo"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Retry(ctx, "app", "jobs", "lo"); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("retry again: %v", err)
		}
		c, err := s.Claim(ctx, "app", "jobs", "w", time.Minute, time.Second)
		if err != nil || c == nil || c.ID != "lo" || c.Attempts != 1 || string(c.Payload) != "low" {
			t.Fatalf("claim after retry: %+v %v", c, err)
		}
		if err := s.Complete(ctx, "app", "jobs", "lo", c.Token); err != nil {
			t.Fatal(err)
		}
		if err := s.DropQueue(ctx, "app", "jobs"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Claim(ctx, "app", "jobs", "w", 0, 0); !errors.Is(err, state.ErrNotFound) {
			logStoredDef(t, st, "app", "jobs")
			t.Fatalf("claim from a dropped queue: %v", err)
		}
	})
}

func strconvToken(end time.Time) string {
	s := &Service{rand: func() uint64 { return 12345 }}
	return s.newToken(end.UnixMicro(), slot{Priority: 0, Due: 1})
}

// TestDelayAndWake: a delayed job is not claimable before it is due; a waiting claim gets it when
// it is; a claim waiting on an empty queue is woken by an enqueue.
func TestDelayAndWake(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		s := newService(t, st, fastConfig())
		if _, err := s.CreateQueue(ctx, Def{Namespace: "app", Name: "later", Shards: 2}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, _, err := s.Enqueue(ctx, "app", "later", NewJob{Delay: 300 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		if j, err := s.Claim(ctx, "app", "later", "w", 0, 0); err != nil || j != nil {
			t.Fatalf("claim before due: %+v %v", j, err)
		}
		j, err := s.Claim(ctx, "app", "later", "w", 0, 10*time.Second)
		if err != nil || j == nil {
			t.Fatalf("waiting claim: %+v %v", j, err)
		}
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Fatalf("claimed %s after enqueue, before the delay", took)
		}
		got := make(chan *Job, 1)
		go func() {
			j, err := s.Claim(ctx, "app", "later", "w", 0, 20*time.Second)
			if err != nil {
				t.Error(err)
			}
			got <- j
		}()
		if _, _, err := s.Enqueue(ctx, "app", "later", NewJob{ID: "woken"}); err != nil {
			t.Fatal(err)
		}
		if j := <-got; j == nil || j.ID != "woken" {
			t.Fatalf("woken claim: %+v", j)
		}
	})
}

// TestExactlyOnceUnderExpiry: workers claim concurrently; some abandon their claims, whose leases
// run out and the reaper returns the jobs; a checker over the completions finds every job
// completed exactly once, and the abandoned claims' completions refused.
func TestExactlyOnceUnderExpiry(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cfg := fastConfig()
		s := newService(t, st, cfg)
		reaped := make(chan struct{})
		go func() { defer close(reaped); _ = s.Run(ctx) }()
		defer func() { cancel(); <-reaped }()
		if _, err := s.CreateQueue(ctx, Def{Namespace: "app", Name: "work", Shards: 8, MaxAttempts: 100}); err != nil {
			t.Fatal(err)
		}
		const jobs, workers = 300, 8
		for i := range jobs {
			if _, _, err := s.Enqueue(ctx, "app", "work", NewJob{ID: fmt.Sprintf("job-%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		var mu sync.Mutex
		completed := map[string]int{}
		abandoned := 0
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					mu.Lock()
					done := len(completed) == jobs
					mu.Unlock()
					if done {
						return
					}
					j, err := s.Claim(ctx, "app", "work", fmt.Sprintf("w%d", w), 200*time.Millisecond, 500*time.Millisecond)
					if err != nil {
						t.Error(err)
						return
					}
					if j == nil {
						continue
					}
					if (n+w)%17 == 0 { // abandon: the lease runs out, the reaper returns the job
						mu.Lock()
						abandoned++
						mu.Unlock()
						continue
					}
					err = s.Complete(ctx, "app", "work", j.ID, j.Token)
					if errors.Is(err, ErrLeaseExpired) || errors.Is(err, ErrNotClaimant) {
						continue // slow: reaped meanwhile
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					completed[j.ID]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		for i := range jobs {
			if n := completed[fmt.Sprintf("job-%d", i)]; n != 1 {
				t.Errorf("job-%d completed %d times", i, n)
			}
		}
		if abandoned == 0 {
			t.Fatal("no claim was abandoned: the test did not exercise expiry")
		}
		if left, err := s.Peek(ctx, "app", "work", 10); err != nil || len(left) != 0 {
			t.Fatalf("jobs left: %+v %v", left, err)
		}
		t.Logf("%d jobs, %d claims abandoned", jobs, abandoned)
	})
}

// gatedStore holds a queue's first read (gate) or first ClaimAll (claimGate) until enough
// claims wait for its shard, and records the size of every ClaimAll.
type gatedStore struct {
	Store
	gate, claimGate func()
	once, claimOnce sync.Once
	mu              sync.Mutex
	sizes           []int
}

func (g *gatedStore) Ready(ctx context.Context, d Def, shard, priority int, from, to int64, limit int) ([]Job, error) {
	g.once.Do(g.gate)
	return g.Store.Ready(ctx, d, shard, priority, from, to, limit)
}

func (g *gatedStore) ClaimAll(ctx context.Context, d Def, shard int, from []slot, claims []*Job) (bool, []bool, error) {
	if g.claimGate != nil {
		g.claimOnce.Do(g.claimGate)
	}
	ok, exist, err := g.Store.ClaimAll(ctx, d, shard, from, claims)
	if ok {
		g.mu.Lock()
		g.sizes = append(g.sizes, len(claims))
		g.mu.Unlock()
	}
	return ok, exist, err
}

// TestSharedClaims: claims of one daemon that wait for a shard another of its claims is reading
// get a job each from that claim's conditional write; every job is claimed once, by one holder.
func TestSharedClaims(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		g := &gatedStore{Store: st}
		s := newService(t, g, fastConfig())
		d, err := s.CreateQueue(ctx, Def{Namespace: "app", Name: "shared", Shards: 1})
		if err != nil {
			t.Fatal(err)
		}
		const jobs, claimers = 12, 5
		enqueueN(t, s, "shared", jobs)
		g.claimGate = func() {}
		g.gate = untilWaiting(t, s.hintsOf(d), claimers-1)
		holder := claimConcurrently(t, s, "shared", claimers, func(int) {})
		if t.Failed() {
			return
		}
		g.mu.Lock()
		first := g.sizes[0]
		g.mu.Unlock()
		if first != claimers {
			t.Fatalf("the first conditional write claimed %d jobs, want %d (sizes %v)", first, claimers, g.sizes)
		}
		// Every job held by its claimer, in the store; the rest still ready.
		for id, w := range holder {
			got, err := s.jobByID(ctx, d, id)
			if err != nil || !got.claimed() || got.Holder != w {
				t.Fatalf("claimed row of %s: %+v %v, want holder %s", id, got, err, w)
			}
		}
		if left, err := s.Peek(ctx, "app", "shared", 100); err != nil || len(left) != jobs-claimers {
			t.Fatalf("ready after the claims: %d %v, want %d", len(left), err, jobs-claimers)
		}
	})
}

// TestGroupCommit: with max_claims claims in flight, the claims that arrive meanwhile wait for
// one of them, and when it ends the oldest claims for all of them in the next conditional write
// (one Paxos round for several claims), instead of each starting a round of its own on another
// shard.
func TestGroupCommit(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		g := &gatedStore{Store: st, gate: func() {}}
		cfg := fastConfig()
		cfg.MaxClaims = 1
		s := newService(t, g, cfg)
		d, err := s.CreateQueue(ctx, Def{Namespace: "app", Name: "group", Shards: 2})
		if err != nil {
			t.Fatal(err)
		}
		const jobs, claimers = 40, 5
		enqueueN(t, s, "group", jobs)
		inFlight := make(chan struct{})
		waiting := untilWaiting(t, s.hintsOf(d), claimers-1)
		g.claimGate = func() {
			close(inFlight)
			waiting()
		}
		// The first claim alone, then the others while its conditional write is in flight.
		holder := claimConcurrently(t, s, "group", claimers, func(w int) {
			if w == 1 {
				<-inFlight
			}
		})
		g.mu.Lock()
		sizes := slices.Clone(g.sizes)
		g.mu.Unlock()
		if !slices.Equal(sizes, []int{1, claimers - 1}) {
			t.Fatalf("conditional writes claimed %v jobs, want [1 %d]", sizes, claimers-1)
		}
		for id, w := range holder {
			got, err := s.jobByID(ctx, d, id)
			if err != nil || !got.claimed() || got.Holder != w {
				t.Fatalf("job %s of %s: %+v %v, want claimed", id, w, got, err)
			}
		}
	})
}

// A read that found a level empty does not mark it so when a notice for it came while the read
// ran: the notice's job may have been written after the read looked.
func TestNoticeDuringEmptyRead(t *testing.T) {
	s := newService(t, embeddedStore(t), fastConfig())
	h := s.hintsOf(Def{Namespace: "app", Name: "q", Shards: 2, Priorities: 1})
	gen := h.generation(1, 0)
	h.notice(Notice{Namespace: "app", Name: "q", Shard: 1, Priority: 0, Due: 5}, 10)
	h.markEmpty(1, 0, gen, 100)
	if h.isEmpty(1, 0) {
		t.Fatal("level marked empty although a notice came during the read")
	}
	if f := h.floor(1, 0, s.now()); f != 0 {
		t.Fatalf("floor %d after the notice of a job due at 5, want 0", f)
	}
	gen = h.generation(1, 0)
	h.markEmpty(1, 0, gen, 100)
	if !h.isEmpty(1, 0) || h.floor(1, 0, s.now()) != 100 {
		t.Fatalf("a read with no notice meanwhile: empty %v floor %d, want true 100", h.isEmpty(1, 0), h.floor(1, 0, s.now()))
	}
}

// claimConcurrently runs n claims of queue app.<queue> at once, by workers w0..w<n-1>, and
// checks that each got a job held by itself and no job went to two; it returns the holder of
// each job claimed. before(w) runs before worker w starts.
func claimConcurrently(t *testing.T, s *Service, queue string, n int, before func(w int)) map[string]string {
	t.Helper()
	var mu sync.Mutex
	holder := map[string]string{}
	var wg sync.WaitGroup
	for w := range n {
		before(w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			j, err := s.Claim(context.Background(), "app", queue, fmt.Sprintf("w%d", w), time.Minute, 0)
			if err != nil || j == nil {
				t.Errorf("claim by w%d: %+v %v", w, j, err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if prev, dup := holder[j.ID]; dup {
				t.Errorf("job %s claimed by %s and w%d", j.ID, prev, w)
			}
			holder[j.ID] = j.Holder
			if j.Holder != fmt.Sprintf("w%d", w) {
				t.Errorf("w%d got a job held by %s", w, j.Holder)
			}
		}()
	}
	wg.Wait()
	return holder
}

// enqueueN enqueues n jobs into app.<queue>.
func enqueueN(t *testing.T, s *Service, queue string, n int) {
	t.Helper()
	for i := range n {
		if _, _, err := s.Enqueue(context.Background(), "app", queue, NewJob{Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
}

// untilWaiting returns a store gate that holds its caller until n claims wait for claims in
// flight (over all shards), or fails the test after 10s. It runs in a claim's goroutine, so it
// reports with t.Errorf and returns.
func untilWaiting(t *testing.T, h *hints, n int) func() {
	return func() {
		got := 0
		if !testenv.Poll(10*time.Second, func() bool {
			h.mu.Lock()
			defer h.mu.Unlock()
			got = 0
			for _, ws := range h.mu.waiters {
				got += len(ws)
			}
			return got == n
		}) {
			t.Errorf("%d claims wait for the claims in flight, want %d", got, n)
		}
	}
}

// logStoredDef logs what Cassandra holds of a queue's definition, by a plain and by a SERIAL
// read, with the cell's write time: the evidence for a definition seen after its drop (once in
// CI on a freshly booted machine, not reproduced since).
func logStoredDef(t *testing.T, st Store, namespace, name string) {
	cs, ok := st.(*CassandraStore)
	if !ok {
		return
	}
	for _, cl := range []gocql.Consistency{gocql.Quorum, gocql.Serial} {
		var def string
		var wt int64
		err := cs.s.Query(`SELECT definition, writetime(definition) FROM `+cs.ks+`.queue_defs WHERE namespace = ? AND name = ?`,
			namespace, name).Consistency(cl).Scan(&def, &wt)
		t.Logf("%s read of %s.%s: %q written at %d (now %d): %v", cl, namespace, name, def, wt, time.Now().UnixMicro(), err)
	}
}
