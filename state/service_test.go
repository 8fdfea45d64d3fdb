package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

// setupTable creates keyspace ks and table kv (id bigint key, v text, n int) through s.
func setupTable(t *testing.T, s *Service, ks string) Table {
	t.Helper()
	ctx := context.Background()
	if err := s.CreateKeyspace(ctx, Keyspace{Name: ks}); err != nil {
		t.Fatalf("CreateKeyspace: %v", err)
	}
	tbl := Table{Keyspace: ks, Name: "kv", Columns: []Column{{"id", Bigint}, {"v", Text}, {"n", Int}}, PartitionKey: []string{"id"}}
	if err := s.CreateTable(ctx, tbl); err != nil {
		t.Fatalf("CreateTable: %v", err)
	}
	return tbl
}

func key(id int64) journal.Row { return journal.Row{{Name: "id", Value: journal.Int(id)}} }

func vals(v string) journal.Row { return journal.Row{{Name: "v", Value: journal.String(v)}} }

// valueOf returns column name's value in row r.
func valueOf(r StoredRow, name string) journal.Value {
	for _, f := range r.Values {
		if f.Name == name {
			return f.Value
		}
	}
	return journal.Value{}
}

func mustWrite(t *testing.T, s *Service, req WriteRequest) WriteResult {
	t.Helper()
	if req.Table == "" {
		req.Table = "kv"
	}
	res, err := s.Write(context.Background(), req)
	if err != nil {
		t.Fatalf("Write %+v: %v", req, err)
	}
	return res
}

func read(s *Service, ks string, id int64, c Consistency, ref LockRef) (StoredRow, error) {
	return s.Read(context.Background(), ReadRequest{Keyspace: ks, Table: "kv", Key: key(id), Consistency: c, Lock: ref})
}

func TestStateSchema(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		ks := c.ks
		s := c.daemon(0)
		ctx := context.Background()
		setupTable(t, s, ks)
		if err := s.CreateKeyspace(ctx, Keyspace{Name: ks}); !errors.Is(err, ErrExists) {
			t.Errorf("second CreateKeyspace: %v, want ErrExists", err)
		}
		for _, bad := range []Table{
			{Keyspace: ks, Name: "Bad-Name", Columns: []Column{{"a", Text}, {"b", Text}}, PartitionKey: []string{"a"}},
			{Keyspace: ks, Name: "t", Columns: []Column{{"a", "varchar2"}, {"b", Text}}, PartitionKey: []string{"a"}},
			{Keyspace: ks, Name: "t", Columns: []Column{{"a", Text}, {"b", Text}}, PartitionKey: []string{"zz"}},
			{Keyspace: ks, Name: "t", Columns: []Column{{"a", Text}, {"music_ts", Text}}, PartitionKey: []string{"a"}},
		} {
			if err := s.CreateTable(ctx, bad); !errors.Is(err, ErrInvalid) {
				t.Errorf("CreateTable(%+v): %v, want ErrInvalid", bad, err)
			}
		}
		if _, err := s.Table(ctx, ks, "t"); !errors.Is(err, ErrNotFound) {
			t.Errorf("a refused table exists: %v", err)
		}
		if err := s.CreateTable(ctx, Table{Keyspace: "nope", Name: "t", Columns: []Column{{"a", Text}, {"b", Text}}, PartitionKey: []string{"a"}}); !errors.Is(err, ErrNotFound) {
			t.Errorf("CreateTable in a missing keyspace: %v, want ErrNotFound", err)
		}
		ts, err := s.Tables(ctx, ks)
		if err != nil || len(ts) != 1 || ts[0].Name != "kv" {
			t.Errorf("Tables = %+v, %v", ts, err)
		}
		if _, err := s.Read(ctx, ReadRequest{Keyspace: ks, Table: "missing", Key: key(1), Consistency: Eventual}); !errors.Is(err, ErrNotFound) {
			t.Errorf("read of a missing table: %v, want ErrNotFound", err)
		}
		if err := s.DropTable(ctx, ks, "kv"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Table(ctx, ks, "kv"); !errors.Is(err, ErrNotFound) {
			t.Errorf("dropped table still there: %v", err)
		}
		if err := s.DropKeyspace(ctx, ks); err != nil {
			t.Fatal(err)
		}
		if err := s.DropKeyspace(ctx, ks); !errors.Is(err, ErrNotFound) {
			t.Errorf("second DropKeyspace: %v, want ErrNotFound", err)
		}
	})
}

func TestStateEventual(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		ks := c.ks
		s := c.daemon(0)
		setupTable(t, s, ks)
		ctx := context.Background()
		r1 := mustWrite(t, s, WriteRequest{Keyspace: ks, Key: key(1), Op: MutPut, Values: vals("one"), Consistency: Eventual, RequestID: "req-1"})
		row, err := read(s, ks, 1, Eventual, "")
		if err != nil {
			t.Fatal(err)
		}
		if got := valueOf(row, "v"); got.Str != "one" || row.Version != r1.Version {
			t.Fatalf("row = %+v, want v=one version %d", row, r1.Version)
		}
		r2 := mustWrite(t, s, WriteRequest{Keyspace: ks, Key: key(1), Op: MutUpdate, Values: journal.Row{{Name: "n", Value: journal.Int(7)}}, Consistency: Eventual})
		if r2.Version <= r1.Version {
			t.Errorf("versions did not increase: %d then %d", r1.Version, r2.Version)
		}
		row, _ = read(s, ks, 1, Eventual, "")
		if valueOf(row, "v").Str != "one" || valueOf(row, "n").Int != 7 {
			t.Errorf("after update: %+v", row)
		}
		// The write is in the journal, in this daemon's eventual log.
		es, err := c.journal.Read(ctx, r1.Stream, r1.Seq, 1)
		if err != nil || len(es) != 1 || es[0].Source.RequestID != "req-1" || es[0].Op != journal.OpPut || es[0].Table != "kv" {
			t.Errorf("journal entry = %+v, %v", es, err)
		}
		mustWrite(t, s, WriteRequest{Keyspace: ks, Key: key(1), Op: MutDelete, Consistency: Eventual})
		if _, err := read(s, ks, 1, Eventual, ""); !errors.Is(err, ErrNotFound) {
			t.Errorf("after delete: %v, want ErrNotFound", err)
		}
		// Select with a filter and paging.
		for i := int64(10); i < 35; i++ {
			v := "even"
			if i%2 == 1 {
				v = "odd"
			}
			mustWrite(t, s, WriteRequest{Keyspace: ks, Key: key(i), Op: MutPut, Values: vals(v), Consistency: Eventual})
		}
		seen := map[int64]bool{}
		q := Query{Filters: []Filter{{Column: "v", Value: journal.String("odd")}}, Limit: 5}
		for pages := 0; ; pages++ {
			if pages > 20 {
				t.Fatal("paging does not end")
			}
			p, err := s.Select(ctx, ks, "kv", q, Eventual)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range p.Rows {
				id := valueOf(r, "id").Int
				if seen[id] || id%2 == 0 {
					t.Errorf("row %d returned twice or does not match", id)
				}
				seen[id] = true
			}
			if p.Next == "" {
				break
			}
			q.Page = p.Next
		}
		if len(seen) != 12 {
			t.Errorf("select found %d odd rows, want 12", len(seen))
		}
		// Bad input changes nothing.
		for _, req := range []WriteRequest{
			{Key: key(50), Op: MutPut, Values: journal.Row{{Name: "nope", Value: journal.String("x")}}, Consistency: Eventual},
			{Key: key(50), Op: MutPut, Values: journal.Row{{Name: "n", Value: journal.String("x")}}, Consistency: Eventual},
			{Key: key(50), Op: MutPut, Values: journal.Row{{Name: "id", Value: journal.Int(3)}}, Consistency: Eventual},
			{Key: journal.Row{{Name: "v", Value: journal.String("x")}}, Op: MutPut, Consistency: Eventual},
			{Key: key(50), Op: MutDelete, Values: vals("x"), Consistency: Eventual},
			{Key: key(50), Op: MutPut, Values: vals("x"), Consistency: Critical},
			{Key: key(50), Op: MutPut, Values: vals("x"), Consistency: Atomic, Wait: time.Hour},
		} {
			req.Keyspace, req.Table = ks, "kv"
			if _, err := s.Write(ctx, req); !errors.Is(err, ErrInvalid) {
				t.Errorf("Write(%+v): %v, want ErrInvalid", req, err)
			}
		}
		if _, err := read(s, ks, 50, Eventual, ""); !errors.Is(err, ErrNotFound) {
			t.Errorf("a refused write left a row: %v", err)
		}
	})
}

func TestStateCriticalUnderLock(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		ks := c.ks
		a, b := c.daemon(0), c.daemon(1)
		setupTable(t, a, ks)
		ctx := context.Background()
		refA, err := a.CreateLock(ctx, ks, "kv", key(1), locks.RefOptions{Lease: 30 * time.Second, Owner: "client-a"})
		if err != nil {
			t.Fatal(err)
		}
		if ks := refA.Keyspace(); ks != ks {
			t.Errorf("ref keyspace = %q", ks)
		}
		gA, err := a.AcquireLock(ctx, refA, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, a, WriteRequest{Keyspace: ks, Key: key(1), Op: MutPut, Values: vals("a1"), Consistency: Critical, Lock: refA})
		// The same holder through another daemon: accepted, and it sees the first write.
		if row, err := read(b, ks, 1, Critical, refA); err != nil || valueOf(row, "v").Str != "a1" {
			t.Fatalf("critical read via b = %+v, %v", row, err)
		}
		mustWrite(t, b, WriteRequest{Keyspace: ks, Key: key(1), Op: MutPut, Values: vals("a2"), Consistency: Critical, Lock: refA})
		mustWrite(t, a, WriteRequest{Keyspace: ks, Key: key(1), Op: MutUpdate, Values: journal.Row{{Name: "n", Value: journal.Int(3)}}, Consistency: Critical, Lock: refA})
		if row, err := read(a, ks, 1, Critical, refA); err != nil || valueOf(row, "v").Str != "a2" || valueOf(row, "n").Int != 3 {
			t.Fatalf("critical read = %+v, %v", row, err)
		}
		// A waiting reference, or a reference of another key, is not the holder.
		refB, err := b.CreateLock(ctx, ks, "kv", key(1), locks.RefOptions{Lease: 30 * time.Second, Owner: "client-b"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Write(ctx, WriteRequest{Keyspace: ks, Table: "kv", Key: key(1), Op: MutPut, Values: vals("b"), Consistency: Critical, Lock: refB}); !errors.Is(err, ErrNotHolder) {
			t.Errorf("write by a waiting reference: %v, want ErrNotHolder", err)
		}
		if _, err := a.Write(ctx, WriteRequest{Keyspace: ks, Table: "kv", Key: key(2), Op: MutPut, Values: vals("x"), Consistency: Critical, Lock: refA}); !errors.Is(err, ErrNotHolder) {
			t.Errorf("write to another key: %v, want ErrNotHolder", err)
		}
		_, err = b.AcquireLock(ctx, refB, 100*time.Millisecond)
		var locked *LockedError
		if !errors.As(err, &locked) || !errors.Is(err, ErrLocked) || len(locked.Holders) != 1 || locked.Holders[0].Ref != refA || locked.Holders[0].Token != gA.Token {
			t.Fatalf("acquire while held: %v (%+v), want LockedError naming %s", err, locked, refA)
		}
		hs, err := b.LockHolders(ctx, ks, "kv", key(1))
		if err != nil || len(hs) != 1 || hs[0].Owner != "client-a" {
			t.Errorf("holders = %+v, %v", hs, err)
		}
		// Forced out: the next holder is told, its token is higher, and the old holder can no
		// longer write through any daemon, even the one that cached its grant.
		if err := b.ForceRelease(ctx, refA); err != nil {
			t.Fatal(err)
		}
		gB, err := b.AcquireLock(ctx, refB, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !gB.PreviousUnclean || gB.Token <= gA.Token {
			t.Errorf("grant after a forced release = %+v (previous token %d)", gB, gA.Token)
		}
		for _, d := range []*Service{a, b} {
			if _, err := d.Write(ctx, WriteRequest{Keyspace: ks, Table: "kv", Key: key(1), Op: MutPut, Values: vals("stale"), Consistency: Critical, Lock: refA}); !errors.Is(err, ErrNotHolder) {
				t.Errorf("write by the forced-out holder: %v, want ErrNotHolder", err)
			}
			if _, err := read(d, ks, 1, Critical, refA); !errors.Is(err, ErrNotHolder) {
				t.Errorf("critical read by the forced-out holder: %v, want ErrNotHolder", err)
			}
		}
		if row, err := read(a, ks, 1, Critical, refB); err != nil || valueOf(row, "v").Str != "a2" {
			t.Errorf("new holder reads %+v, %v; want the last acknowledged write a2", row, err)
		}
		if err := b.ReleaseLock(ctx, refB); err != nil {
			t.Fatal(err)
		}
		if err := b.ReleaseLock(ctx, refB); !errors.Is(err, ErrNotFound) {
			t.Errorf("second release: %v, want ErrNotFound", err)
		}
		if _, err := read(b, ks, 1, Critical, refB); !errors.Is(err, ErrNotHolder) {
			t.Errorf("read after release: %v, want ErrNotHolder", err)
		}
		// Without waiting: granted when free, locked when held.
		ref3, err := a.CreateLock(ctx, ks, "kv", key(3), locks.RefOptions{Lease: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.AcquireLock(ctx, ref3, 0); err != nil {
			t.Errorf("acquire without waiting of a free lock: %v", err)
		}
		ref4, err := b.CreateLock(ctx, ks, "kv", key(3), locks.RefOptions{Lease: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.AcquireLock(ctx, ref4, 0); !errors.Is(err, ErrLocked) {
			t.Errorf("acquire without waiting of a held lock: %v, want ErrLocked", err)
		}
		if _, err := a.AcquireLock(ctx, LockRef("kv.app.kv.zz~nope"), time.Second); !errors.Is(err, ErrInvalid) {
			t.Errorf("acquire of a malformed ref: %v, want ErrInvalid", err)
		}
	})
}

// A holder that journaled a write and died before applying it: the next holder is told the
// previous one did not release, and finds the write applied before its first operation.
func TestStateCatchUpAfterUncleanHolder(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		ks := c.ks
		s := c.daemon(0)
		tbl := setupTable(t, s, ks)
		ctx := context.Background()
		ref, err := s.CreateLock(ctx, ks, "kv", key(9), locks.RefOptions{Lease: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		g, err := s.AcquireLock(ctx, ref, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, s, WriteRequest{Keyspace: ks, Key: key(9), Op: MutPut, Values: vals("applied"), Consistency: Critical, Lock: ref})
		// The dying holder's last write: journaled in the key's stream, never applied.
		kid := newKeyID(tbl, key(9))
		h, err := c.journal.Head(ctx, kid.stream())
		if err != nil {
			t.Fatal(err)
		}
		e := journal.Entry{Seq: h.Seq + 1, HLC: s.clock.Now(), Origin: "site-a", Op: journal.OpUpdate, Database: ks, Table: "kv",
			Key: key(9), After: journal.Row{{Name: "n", Value: journal.Int(42)}}, Tx: journal.Tx{Count: 1, Last: true}}
		if err := c.journal.Append(ctx, kid.stream(), g.Token, []journal.Entry{e}); err != nil {
			t.Fatal(err)
		}
		if row, _ := read(s, ks, 9, Eventual, ""); valueOf(row, "n").Kind != journal.KindNull {
			t.Fatalf("the unapplied write is visible already: %+v", row)
		}
		if err := s.ForceRelease(ctx, ref); err != nil {
			t.Fatal(err)
		}
		other := c.daemon(1)
		ref2, err := other.CreateLock(ctx, ks, "kv", key(9), locks.RefOptions{Lease: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		g2, err := other.AcquireLock(ctx, ref2, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !g2.PreviousUnclean || g2.CaughtUp < 2 {
			t.Errorf("grant = %+v, want previous unclean and the put and update re-applied", g2)
		}
		row, err := read(other, ks, 9, Critical, ref2)
		if err != nil || valueOf(row, "v").Str != "applied" || valueOf(row, "n").Int != 42 {
			t.Errorf("after catch-up: %+v, %v", row, err)
		}
	})
}

func TestStateAtomicAndCompareAndSet(t *testing.T) {
	forEachMode(t, func(t *testing.T, c *cluster) {
		ks := c.ks
		s := c.daemon(0)
		setupTable(t, s, ks)
		ctx := context.Background()
		w := func(req WriteRequest) (WriteResult, error) {
			req.Keyspace, req.Table = ks, "kv"
			return s.Write(ctx, req)
		}
		// Create-only.
		r1, err := w(WriteRequest{Key: key(5), Op: MutPut, Values: vals("v1"), Consistency: Atomic, If: &Condition{Absent: true}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w(WriteRequest{Key: key(5), Op: MutPut, Values: vals("v1b"), Consistency: Atomic, If: &Condition{Absent: true}}); !errors.Is(err, ErrConditionFailed) {
			t.Errorf("second create-only: %v, want ErrConditionFailed", err)
		}
		// By version: the current one wins once, a stale one fails.
		r2, err := w(WriteRequest{Key: key(5), Op: MutPut, Values: vals("v2"), Consistency: Eventual, If: &Condition{Version: r1.Version}})
		if err != nil {
			t.Fatalf("CAS by current version: %v", err)
		}
		if _, err := w(WriteRequest{Key: key(5), Op: MutPut, Values: vals("v3"), Consistency: Atomic, If: &Condition{Version: r1.Version}}); !errors.Is(err, ErrConditionFailed) {
			t.Errorf("CAS by stale version: %v, want ErrConditionFailed", err)
		}
		// By column values.
		if _, err := w(WriteRequest{Key: key(5), Op: MutUpdate, Values: vals("v3"), Consistency: Atomic, If: &Condition{Columns: []Filter{{Column: "v", Value: journal.String("nope")}}}}); !errors.Is(err, ErrConditionFailed) {
			t.Errorf("CAS on a column mismatch: %v, want ErrConditionFailed", err)
		}
		r3, err := w(WriteRequest{Key: key(5), Op: MutUpdate, Values: vals("v3"), Consistency: Atomic, If: &Condition{Columns: []Filter{{Column: "v", Value: journal.String("v2")}}}})
		if err != nil || r3.Version <= r2.Version {
			t.Fatalf("CAS on a column match: %+v, %v", r3, err)
		}
		row, err := s.Read(ctx, ReadRequest{Keyspace: ks, Table: "kv", Key: key(5), Consistency: Atomic})
		if err != nil || valueOf(row, "v").Str != "v3" || row.Version != r3.Version {
			t.Errorf("atomic read = %+v, %v", row, err)
		}
		// Conditions on a missing row.
		if _, err := w(WriteRequest{Key: key(6), Op: MutPut, Values: vals("x"), Consistency: Atomic, If: &Condition{Exists: true}}); !errors.Is(err, ErrConditionFailed) {
			t.Errorf("If-Match * on a missing row: %v, want ErrConditionFailed", err)
		}
		// Atomic waits for the lock up to its deadline and names the holder.
		ref, err := s.CreateLock(ctx, ks, "kv", key(5), locks.RefOptions{Lease: 30 * time.Second, Owner: "blocker"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.AcquireLock(ctx, ref, time.Second); err != nil {
			t.Fatal(err)
		}
		_, err = w(WriteRequest{Key: key(5), Op: MutPut, Values: vals("late"), Consistency: Atomic, Wait: 150 * time.Millisecond})
		var locked *LockedError
		if !errors.As(err, &locked) || len(locked.Holders) == 0 || locked.Holders[0].Owner != "blocker" {
			t.Fatalf("atomic write on a held key: %v, want LockedError naming the blocker", err)
		}
		released := make(chan error, 1)
		go func() {
			// Released while the next atomic write waits: that write goes through.
			released <- s.ReleaseLock(ctx, ref)
		}()
		if _, err := w(WriteRequest{Key: key(5), Op: MutPut, Values: vals("after"), Consistency: Atomic, Wait: 10 * time.Second}); err != nil {
			t.Fatalf("atomic write after release: %v", err)
		}
		if err := <-released; err != nil {
			t.Fatal(err)
		}
		if hs, err := s.LockHolders(ctx, ks, "kv", key(5)); err != nil || len(hs) != 0 {
			t.Errorf("an atomic operation left holders: %+v, %v", hs, err)
		}
	})
}

func TestConsistencyAndValues(t *testing.T) {
	for in, want := range map[string]Consistency{"": Eventual, "eventual": Eventual, "CRITICAL": Critical, "atomic": Atomic} {
		if got, err := ParseConsistency(in); err != nil || got != want {
			t.Errorf("ParseConsistency(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseConsistency("strong"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseConsistency(strong): %v", err)
	}
	tbl := Table{Keyspace: "app", Name: "t", Columns: []Column{{"a", Int}, {"b", Text}, {"c", Decimal}}, PartitionKey: []string{"a"}}
	for _, bad := range []map[string]json.RawMessage{
		{"a": json.RawMessage(`1`), "b": json.RawMessage(`2`)},
		{"a": json.RawMessage(`4294967296`)},
		{"a": json.RawMessage(`1`), "c": json.RawMessage(`"1e5"`)},
		{"a": json.RawMessage(`1`), "zz": json.RawMessage(`1`)},
		{"b": json.RawMessage(`"x"`)},
		{"a": json.RawMessage(`null`)},
	} {
		if _, _, err := ParseValues(tbl, bad, true); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseValues(%s): %v, want ErrInvalid", bad, err)
		}
	}
	k, v, err := ParseValues(tbl, map[string]json.RawMessage{"a": json.RawMessage(`-3`), "c": json.RawMessage(`"12.50"`)}, true)
	if err != nil || k[0].Value.Int != -3 || v[0].Value.Str != "12.50" {
		t.Errorf("ParseValues = %v %v %v", k, v, err)
	}
	if _, err := ParseKey(tbl, []string{"x"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseKey(x): %v", err)
	}
}

// A daemon that restarts under the same instance name writes new eventual-log streams (one per
// leadership) and hands the earlier ones to OnStream too, so the change feed finishes them.
func TestEventualLogStreamsAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	store, err := journal.OpenEmbedded(dir+"/journal", discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	backend, err := OpenEmbeddedBackend(dir+"/state", discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	clock := journal.NewClock(time.Now, 0)
	start := func(first uint64) (*Service, chan string, func()) {
		lockSvc := locks.NewInProcess(locks.InProcessConfig{FirstToken: first})
		streams := make(chan string, 100)
		cfg := DefaultConfig()
		cfg.Site, cfg.Instance, cfg.EventualShards = "site-a", "d0", 1
		s, err := New(cfg, Deps{Backend: backend, Journal: store, Locks: lockSvc, Clock: clock, Logger: discardLogger(),
			OnStream: func(stream string) { streams <- stream }})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = s.Run(ctx) }()
		return s, streams, func() { cancel(); <-done; _ = lockSvc.Close() }
	}
	s1, streams1, stop1 := start(1000)
	setupTable(t, s1, "app")
	r1 := mustWrite(t, s1, WriteRequest{Keyspace: "app", Key: key(1), Op: MutPut, Values: vals("one"), Consistency: Eventual})
	recv := func(ch chan string) string {
		select {
		case s := <-ch:
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("OnStream was not called")
			return ""
		}
	}
	if got := recv(streams1); got != r1.Stream || !strings.HasSuffix(got, "/1000") {
		t.Fatalf("first run's stream %s, write went to %s", got, r1.Stream)
	}
	stop1()
	s2, streams2, stop2 := start(2000)
	defer stop2()
	r2 := mustWrite(t, s2, WriteRequest{Keyspace: "app", Key: key(2), Op: MutPut, Values: vals("two"), Consistency: Eventual})
	got := map[string]bool{recv(streams2): true, recv(streams2): true}
	if !got[r1.Stream] || !got[r2.Stream] || r1.Stream == r2.Stream {
		t.Fatalf("second run handed %v to OnStream; want its stream %s and the earlier %s", got, r2.Stream, r1.Stream)
	}
}

// In distributed mode an eventual write's row goes in its append's batch: the entry and the row
// take effect together. A batch that Cassandra refuses (here a table dropped behind the daemon's
// back, while its cached definition is trusted) is journaled without its rows, and each request
// applies its own row and learns why it failed; the log goes on.
func TestEventualRowsInAppend(t *testing.T) {
	c := distributedClusterWith(t, DefaultConfig(), func(b *CassandraBackendConfig) { b.TableRecheck = time.Hour })
	ks := c.ks
	s := c.daemon(0)
	tbl := setupTable(t, s, ks)
	ctx := context.Background()
	const n = 40
	results := make([]WriteResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.Write(ctx, WriteRequest{Keyspace: ks, Table: "kv", Key: key(int64(i)), Op: MutPut, Values: vals(fmt.Sprint("v", i)), Consistency: Eventual})
			if err != nil {
				t.Errorf("write %d: %v", i, err)
			}
			results[i] = r
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if got := testutil.ToFloat64(s.metrics.evRows); got != n {
		t.Errorf("%v writes had their rows in the append, want %d", got, n)
	}
	for i, r := range results {
		row, err := read(s, ks, int64(i), Eventual, "")
		if err != nil || valueOf(row, "v").Str != fmt.Sprint("v", i) || row.Version != r.Version {
			t.Errorf("row %d = %+v, %v; want v%d at version %d", i, row, err, i, r.Version)
		}
		es, err := c.journal.Read(ctx, r.Stream, r.Seq, 1)
		if err != nil || len(es) != 1 || micros(es[0].HLC) != r.Version || valueOf(StoredRow{Values: es[0].Key}, "id").Int != int64(i) {
			t.Errorf("entry of write %d = %+v, %v", i, es, err)
		}
	}

	gone := tbl
	gone.Name = "gone"
	if err := s.CreateTable(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if err := c.session.Query(`DROP TABLE "` + ks + `".gone`).Exec(); err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(s.metrics.evRows)
	_, err := s.Write(ctx, WriteRequest{Keyspace: ks, Table: "gone", Key: key(1), Op: MutPut, Values: vals("x"), Consistency: Eventual})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "journaled") {
		t.Fatalf("write to a dropped table: %v, want a journaled write that could not be applied (ErrNotFound)", err)
	}
	if got := testutil.ToFloat64(s.metrics.evRows); got != before {
		t.Errorf("the refused batch counted %v rows in the append", got-before)
	}
	r := mustWrite(t, s, WriteRequest{Keyspace: ks, Table: "kv", Key: key(100), Op: MutPut, Values: vals("after"), Consistency: Eventual})
	if got := testutil.ToFloat64(s.metrics.evRows); got != before+1 {
		t.Errorf("after the refused batch: %v rows in appends, want %v", got, before+1)
	}
	if row, err := read(s, ks, 100, Eventual, ""); err != nil || row.Version != r.Version {
		t.Errorf("row after the refused batch: %+v, %v", row, err)
	}
	// The refused write's entry is in the journal where its error says.
	var stream string
	var seq uint64
	if _, serr := fmt.Sscanf(err.Error()[strings.Index(err.Error(), "(stream "):], "(stream %s seq %d)", &stream, &seq); serr != nil {
		t.Fatalf("no stream and seq in %q: %v", err, serr)
	}
	es, err := c.journal.Read(ctx, stream, seq, 1)
	if err != nil || len(es) != 1 || es[0].Table != "gone" {
		t.Errorf("entry of the refused write: %+v, %v", es, err)
	}
}
