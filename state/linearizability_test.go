package state

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

// The linearizability test: clients take a key's lock through any of three daemons and do
// critical reads, writes and compare-and-sets under it, while their leases run out and a chaos
// client forces holders out. Every history is checked with porcupine against a register with
// compare-and-set, one register per key.

type regInput struct {
	op       string // "read", "write", "cas"
	key      int64
	value    int64 // write, cas: the new value
	expected int64 // cas
}

type regOutput struct {
	value   int64 // read: the value (0: no row)
	ok      bool  // cas: the condition held
	unknown bool  // the outcome is not known (the call failed in a way that may have applied it)
}

// registerModel: the state is the key's value (0 when the row does not exist).
var registerModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[int64][]porcupine.Operation{}
		var keys []int64
		for _, op := range history {
			k := op.Input.(regInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() []any { return []any{int64(0)} },
	Step: func(state, input, output any) []any {
		st, in, out := state.(int64), input.(regInput), output.(regOutput)
		switch in.op {
		case "read":
			if out.value == st {
				return []any{st}
			}
			return nil
		case "write":
			if out.unknown {
				return []any{st, in.value}
			}
			return []any{in.value}
		case "cas":
			holds := st != 0 && st == in.expected
			switch {
			case out.unknown && holds:
				return []any{st, in.value}
			case out.unknown:
				return []any{st}
			case out.ok && holds:
				return []any{in.value}
			case !out.ok && !holds:
				return []any{st}
			}
			return nil
		}
		return nil
	},
	Equal: func(a, b any) bool { return a.(int64) == b.(int64) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		return fmt.Sprintf("%s(k%d %d %d) -> %+v", in.op, in.key, in.expected, in.value, out)
	},
}

type linStats struct {
	ops, notHolder, locked, forced, unknown, casFailed atomic.Int64

	mu     sync.Mutex
	errors map[string]int // unexpected errors by message prefix, for the log
}

func (s *linStats) unexpected(err error) {
	s.unknown.Add(1)
	msg := err.Error()
	if len(msg) > 120 {
		msg = msg[:120]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.errors == nil {
		s.errors = map[string]int{}
	}
	if len(s.errors) < 20 {
		s.errors[msg]++
	}
}

func TestLinearizability(t *testing.T) {
	t.Run("distributed", func(t *testing.T) {
		cfg := DefaultConfig()
		c := distributedCluster(t, cfg)
		runHistories(t, c, 200, 8)
	})
	t.Run("embedded", func(t *testing.T) {
		c := embeddedCluster(t, DefaultConfig())
		runHistories(t, c, 200, 8)
	})
}

// runHistories runs n histories, parallel at a time, each with 8 clients on 2 keys of its own,
// and checks each.
func runHistories(t *testing.T, c *cluster, n, parallel int) {
	daemons := []*Service{c.daemon(0), c.daemon(1), c.daemon(2)}
	ctx := context.Background()
	if err := daemons[0].CreateKeyspace(ctx, Keyspace{Name: c.ks}); err != nil {
		t.Fatal(err)
	}
	if err := daemons[0].CreateTable(ctx, Table{Keyspace: c.ks, Name: "reg", Columns: []Column{{"id", Bigint}, {"n", Bigint}}, PartitionKey: []string{"id"}}); err != nil {
		t.Fatal(err)
	}
	var stats linStats
	var checked, violations atomic.Int64
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for h := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ops := runHistory(t, daemons, c.ks, int64(h), &stats)
			res, info := porcupine.CheckOperationsVerbose(registerModel.ToModel(), ops, time.Minute)
			checked.Add(1)
			if res != porcupine.Ok {
				violations.Add(1)
				if violations.Load() <= 2 {
					t.Errorf("history %d (%d operations): %v\n%s%s", h, len(ops), res, describeHistory(ops), describeKeys(c, daemons[0], int64(h)))
				} else {
					t.Errorf("history %d (%d operations): %v", h, len(ops), res)
				}
				_ = info
			}
		}()
	}
	wg.Wait()
	t.Logf("%s: %d histories checked, %d violations; %d operations, %d refused as not holder, %d lock waits timed out, %d forced releases, %d unknown outcomes, %d failed compare-and-sets",
		c.mode, checked.Load(), violations.Load(), stats.ops.Load(), stats.notHolder.Load(), stats.locked.Load(), stats.forced.Load(), stats.unknown.Load(), stats.casFailed.Load())
	for msg, n := range stats.errors {
		t.Logf("unexpected error (%d): %s", n, msg)
	}
	if checked.Load() < int64(n) || violations.Load() != 0 {
		t.Fatalf("%d histories checked, %d violations", checked.Load(), violations.Load())
	}
	// The faults the test is about happened.
	if stats.forced.Load() == 0 || stats.notHolder.Load() == 0 || stats.casFailed.Load() == 0 {
		t.Fatalf("the histories lacked forced releases, refused stale holders or failed compare-and-sets: %+v", &stats)
	}
}

// runHistory runs one history: 8 clients, 2 keys, a chaos client forcing holders out.
func runHistory(t *testing.T, daemons []*Service, ks string, h int64, stats *linStats) []porcupine.Operation {
	const clients, opsPerClient = 8, 6
	keys := []int64{h*10 + 1, h*10 + 2}
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	var mu sync.Mutex
	var history []porcupine.Operation
	record := func(client int, in regInput, out regOutput, call int64) {
		ret := now()
		if out.unknown {
			ret = math.MaxInt64 // may take effect at any time after the call
		}
		mu.Lock()
		history = append(history, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
		mu.Unlock()
		stats.ops.Add(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	chaosDone := make(chan struct{})
	stopChaos := make(chan struct{})
	go func() { // force the holder of a random key out every 15 ms
		defer close(chaosDone)
		tick := time.NewTicker(15 * time.Millisecond)
		defer tick.Stop()
		rng := rand.New(rand.NewPCG(uint64(h), 99))
		for {
			select {
			case <-stopChaos:
				return
			case <-tick.C:
			}
			d := daemons[rng.IntN(len(daemons))]
			k := keys[rng.IntN(len(keys))]
			hs, err := d.LockHolders(ctx, ks, "reg", key(k))
			if err != nil || len(hs) == 0 || rng.IntN(3) != 0 {
				continue
			}
			if d.ForceRelease(ctx, hs[0].Ref) == nil {
				stats.forced.Add(1)
			}
		}
	}()

	var wg sync.WaitGroup
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(h), uint64(cl)))
			last := map[int64]int64{}
			next := int64(0)
			for done := 0; done < opsPerClient; {
				k := keys[rng.IntN(len(keys))]
				d := daemons[rng.IntN(len(daemons))]
				lease := time.Duration(50+rng.IntN(400)) * time.Millisecond
				ref, err := d.CreateLock(ctx, ks, "reg", key(k), locks.RefOptions{Lease: lease, Owner: fmt.Sprintf("h%d-c%d", h, cl)})
				if err != nil {
					t.Errorf("CreateLock: %v", err)
					return
				}
				if _, err := d.AcquireLock(ctx, ref, time.Duration(200+rng.IntN(800))*time.Millisecond); err != nil {
					switch {
					case errors.Is(err, ErrLocked):
						stats.locked.Add(1)
					case errors.Is(err, ErrNotFound), errors.Is(err, ErrNotHolder): // expired while waiting
						stats.notHolder.Add(1)
					default:
						t.Errorf("AcquireLock: %v", err)
						return
					}
					_ = d.ReleaseLock(ctx, ref)
					continue
				}
				for i := 0; i < 1+rng.IntN(3) && done < opsPerClient; i++ {
					done++
					d := daemons[rng.IntN(len(daemons))] // any daemon serves the holder
					call := now()
					switch p := rng.IntN(10); {
					case p < 4:
						row, err := d.Read(ctx, ReadRequest{Keyspace: ks, Table: "reg", Key: key(k), Consistency: Critical, Lock: ref})
						switch {
						case err == nil:
							v := valueOf(row, "n").Int
							last[k] = v
							record(cl, regInput{op: "read", key: k}, regOutput{value: v}, call)
						case errors.Is(err, ErrNotFound) && strings.Contains(err.Error(), "no row with that key"):
							record(cl, regInput{op: "read", key: k}, regOutput{value: 0}, call)
						case errors.Is(err, ErrNotHolder):
							stats.notHolder.Add(1)
						default:
							stats.unexpected(err) // a failed read tells nothing
						}
					case p < 7:
						next++
						v := int64(cl+1)*1_000_000 + h*100 + next
						_, err := d.Write(ctx, WriteRequest{Keyspace: ks, Table: "reg", Key: key(k), Op: MutPut,
							Values: journal.Row{{Name: "n", Value: journal.Int(v)}}, Consistency: Critical, Lock: ref})
						switch {
						case err == nil:
							record(cl, regInput{op: "write", key: k, value: v}, regOutput{}, call)
						case errors.Is(err, ErrNotHolder):
							stats.notHolder.Add(1)
						default:
							stats.unexpected(err)
							record(cl, regInput{op: "write", key: k, value: v}, regOutput{unknown: true}, call)
						}
					default:
						next++
						v := int64(cl+1)*1_000_000 + h*100 + next
						exp := last[k]
						if exp == 0 || rng.IntN(4) == 0 {
							exp = int64(rng.IntN(8)+1)*1_000_000 + h*100 + int64(rng.IntN(6)+1) // often stale
						}
						_, err := d.Write(ctx, WriteRequest{Keyspace: ks, Table: "reg", Key: key(k), Op: MutPut,
							Values: journal.Row{{Name: "n", Value: journal.Int(v)}}, Consistency: Critical, Lock: ref,
							If: &Condition{Columns: []Filter{{Column: "n", Value: journal.Int(exp)}}}})
						in := regInput{op: "cas", key: k, value: v, expected: exp}
						switch {
						case err == nil:
							last[k] = v
							record(cl, in, regOutput{ok: true}, call)
						case errors.Is(err, ErrConditionFailed):
							stats.casFailed.Add(1)
							record(cl, in, regOutput{ok: false}, call)
						case errors.Is(err, ErrNotHolder):
							stats.notHolder.Add(1)
						default:
							stats.unexpected(err)
							record(cl, in, regOutput{unknown: true}, call)
						}
					}
				}
				if rng.IntN(4) != 0 { // else leave it to expire
					_ = d.ReleaseLock(ctx, ref)
				}
			}
		}()
	}
	wg.Wait()
	close(stopChaos)
	<-chaosDone
	return history
}

// describeHistory lists a history's operations by key and call time, for a failure message.
func describeHistory(ops []porcupine.Operation) string {
	sorted := slices.Clone(ops)
	slices.SortFunc(sorted, func(a, b porcupine.Operation) int {
		ka, kb := a.Input.(regInput).key, b.Input.(regInput).key
		if ka != kb {
			return cmp.Compare(ka, kb)
		}
		return cmp.Compare(a.Call, b.Call)
	})
	var sb strings.Builder
	for _, op := range sorted {
		ret := "?"
		if op.Return != math.MaxInt64 {
			ret = fmt.Sprintf("%.3f", float64(op.Return)/1e6)
		}
		fmt.Fprintf(&sb, "  c%d %8.3f-%8s ms  %s\n", op.ClientId, float64(op.Call)/1e6, ret, registerModel.DescribeOperation(op.Input, op.Output))
	}
	return sb.String()
}

// describeKeys lists, for a failure message, the journal entries of a history's keys and the rows
// as the table holds them.
func describeKeys(c *cluster, d *Service, h int64) string {
	ctx := context.Background()
	var sb strings.Builder
	for _, k := range []int64{h*10 + 1, h*10 + 2} {
		t, err := d.Table(ctx, c.ks, "reg")
		if err != nil {
			return err.Error()
		}
		kid := newKeyID(t, key(k))
		es, err := c.journal.Read(ctx, kid.stream(), 1, 1000)
		fmt.Fprintf(&sb, "key %d stream %s (%v):\n", k, kid.stream(), err)
		for _, e := range es {
			fmt.Fprintf(&sb, "  seq %d epoch %d ts %d op %s after %v\n", e.Seq, e.Epoch, micros(e.HLC), e.Op, e.After)
		}
		row, found, err := d.backend.Get(ctx, t, LevelGlobal, key(k))
		fmt.Fprintf(&sb, "  row: %v found %v err %v\n", row, found, err)
	}
	return sb.String()
}
