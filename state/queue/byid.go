package queue

import (
	"context"
	"errors"
	"fmt"

	"github.com/musicd/musicd/state"
)

// Jobs by id: every live job (ready, claimed or dead) has an index row under its id in its
// shard's partition, pointing at the job's row; the store writes it in the same atomic write as
// every insert and move of the job (see kindIndex and Store.Move). Finding a job by id is a
// linearizable read of the index row then of the row it points at; changing or deleting it is
// one conditional write on the job's row, like a claim, so a change and a claim of the same job
// never both succeed.

// ErrClaimed: the job is claimed by a worker; it cannot be changed or deleted until the claim
// ends (completed, released, or its lease runs out).
var ErrClaimed = fmt.Errorf("%w: the job is claimed by a worker", state.ErrNotHolder)

// byIDAttempts bounds how often an operation by id reads the job again because it moved between
// the read of its index row and the read (or change) of its row.
const byIDAttempts = 5

// MaxScan is the most jobs Jobs examines in one queue.
const MaxScan = 10000

// Job returns the job with id (ready, claimed or dead), read linearizably. state.ErrNotFound if
// no such job is in the queue.
func (s *Service) Job(ctx context.Context, namespace, name, id string) (Job, error) {
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return Job{}, err
	}
	if err := ValidateID(id); err != nil {
		return Job{}, err
	}
	return s.jobByID(ctx, d, id)
}

func (s *Service) jobByID(ctx context.Context, d Def, id string) (Job, error) {
	shard := shardOf(id, d.Shards)
	for range byIDAttempts {
		loc, err := locate(ctx, s.store, d, shard, id)
		if err != nil {
			return Job{}, err
		}
		if loc == nil {
			return Job{}, fmt.Errorf("%w: no job %s in %s", state.ErrNotFound, id, d.Key())
		}
		j, err := s.store.Get(ctx, d, shard, *loc)
		if err != nil {
			return Job{}, err
		}
		if j != nil {
			return *j, nil
		}
		// The job moved between the two reads: read its index again.
	}
	return Job{}, fmt.Errorf("%w: job %s of %s kept moving; try again", state.ErrUnavailable, id, d.Key())
}

// JobChange is a change of a job: a new payload (nil: unchanged) and a new priority (nil:
// unchanged).
type JobChange struct {
	Payload  []byte
	Priority *int
}

// UpdateJob changes a ready or dead-lettered job's payload and priority: a ready job whose
// priority changes moves to its new level, keeping its due time. A claimed job is refused with
// ErrClaimed. It returns the job as it now is.
func (s *Service) UpdateJob(ctx context.Context, namespace, name, id string, ch JobChange) (_ Job, err error) {
	defer func() { s.m.observe("update", err) }()
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return Job{}, err
	}
	if err := ValidateID(id); err != nil {
		return Job{}, err
	}
	if len(ch.Payload) > d.MaxPayload {
		return Job{}, fmt.Errorf("%w: payload of %d bytes is over queue %s's limit of %d", state.ErrInvalid, len(ch.Payload), d.Key(), d.MaxPayload)
	}
	if ch.Priority != nil && (*ch.Priority < 0 || *ch.Priority >= d.Priorities) {
		return Job{}, fmt.Errorf("%w: priority %d: queue %s has priorities 0-%d", state.ErrInvalid, *ch.Priority, d.Key(), d.Priorities-1)
	}
	for range byIDAttempts {
		cur, err := s.jobByID(ctx, d, id)
		if err != nil {
			return Job{}, err
		}
		if cur.claimed() {
			return Job{}, fmt.Errorf("%w: job %s of %s", ErrClaimed, id, d.Key())
		}
		next := cur
		if ch.Payload != nil {
			next.Payload = ch.Payload
		}
		if ch.Priority != nil {
			next.Priority = *ch.Priority
		}
		if next.Payload == nil {
			next.Payload = []byte{} // in place: replace payload and priority (Store.Move)
		}
		if cur.slot.Kind == kindReady {
			next.slot.Priority = next.Priority
		}
		ok, _, err := s.move(ctx, d, cur.Shard, cur.slot, cond{}, &next)
		if err != nil {
			// Unknown outcome: a linearizable read settles it.
			got, gerr := s.jobByID(ctx, d, id)
			if gerr != nil || got.slot != next.slot || string(got.Payload) != string(next.Payload) {
				return Job{}, err
			}
			ok = true
		}
		if ok {
			if next.slot.Kind == kindReady && next.slot != cur.slot {
				s.announce(d, next.Shard, next.Priority, next.Due)
			}
			return next, nil
		}
		// The row moved (claimed, or changed by another call): look again.
	}
	return Job{}, fmt.Errorf("%w: job %s of %s kept moving; try again", state.ErrUnavailable, id, d.Key())
}

// DeleteJob removes a ready or dead-lettered job from the queue and returns it. A claimed job is
// refused with ErrClaimed; state.ErrNotFound if no such job is in the queue.
func (s *Service) DeleteJob(ctx context.Context, namespace, name, id string) (_ Job, err error) {
	defer func() { s.m.observe("delete", err) }()
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return Job{}, err
	}
	if err := ValidateID(id); err != nil {
		return Job{}, err
	}
	for range byIDAttempts {
		cur, err := s.jobByID(ctx, d, id)
		if err != nil {
			return Job{}, err
		}
		if cur.claimed() {
			return Job{}, fmt.Errorf("%w: job %s of %s", ErrClaimed, id, d.Key())
		}
		ok, _, err := s.move(ctx, d, cur.Shard, cur.slot, cond{})
		if err != nil {
			// Unknown outcome: the job is gone if this delete (or another) removed it.
			if _, gerr := s.jobByID(ctx, d, id); errors.Is(gerr, state.ErrNotFound) {
				return cur, nil
			}
			return Job{}, err
		}
		if ok {
			return cur, nil
		}
	}
	return Job{}, fmt.Errorf("%w: job %s of %s kept moving; try again", state.ErrUnavailable, id, d.Key())
}

// Jobs returns every job of a queue (ready, claimed and dead), shard by shard in the order of
// Store.Scan: one bounded read per shard. A queue holding more than max jobs (at most MaxScan)
// is refused with state.ErrInvalid: the caller should address jobs by id.
func (s *Service) Jobs(ctx context.Context, namespace, name string, max int) ([]Job, error) {
	d, err := s.Queue(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	if max < 1 || max > MaxScan {
		return nil, fmt.Errorf("%w: max must be 1-%d", state.ErrInvalid, MaxScan)
	}
	var out []Job
	for shard := range d.Shards {
		jobs, err := s.store.Scan(ctx, d, shard, max-len(out)+1)
		if err != nil {
			return nil, err
		}
		out = append(out, jobs...)
		if len(out) > max {
			return nil, fmt.Errorf("%w: queue %s holds more than %d jobs", state.ErrInvalid, d.Key(), max)
		}
	}
	return out, nil
}
