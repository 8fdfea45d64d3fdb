package queue

import (
	"context"
	"errors"
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
			if _, err := st.Insert(ctx, d2, Job{Shard: 1, ID: "x", Due: 1}, false); err != nil {
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
				if _, err := st.Insert(ctx, d, j, false); err != nil {
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
			if dup, err := st.Insert(ctx, d, j, true); err != nil || dup {
				t.Fatalf("first insert: dup=%v %v", dup, err)
			}
			j.Payload, j.Due = []byte("second"), 2
			if dup, err := st.Insert(ctx, d, j, true); err != nil || !dup {
				t.Fatalf("second insert: dup=%v %v, want dup", dup, err)
			}
			jobs, _ := st.Ready(ctx, d, 0, 0, 0, 100, 10)
			if len(jobs) != 1 || string(jobs[0].Payload) != "first" {
				t.Fatalf("after a duplicate: %+v", jobs)
			}
			// The id is remembered for the dedup window (1s here), then forgotten.
			testenv.WaitFor(t, 10*time.Second, "the dedup id to expire", func() bool {
				dup, err := st.Insert(ctx, d, Job{Shard: 0, ID: "once", Due: 3}, true)
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
			if _, err := st.Insert(ctx, d, ready, false); err != nil {
				t.Fatal(err)
			}
			rs := slot{Kind: kindReady, Priority: 2, Due: 7, ID: "j"}
			claimed := ready
			claimed.slot = slot{Kind: kindClaimed, ID: "j"}
			claimed.Token, claimed.LeaseUntil, claimed.Holder, claimed.Attempts = "t42", 1000, "w1", 1
			ok, cur, err := st.Move(ctx, d, 1, rs, cond{}, &claimed)
			if err != nil || !ok || cur != nil {
				t.Fatalf("claim: %v %+v %v", ok, cur, err)
			}
			other := claimed
			other.Token = "t43"
			if ok, cur, err := st.Move(ctx, d, 1, rs, cond{}, &other); err != nil || ok || cur != nil {
				t.Fatalf("second claim: %v %+v %v, want not applied and no row", ok, cur, err)
			}
			got, err := st.Get(ctx, d, 1, claimed.slot)
			if err != nil || got == nil || got.Token != "t42" || got.Holder != "w1" || got.LeaseUntil != 1000 || got.Attempts != 1 ||
				string(got.Payload) != "pl" || got.Priority != 2 || got.Due != 7 {
				t.Fatalf("claimed row: %+v %v", got, err)
			}
			if jobs, _ := st.Ready(ctx, d, 1, 2, 0, 100, 10); len(jobs) != 0 {
				t.Fatalf("the ready row is still there: %+v", jobs)
			}
			rows, err := st.Rows(ctx, d, 1, kindClaimed, "", 10)
			if err != nil || len(rows) != 1 || rows[0].Token != "t42" {
				t.Fatalf("claimed rows: %+v %v", rows, err)
			}
			// A wrong token: not applied, with the row's token.
			ok, cur, err = st.Move(ctx, d, 1, claimed.slot, cond{token: "t7"}, nil)
			if err != nil || ok || cur == nil || cur.Token != "t42" {
				t.Fatalf("wrong token: %v %+v %v", ok, cur, err)
			}
			// Extend in place: a new token and lease, the rest as it was.
			ext := &Job{slot: claimed.slot, ID: "j", Token: "t44", LeaseUntil: 5000}
			if ok, _, err := st.Move(ctx, d, 1, claimed.slot, cond{token: "t42"}, ext); err != nil || !ok {
				t.Fatalf("extend: %v %v", ok, err)
			}
			if got, _ := st.Get(ctx, d, 1, claimed.slot); got == nil || got.LeaseUntil != 5000 || got.Token != "t44" ||
				string(got.Payload) != "pl" || got.Holder != "w1" || got.Attempts != 1 {
				t.Fatalf("after extend: %+v", got)
			}
			if ok, _, err := st.Move(ctx, d, 1, claimed.slot, cond{token: "t42"}, nil); err != nil || ok {
				t.Fatalf("the old token after extend: %v %v, want not applied", ok, err)
			}
			// Complete: the claimed row goes, a done row (expiring) comes.
			done := &Job{slot: slot{Kind: kindDone, ID: "j"}, ID: "j", Token: "t44"}
			if ok, _, err := st.Move(ctx, d, 1, claimed.slot, cond{token: "t44"}, done); err != nil || !ok {
				t.Fatalf("complete: %v %v", ok, err)
			}
			if got, _ := st.Get(ctx, d, 1, claimed.slot); got != nil {
				t.Fatalf("claimed row after complete: %+v", got)
			}
			if got, _ := st.Get(ctx, d, 1, done.slot); got == nil || got.Token != "t44" {
				t.Fatalf("done row: %+v", got)
			}
			if ok, cur, err := st.Move(ctx, d, 1, claimed.slot, cond{token: "t44"}, nil); err != nil || ok || cur != nil {
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
		t.Run("rows paging", func(t *testing.T) {
			d := testDef("paging")
			if _, err := st.CreateQueue(ctx, d); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"d1", "d2", "d3"} {
				if _, err := st.Insert(ctx, d, Job{Shard: 0, ID: id, Due: 1}, false); err != nil {
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
