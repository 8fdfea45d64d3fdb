package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/state"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// cassandraSession opens a session on the dev Cassandra with a keyspace of its own, dropped at
// the end.
func cassandraSession(tb testing.TB) (*gocql.Session, string) {
	tb.Helper()
	cl := gocql.NewCluster(testenv.Cassandra(tb))
	cl.ProtoVersion = 3
	cl.Timeout = 10 * time.Second
	cl.ConnectTimeout = 10 * time.Second
	cl.NumConns = 2
	s, err := cl.CreateSession()
	if err != nil {
		tb.Fatal(err)
	}
	ks := testenv.UniqueName("musicd_queue_")
	if err := s.Query(`CREATE KEYSPACE ` + ks + ` WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`).Exec(); err != nil {
		s.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = s.Query(`DROP KEYSPACE ` + ks).Exec()
		s.Close()
	})
	return s, ks
}

func cassandraStore(tb testing.TB) Store {
	s, ks := cassandraSession(tb)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := NewCassandraStore(ctx, s, CassandraConfig{Keyspace: ks})
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

func embeddedStore(tb testing.TB) Store {
	st, err := OpenEmbeddedStore(tb.TempDir(), time.Now, discard())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = st.Close() })
	return st
}

// forEachStore runs f against both implementations.
func forEachStore(t *testing.T, f func(t *testing.T, st Store)) {
	t.Run("embedded", func(t *testing.T) { f(t, embeddedStore(t)) })
	t.Run("cassandra", func(t *testing.T) { f(t, cassandraStore(t)) })
}

func testDef(name string) Def {
	d := Def{Namespace: "app", Name: name, Priorities: 3, Shards: 4, Created: time.Now().UnixMicro()}.WithDefaults()
	d.DedupWindow = Duration(time.Second)
	return d
}

// TestStoreConformance is the one suite every Store passes.
func TestStoreConformance(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		t.Run("definitions", func(t *testing.T) {
			d := testDef("defs")
			if _, err := st.Queue(ctx, "app", "defs"); !errors.Is(err, state.ErrNotFound) {
				t.Fatalf("Queue before create: %v, want ErrNotFound", err)
			}
			if _, err := st.CreateQueue(ctx, d); err != nil {
				t.Fatal(err)
			}
			other := d
			other.Shards, other.Created = 8, d.Created+1
			cur, err := st.CreateQueue(ctx, other)
			if !errors.Is(err, state.ErrExists) || cur != d {
				t.Fatalf("second create: %v %+v, want ErrExists with the first definition", err, cur)
			}
			got, err := st.Queue(ctx, "app", "defs")
			if err != nil || got != d {
				t.Fatalf("Queue: %+v %v, want %+v", got, err, d)
			}
			d2 := testDef("defs2")
			if _, err := st.CreateQueue(ctx, d2); err != nil {
				t.Fatal(err)
			}
			list, err := st.Queues(ctx, "app")
			if err != nil || len(list) != 2 || list[0].Name != "defs" || list[1].Name != "defs2" {
				t.Fatalf("Queues: %+v %v", list, err)
			}
			all, err := st.Queues(ctx, "")
			if err != nil || len(all) < 2 {
				t.Fatalf("Queues(\"\"): %+v %v", all, err)
			}
			if _, err := st.Insert(ctx, d2, Job{Shard: 1, ID: "x", Due: 1}, insertNew); err != nil {
				t.Fatal(err)
			}
			if err := st.DropQueue(ctx, "app", "defs2"); err != nil {
				t.Fatal(err)
			}
			if err := st.DropQueue(ctx, "app", "defs2"); !errors.Is(err, state.ErrNotFound) {
				t.Fatalf("second drop: %v, want ErrNotFound", err)
			}
			if jobs, err := st.Ready(ctx, d2, 1, 0, 0, 10, 10); err != nil || len(jobs) != 0 {
				t.Fatalf("rows of a dropped queue: %+v %v", jobs, err)
			}
		})
		t.Run("ready order and bounds", func(t *testing.T) {
			d := testDef("order")
			if _, err := st.CreateQueue(ctx, d); err != nil {
				t.Fatal(err)
			}
			for _, j := range []Job{
				{ID: "c", Priority: 1, Due: 30}, {ID: "a", Priority: 1, Due: 10}, {ID: "b", Priority: 1, Due: 20},
				{ID: "b2", Priority: 1, Due: 20}, {ID: "hi", Priority: 2, Due: 50}, {ID: "lo", Priority: 0, Due: 5},
			} {
				j.Shard, j.Enqueued, j.Payload = 2, j.Due, []byte("p-"+j.ID)
				if _, err := st.Insert(ctx, d, j, insertNew); err != nil {
					t.Fatal(err)
				}
			}
			ids := func(jobs []Job) (out []string) {
				for _, j := range jobs {
					out = append(out, j.ID)
				}
				return out
			}
			jobs, err := st.Ready(ctx, d, 2, 1, 0, 100, 10)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(jobs); !equal(got, []string{"a", "b", "b2", "c"}) {
				t.Fatalf("priority 1: %v", got)
			}
			if j := jobs[0]; string(j.Payload) != "p-a" || j.Priority != 1 || j.Due != 10 || j.Enqueued != 10 || j.Shard != 2 {
				t.Fatalf("job as read: %+v", j)
			}
			jobs, _ = st.Ready(ctx, d, 2, 1, 15, 20, 10)
			if got := ids(jobs); !equal(got, []string{"b", "b2"}) {
				t.Fatalf("priority 1, due 15-20: %v", got)
			}
			jobs, _ = st.Ready(ctx, d, 2, 1, 0, 100, 2)
			if got := ids(jobs); !equal(got, []string{"a", "b"}) {
				t.Fatalf("limit 2: %v", got)
			}
			jobs, _ = st.Ready(ctx, d, 2, 2, 0, 100, 10)
			if got := ids(jobs); !equal(got, []string{"hi"}) {
				t.Fatalf("priority 2: %v", got)
			}
			jobs, _ = st.Ready(ctx, d, 3, 1, 0, 100, 10)
			if len(jobs) != 0 {
				t.Fatalf("another shard: %v", ids(jobs))
			}
		})
		t.Run("dedup", func(t *testing.T) {
			d := testDef("dedup")
			if _, err := st.CreateQueue(ctx, d); err != nil {
				t.Fatal(err)
			}
			j := Job{Shard: 0, ID: "once", Due: 1, Payload: []byte("first")}
			if dup, err := st.Insert(ctx, d, j, insertDedup); err != nil || dup {
				t.Fatalf("first insert: dup=%v %v", dup, err)
			}
			j.Payload, j.Due = []byte("second"), 2
			if dup, err := st.Insert(ctx, d, j, insertDedup); err != nil || !dup {
				t.Fatalf("second insert: dup=%v %v, want dup", dup, err)
			}
			jobs, _ := st.Ready(ctx, d, 0, 0, 0, 100, 10)
			if len(jobs) != 1 || string(jobs[0].Payload) != "first" {
				t.Fatalf("after a duplicate: %+v", jobs)
			}
			// A live job holds its id beyond the dedup window: remove the job first.
			if ok, _, err := st.Move(ctx, d, 0, jobs[0].slot, cond{}); err != nil || !ok {
				t.Fatalf("remove the job: %v %v", ok, err)
			}
			// The id is remembered for the dedup window (1s here), then forgotten.
			testenv.WaitFor(t, 10*time.Second, "the dedup id to expire", func() bool {
				dup, err := st.Insert(ctx, d, Job{Shard: 0, ID: "once", Due: 3}, insertDedup)
				if err != nil {
					t.Fatal(err)
				}
				return !dup
			})
		})
		t.Run("moves", func(t *testing.T) {
			d := testDef("moves")
			if _, err := st.CreateQueue(ctx, d); err != nil {
				t.Fatal(err)
			}
			ready := Job{Shard: 1, ID: "j", Priority: 2, Due: 7, Payload: []byte("pl")}
			if _, err := st.Insert(ctx, d, ready, insertNew); err != nil {
				t.Fatal(err)
			}
			rs := slot{Kind: kindReady, Priority: 2, Due: 7, ID: "j"}
			claimed := &Job{Shard: 1, slot: rs, ID: "j", Token: "t42", LeaseUntil: 1000, Holder: "w1", Attempts: 1}
			if ok, exist, err := st.ClaimAll(ctx, d, 1, []slot{rs}, []*Job{claimed}); err != nil || !ok {
				t.Fatalf("claim: %v %v %v", ok, exist, err)
			}
			other := *claimed
			other.Token = "t43"
			if ok, exist, err := st.ClaimAll(ctx, d, 1, []slot{rs}, []*Job{&other}); err != nil || ok || len(exist) != 1 || exist[0] {
				t.Fatalf("second claim: %v %v %v, want not applied, exist [false]", ok, exist, err)
			}
			got, err := st.Get(ctx, d, 1, rs)
			if err != nil || got == nil || got.Token != "t42" || got.Holder != "w1" || got.LeaseUntil != 1000 || got.Attempts != 1 ||
				string(got.Payload) != "pl" || got.Priority != 2 || got.Due != 7 {
				t.Fatalf("claimed row: %+v %v", got, err)
			}
			if jobs, _ := st.Ready(ctx, d, 1, 2, 0, 100, 10); len(jobs) != 0 {
				t.Fatalf("a claimed job is read as ready: %+v", jobs)
			}
			leases := func(before int64) []string {
				t.Helper()
				ls, err := st.Leases(ctx, d, 1, before, 10)
				if err != nil {
					t.Fatal(err)
				}
				var out []string
				for _, l := range ls {
					if l.slot != rs {
						t.Fatalf("lease of %s names %+v, want %+v", l.ID, l.slot, rs)
					}
					out = append(out, fmt.Sprintf("%s/%s/%d", l.ID, l.Token, l.LeaseUntil))
				}
				return out
			}
			if got, want := leases(1001), []string{"j/t42/1000"}; !equal(got, want) {
				t.Fatalf("leases ended before 1001: %v, want %v", got, want)
			}
			if got := leases(1000); len(got) != 0 {
				t.Fatalf("leases ended before 1000: %v, want none", got)
			}
			// A wrong token, or none: not applied, with the row's token.
			for _, c := range []cond{{token: "t7", leaseUntil: 1000}, {}} {
				ok, cur, err := st.Move(ctx, d, 1, rs, c, nil)
				if err != nil || ok || cur == nil || cur.Token != "t42" {
					t.Fatalf("change with token %q: %v %+v %v, want not applied, token t42", c.token, ok, cur, err)
				}
			}
			// Extend in place: a new token and lease, the rest as it was; the lease row follows.
			ext := &Job{slot: rs, ID: "j", Token: "t44", LeaseUntil: 5000}
			if ok, _, err := st.Move(ctx, d, 1, rs, cond{token: "t42", leaseUntil: 1000}, ext); err != nil || !ok {
				t.Fatalf("extend: %v %v", ok, err)
			}
			if got, _ := st.Get(ctx, d, 1, rs); got == nil || got.LeaseUntil != 5000 || got.Token != "t44" ||
				string(got.Payload) != "pl" || got.Holder != "w1" || got.Attempts != 1 {
				t.Fatalf("after extend: %+v", got)
			}
			if got, want := leases(10000), []string{"j/t44/5000"}; !equal(got, want) {
				t.Fatalf("leases after extend: %v, want %v", got, want)
			}
			if ok, _, err := st.Move(ctx, d, 1, rs, cond{token: "t42", leaseUntil: 1000}, nil); err != nil || ok {
				t.Fatalf("the old token after extend: %v %v, want not applied", ok, err)
			}
			// Complete: the claimed row goes, a done row (expiring) comes.
			done := &Job{slot: slot{Kind: kindDone, ID: "j"}, ID: "j", Token: "t44"}
			if ok, _, err := st.Move(ctx, d, 1, rs, cond{token: "t44", leaseUntil: 5000}, done); err != nil || !ok {
				t.Fatalf("complete: %v %v", ok, err)
			}
			if got, _ := st.Get(ctx, d, 1, rs); got != nil {
				t.Fatalf("claimed row after complete: %+v", got)
			}
			if got, _ := st.Get(ctx, d, 1, done.slot); got == nil || got.Token != "t44" {
				t.Fatalf("done row: %+v", got)
			}
			if got := leases(10000); len(got) != 0 {
				t.Fatalf("leases after complete: %v, want none", got)
			}
			if ok, cur, err := st.Move(ctx, d, 1, rs, cond{token: "t44", leaseUntil: 5000}, nil); err != nil || ok || cur != nil {
				t.Fatalf("complete again: %v %+v %v, want not applied, no row", ok, cur, err)
			}
			testenv.WaitFor(t, 10*time.Second, "the done row to expire", func() bool {
				got, err := st.Get(ctx, d, 1, done.slot)
				if err != nil {
					t.Fatal(err)
				}
				return got == nil
			})
		})
		t.Run("claim all", func(t *testing.T) {
			d := testDef("claimall")
			if _, err := st.CreateQueue(ctx, d); err != nil {
				t.Fatal(err)
			}
			var from []slot
			for i, id := range []string{"a", "b", "c"} {
				j := Job{Shard: 2, ID: id, Priority: 1, Due: int64(10 + i), Enqueued: 3, Payload: []byte("p" + id)}
				if _, err := st.Insert(ctx, d, j, insertNew); err != nil {
					t.Fatal(err)
				}
				from = append(from, slot{Kind: kindReady, Priority: 1, Due: j.Due, ID: id})
			}
			claim := func(f slot, token string) *Job {
				return &Job{Shard: 2, slot: f, ID: f.ID, Attempts: 1, Holder: "w" + token, Token: token, LeaseUntil: 99}
			}
			ok, exist, err := st.ClaimAll(ctx, d, 2, from[:2], []*Job{claim(from[0], "ta"), claim(from[1], "tb")})
			if err != nil || !ok || exist != nil {
				t.Fatalf("claim a and b: %v %v %v", ok, exist, err)
			}
			for _, f := range from[:2] {
				got, err := st.Get(ctx, d, 2, f)
				if err != nil || got == nil || got.Token != "t"+f.ID || got.Holder != "wt"+f.ID || string(got.Payload) != "p"+f.ID ||
					got.Due != f.Due || got.Enqueued != 3 || got.Attempts != 1 || got.LeaseUntil != 99 {
					t.Fatalf("claimed row of %s: %+v %v", f.ID, got, err)
				}
				if s, err := locate(ctx, st, d, 2, f.ID); err != nil || s == nil || *s != f {
					t.Fatalf("index of claimed %s: %+v %v", f.ID, s, err)
				}
			}
			// b is gone: nothing changes, and c is reported as still there.
			ok, exist, err = st.ClaimAll(ctx, d, 2, []slot{from[1], from[2]}, []*Job{claim(from[1], "tb2"), claim(from[2], "tc")})
			if err != nil || ok || len(exist) != 2 || exist[0] || !exist[1] {
				t.Fatalf("claim b again and c: %v %v %v, want not applied, exist [false true]", ok, exist, err)
			}
			if got, _ := st.Get(ctx, d, 2, from[1]); got == nil || got.Token != "tb" {
				t.Fatalf("b's claim changed: %+v", got)
			}
			if jobs, err := st.Ready(ctx, d, 2, 1, 0, 100, 10); err != nil || len(jobs) != 1 || jobs[0].ID != "c" {
				t.Fatalf("ready rows: %+v %v, want c only", jobs, err)
			}
			if got, _ := st.Get(ctx, d, 2, from[2]); got == nil || got.claimed() {
				t.Fatalf("c claimed by a batch that failed: %+v", got)
			}
			if ls, err := st.Leases(ctx, d, 2, 100, 10); err != nil || len(ls) != 2 {
				t.Fatalf("leases: %+v %v, want a's and b's", ls, err)
			}
			// A row that is gone is reported as such.
			if ok, _, err := st.Move(ctx, d, 2, from[2], cond{}); err != nil || !ok {
				t.Fatalf("delete c: %v %v", ok, err)
			}
			if ok, exist, err := st.ClaimAll(ctx, d, 2, from[2:], []*Job{claim(from[2], "tc")}); err != nil || ok || len(exist) != 1 || exist[0] {
				t.Fatalf("claim of a deleted job: %v %v %v, want not applied, exist [false]", ok, exist, err)
			}
			if _, _, err := st.ClaimAll(ctx, d, 2, from[:1], nil); err == nil {
				t.Fatal("ClaimAll with mismatched lengths: no error")
			}
		})
		t.Run("ready past claims", func(t *testing.T) {
			d := testDef("pastclaims")
			if _, err := st.CreateQueue(ctx, d); err != nil {
				t.Fatal(err)
			}
			var from []slot
			for i := range 7 {
				j := Job{Shard: 0, ID: fmt.Sprintf("j%d", i), Due: int64(10 + i)}
				if _, err := st.Insert(ctx, d, j, insertNew); err != nil {
					t.Fatal(err)
				}
				from = append(from, slot{Kind: kindReady, Due: j.Due, ID: j.ID})
			}
			var claims []*Job
			for _, f := range from[:5] {
				claims = append(claims, &Job{slot: f, ID: f.ID, Token: "t" + f.ID, LeaseUntil: 99})
			}
			if ok, _, err := st.ClaimAll(ctx, d, 0, from[:5], claims); err != nil || !ok {
				t.Fatalf("claim 5: %v %v", ok, err)
			}
			// More claimed rows at the front than the limit: the read goes past them.
			jobs, err := st.Ready(ctx, d, 0, 0, 0, 100, 2)
			if err != nil || len(jobs) != 2 || jobs[0].ID != "j5" || jobs[1].ID != "j6" {
				t.Fatalf("ready behind 5 claims, limit 2: %+v %v, want j5 j6", jobs, err)
			}
			if jobs, err := st.Ready(ctx, d, 0, 0, 0, 100, 1); err != nil || len(jobs) != 1 || jobs[0].ID != "j5" {
				t.Fatalf("limit 1: %+v %v, want j5", jobs, err)
			}
		})
		t.Run("index", func(t *testing.T) {
			d := testDef("index")
			if _, err := st.CreateQueue(ctx, d); err != nil {
				t.Fatal(err)
			}
			where := func(id string) *slot {
				t.Helper()
				s, err := locate(ctx, st, d, 1, id)
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			if s := where("a"); s != nil {
				t.Fatalf("index of no job: %+v", s)
			}
			if dup, err := st.Insert(ctx, d, Job{Shard: 1, ID: "a", Priority: 1, Due: 5, Payload: []byte("pa")}, insertNew); err != nil || dup {
				t.Fatalf("insert a: %v %v", dup, err)
			}
			rs := slot{Kind: kindReady, Priority: 1, Due: 5, ID: "a"}
			if s := where("a"); s == nil || *s != rs {
				t.Fatalf("index of a ready job: %+v, want %+v", s, rs)
			}
			// Unique and dedup inserts of a live job's id change nothing.
			for _, m := range []insertMode{insertUnique, insertDedup} {
				if dup, err := st.Insert(ctx, d, Job{Shard: 1, ID: "a", Priority: 2, Due: 6, Payload: []byte("again")}, m); err != nil || !dup {
					t.Fatalf("insert (mode %d) of a live id: dup=%v %v, want dup", m, dup, err)
				}
			}
			if jobs, _ := st.Ready(ctx, d, 1, 2, 0, 100, 10); len(jobs) != 0 {
				t.Fatalf("a duplicate was inserted: %+v", jobs)
			}
			// Claim in place: the index stays.
			claimed := Job{Shard: 1, slot: rs, ID: "a", Token: "t1", LeaseUntil: 99, Attempts: 1}
			if ok, _, err := st.ClaimAll(ctx, d, 1, []slot{rs}, []*Job{&claimed}); err != nil || !ok {
				t.Fatalf("claim: %v %v", ok, err)
			}
			if s := where("a"); s == nil || *s != rs {
				t.Fatalf("index of a claimed job: %+v", s)
			}
			// Extend in place: the index stays.
			if ok, _, err := st.Move(ctx, d, 1, rs, cond{token: "t1", leaseUntil: 99}, &Job{slot: rs, ID: "a", Token: "t2", LeaseUntil: 200}); err != nil || !ok {
				t.Fatalf("extend: %v %v", ok, err)
			}
			if s := where("a"); s == nil || *s != rs {
				t.Fatalf("index after extend: %+v", s)
			}
			// Release to another priority: the index follows, the lease row goes.
			back := Job{Shard: 1, slot: slot{Kind: kindReady, Priority: 2, Due: 8, ID: "a"}, ID: "a", Priority: 2, Due: 8, Payload: []byte("pa")}
			if ok, _, err := st.Move(ctx, d, 1, rs, cond{token: "t2", leaseUntil: 200}, &back); err != nil || !ok {
				t.Fatalf("release: %v %v", ok, err)
			}
			if s := where("a"); s == nil || *s != back.slot {
				t.Fatalf("index after release: %+v", s)
			}
			if ls, err := st.Leases(ctx, d, 1, 1000, 10); err != nil || len(ls) != 0 {
				t.Fatalf("leases after release: %+v %v, want none", ls, err)
			}
			// In place, a Payload replaces payload and priority; the claim fields are as given.
			upd := &Job{slot: back.slot, ID: "a", Payload: []byte("new"), Priority: 2}
			if ok, _, err := st.Move(ctx, d, 1, back.slot, cond{}, upd); err != nil || !ok {
				t.Fatalf("update in place: %v %v", ok, err)
			}
			if got, _ := st.Get(ctx, d, 1, back.slot); got == nil || string(got.Payload) != "new" || got.Priority != 2 || got.Due != 8 || got.Token != "" {
				t.Fatalf("after the update in place: %+v", got)
			}
			if s := where("a"); s == nil || *s != back.slot {
				t.Fatalf("index after the update in place: %+v", s)
			}
			// Dead-letter, then delete: the index goes with the job, and the id is free again.
			dead := Job{Shard: 1, slot: slot{Kind: kindDead, ID: "a"}, ID: "a", Priority: 2, Payload: []byte("new"), Died: 9}
			if ok, _, err := st.Move(ctx, d, 1, back.slot, cond{}, &dead); err != nil || !ok {
				t.Fatalf("dead-letter: %v %v", ok, err)
			}
			if s := where("a"); s == nil || *s != dead.slot {
				t.Fatalf("index of a dead job: %+v", s)
			}
			if ok, _, err := st.Move(ctx, d, 1, dead.slot, cond{}); err != nil || !ok {
				t.Fatalf("delete: %v %v", ok, err)
			}
			if s := where("a"); s != nil {
				t.Fatalf("index of a deleted job: %+v", s)
			}
			if dup, err := st.Insert(ctx, d, Job{Shard: 1, ID: "a", Due: 10}, insertUnique); err != nil || dup {
				t.Fatalf("unique insert of a deleted job's id: dup=%v %v", dup, err)
			}
			// Complete: the done row is not a job; the index goes.
			r2 := slot{Kind: kindReady, Due: 10, ID: "a"}
			c2 := Job{Shard: 1, slot: r2, ID: "a", Token: "t3", LeaseUntil: 99}
			if ok, _, err := st.ClaimAll(ctx, d, 1, []slot{r2}, []*Job{&c2}); err != nil || !ok {
				t.Fatalf("claim again: %v %v", ok, err)
			}
			if ok, _, err := st.Move(ctx, d, 1, r2, cond{token: "t3", leaseUntil: 99}, &Job{slot: slot{Kind: kindDone, ID: "a"}, ID: "a", Token: "t3"}); err != nil || !ok {
				t.Fatalf("complete: %v %v", ok, err)
			}
			if s := where("a"); s != nil {
				t.Fatalf("index of a completed job: %+v", s)
			}
			// Scan: jobs only (no index, dedup, done or lease rows), ready and claimed by
			// priority then due, then dead by id; bounded.
			for _, j := range []Job{{ID: "s1", Priority: 0, Due: 1}, {ID: "s2", Priority: 2, Due: 3}, {ID: "s3", Priority: 2, Due: 2}} {
				j.Shard = 1
				if _, err := st.Insert(ctx, d, j, insertDedup); err != nil {
					t.Fatal(err)
				}
			}
			s1 := slot{Kind: kindReady, Due: 1, ID: "s1"}
			if ok, _, err := st.ClaimAll(ctx, d, 1, []slot{s1}, []*Job{{Shard: 1, slot: s1, ID: "s1", Token: "t4", LeaseUntil: 99}}); err != nil || !ok {
				t.Fatalf("claim s1: %v %v", ok, err)
			}
			all, err := st.Scan(ctx, d, 1, 10)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, j := range all {
				state := map[kind]string{kindReady: "ready", kindDead: "dead"}[j.slot.Kind]
				if j.claimed() {
					state = "claimed"
				}
				got = append(got, j.ID+"/"+state)
			}
			if want := []string{"s3/ready", "s2/ready", "s1/claimed"}; !equal(got, want) {
				t.Fatalf("scan: %v, want %v", got, want)
			}
			if some, _ := st.Scan(ctx, d, 1, 2); len(some) != 2 {
				t.Fatalf("scan with limit 2: %d jobs", len(some))
			}
			if none, _ := st.Scan(ctx, d, 0, 10); len(none) != 0 {
				t.Fatalf("scan of an empty shard: %+v", none)
			}
		})
		t.Run("rows paging", func(t *testing.T) {
			d := testDef("paging")
			if _, err := st.CreateQueue(ctx, d); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"d1", "d2", "d3"} {
				if _, err := st.Insert(ctx, d, Job{Shard: 0, ID: id, Due: 1}, insertNew); err != nil {
					t.Fatal(err)
				}
				dead := &Job{slot: slot{Kind: kindDead, ID: id}, ID: id, Died: 9, Error: "boom"}
				if ok, _, err := st.Move(ctx, d, 0, slot{Kind: kindReady, Due: 1, ID: id}, cond{}, dead); err != nil || !ok {
					t.Fatalf("dead-letter %s: %v %v", id, ok, err)
				}
			}
			rows, err := st.Rows(ctx, d, 0, kindDead, "", 2)
			if err != nil || len(rows) != 2 || rows[0].ID != "d1" || rows[1].ID != "d2" || rows[0].Error != "boom" || rows[0].Died != 9 {
				t.Fatalf("first page: %+v %v", rows, err)
			}
			rows, err = st.Rows(ctx, d, 0, kindDead, "d2", 2)
			if err != nil || len(rows) != 1 || rows[0].ID != "d3" {
				t.Fatalf("second page: %+v %v", rows, err)
			}
		})
	})
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestTTLSeconds: a Cassandra TTL counts from the current whole second, so the TTL of an expiring
// row must exceed the window by a second, after rounding the window up.
func TestTTLSeconds(t *testing.T) {
	for _, c := range []struct {
		w    time.Duration
		want int
	}{{time.Second, 2}, {1500 * time.Millisecond, 3}, {2 * time.Second, 3}, {24 * time.Hour, 86401}} {
		if got := ttlSeconds(c.w); got != c.want {
			t.Errorf("ttlSeconds(%s) = %d, want %d", c.w, got, c.want)
		}
	}
}
