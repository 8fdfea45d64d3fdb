package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/musicd/musicd/state"
)

// TestJobsByID drives the operations by id (Job, UpdateJob, DeleteJob, Jobs) and unique
// enqueues through a job's life, in both modes.
func TestJobsByID(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		s := newService(t, st, fastConfig())
		if _, err := s.CreateQueue(ctx, Def{Namespace: "app", Name: "ids", Priorities: 3, Shards: 2, MaxAttempts: 1, MaxPayload: 16}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Job(ctx, "app", "ids", "nope"); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("job of no id: %v", err)
		}
		if _, err := s.Job(ctx, "app", "ids", "bad id"); !errors.Is(err, state.ErrInvalid) {
			t.Fatalf("job of a malformed id: %v", err)
		}
		for _, id := range []string{"a", "b"} {
			if _, dup, err := s.Enqueue(ctx, "app", "ids", NewJob{ID: id, Payload: []byte("p-" + id), Unique: true}); err != nil || dup {
				t.Fatalf("enqueue %s: %v %v", id, dup, err)
			}
		}
		if _, dup, err := s.Enqueue(ctx, "app", "ids", NewJob{ID: "a", Payload: []byte("again"), Unique: true}); err != nil || !dup {
			t.Fatalf("unique enqueue of a live id: dup=%v %v", dup, err)
		}
		j, err := s.Job(ctx, "app", "ids", "a")
		if err != nil || string(j.Payload) != "p-a" || j.Priority != 0 || j.Token != "" {
			t.Fatalf("job a: %+v %v", j, err)
		}
		// Update: the payload in place; then the priority, which moves the job ahead of b.
		two := 2
		for _, ch := range []JobChange{{Payload: make([]byte, 17)}, {Priority: &[]int{3}[0]}, {Priority: &[]int{-1}[0]}} {
			if _, err := s.UpdateJob(ctx, "app", "ids", "a", ch); !errors.Is(err, state.ErrInvalid) {
				t.Errorf("update %+v: %v, want ErrInvalid", ch, err)
			}
		}
		if _, err := s.UpdateJob(ctx, "app", "ids", "nope", JobChange{Payload: []byte("x")}); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("update of no job: %v", err)
		}
		if u, err := s.UpdateJob(ctx, "app", "ids", "a", JobChange{Payload: []byte("new")}); err != nil || string(u.Payload) != "new" || u.Priority != 0 {
			t.Fatalf("update payload: %+v %v", u, err)
		}
		peek, _ := s.Peek(ctx, "app", "ids", 10)
		if len(peek) != 2 || peek[0].ID != "a" || peek[1].ID != "b" {
			t.Fatalf("peek before the priority change: %+v", peek)
		}
		if _, err := s.UpdateJob(ctx, "app", "ids", "b", JobChange{Priority: &two}); err != nil {
			t.Fatal(err)
		}
		peek, _ = s.Peek(ctx, "app", "ids", 10)
		if len(peek) != 2 || peek[0].ID != "b" || peek[0].Priority != 2 || string(peek[0].Payload) != "p-b" || peek[1].ID != "a" {
			t.Fatalf("peek after the priority change: %+v", peek)
		}
		// A claimed job can be read, not changed or deleted.
		c, err := s.Claim(ctx, "app", "ids", "w", time.Minute, 0)
		if err != nil || c == nil || c.ID != "b" {
			t.Fatalf("claim: %+v %v", c, err)
		}
		if j, err := s.Job(ctx, "app", "ids", "b"); err != nil || j.Token != c.Token || j.Holder != "w" {
			t.Fatalf("job b while claimed: %+v %v", j, err)
		}
		if _, err := s.UpdateJob(ctx, "app", "ids", "b", JobChange{Payload: []byte("x")}); !errors.Is(err, ErrClaimed) {
			t.Fatalf("update of a claimed job: %v", err)
		}
		if _, err := s.DeleteJob(ctx, "app", "ids", "b"); !errors.Is(err, ErrClaimed) {
			t.Fatalf("delete of a claimed job: %v", err)
		}
		if _, dup, err := s.Enqueue(ctx, "app", "ids", NewJob{ID: "b", Unique: true}); err != nil || !dup {
			t.Fatalf("unique enqueue of a claimed job's id: dup=%v %v", dup, err)
		}
		// A failed attempt (MaxAttempts 1): dead. A dead job can be changed and deleted.
		if _, err := s.Release(ctx, "app", "ids", "b", c.Token, 0, "boom"); err != nil {
			t.Fatal(err)
		}
		if u, err := s.UpdateJob(ctx, "app", "ids", "b", JobChange{Payload: []byte("fixed"), Priority: &two}); err != nil || string(u.Payload) != "fixed" {
			t.Fatalf("update of a dead job: %+v %v", u, err)
		}
		dead, _, _ := s.Dead(ctx, "app", "ids", "", 10)
		if len(dead) != 1 || string(dead[0].Payload) != "fixed" || dead[0].Error != "boom" {
			t.Fatalf("the dead job after the update: %+v", dead)
		}
		all, err := s.Jobs(ctx, "app", "ids", 10)
		if err != nil || len(all) != 2 {
			t.Fatalf("jobs: %+v %v", all, err)
		}
		if _, err := s.Jobs(ctx, "app", "ids", 1); !errors.Is(err, state.ErrInvalid) {
			t.Fatalf("jobs over the bound: %v", err)
		}
		if d, err := s.DeleteJob(ctx, "app", "ids", "b"); err != nil || d.ID != "b" {
			t.Fatalf("delete of a dead job: %+v %v", d, err)
		}
		if d, err := s.DeleteJob(ctx, "app", "ids", "a"); err != nil || string(d.Payload) != "new" {
			t.Fatalf("delete of a ready job: %+v %v", d, err)
		}
		if _, err := s.DeleteJob(ctx, "app", "ids", "a"); !errors.Is(err, state.ErrNotFound) {
			t.Fatalf("delete again: %v", err)
		}
		if all, err := s.Jobs(ctx, "app", "ids", 10); err != nil || len(all) != 0 {
			t.Fatalf("jobs after the deletes: %+v %v", all, err)
		}
		if j, err := s.Claim(ctx, "app", "ids", "w", 0, 0); err != nil || j != nil {
			t.Fatalf("claim after the deletes: %+v %v", j, err)
		}
		// A unique id is free again once its job is gone.
		if _, dup, err := s.Enqueue(ctx, "app", "ids", NewJob{ID: "a", Unique: true}); err != nil || dup {
			t.Fatalf("unique enqueue after the delete: dup=%v %v", dup, err)
		}
	})
}

// TestChangeVersusClaim races claims against updates and deletes of the same jobs: a job is
// claimed by exactly one worker or deleted, never both, never lost; an update never undoes a
// claim, and a claimed job keeps its payload.
func TestChangeVersusClaim(t *testing.T) {
	forEachStore(t, func(t *testing.T, st Store) {
		ctx := context.Background()
		s := newService(t, st, fastConfig())
		if _, err := s.CreateQueue(ctx, Def{Namespace: "app", Name: "race", Priorities: 2, Shards: 1}); err != nil {
			t.Fatal(err)
		}
		for round := range 12 {
			id := fmt.Sprintf("r%d", round)
			if _, _, err := s.Enqueue(ctx, "app", "race", NewJob{ID: id, Payload: []byte("v0"), Unique: true}); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			var claimed *Job
			var claimErr, changeErr error
			var changed Job
			wg.Add(2)
			go func() {
				defer wg.Done()
				claimed, claimErr = s.Claim(ctx, "app", "race", "w", time.Minute, 0)
			}()
			go func() {
				defer wg.Done()
				if round%2 == 0 {
					changed, changeErr = s.DeleteJob(ctx, "app", "race", id)
				} else {
					one := 1
					changed, changeErr = s.UpdateJob(ctx, "app", "race", id, JobChange{Payload: []byte("v1"), Priority: &one})
				}
			}()
			wg.Wait()
			if claimErr != nil {
				t.Fatalf("round %d: claim: %v", round, claimErr)
			}
			if changeErr != nil && !errors.Is(changeErr, ErrClaimed) {
				t.Fatalf("round %d: change: %v", round, changeErr)
			}
			now, err := s.Job(ctx, "app", "race", id)
			switch {
			case round%2 == 0 && changeErr == nil: // deleted first: no claim, no job
				if claimed != nil || !errors.Is(err, state.ErrNotFound) {
					t.Fatalf("round %d: deleted, yet claimed %+v / job %+v %v", round, claimed, now, err)
				}
			case changeErr != nil: // claimed first: the change was refused
				if claimed == nil || err != nil || now.Token != claimed.Token || string(now.Payload) != "v0" {
					t.Fatalf("round %d: change refused, yet claim %+v, job %+v %v", round, claimed, now, err)
				}
			default: // updated first, then claimed (or not yet: the claim may have read before)
				if changed.Priority != 1 || err != nil || string(now.Payload) != "v1" {
					t.Fatalf("round %d: updated, job %+v %v", round, now, err)
				}
				if claimed != nil && (claimed.ID != id || now.Token != claimed.Token) {
					t.Fatalf("round %d: claim %+v, job %+v", round, claimed, now)
				}
			}
			if now.Token != "" {
				if err := s.Complete(ctx, "app", "race", id, now.Token); err != nil {
					t.Fatal(err)
				}
			} else if err == nil {
				if _, err := s.DeleteJob(ctx, "app", "race", id); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
}
