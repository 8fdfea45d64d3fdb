package queue

import (
	"context"
	"fmt"

	"github.com/musicd/musicd/state"
)

// oneAtATime is the service's view of its Store: this daemon's conditional writes and
// linearizable reads of one shard (Paxos rounds on one Cassandra partition) run one at a time.
// Cassandra 2.1 makes the loser of two concurrent Paxos rounds on a partition sleep and try
// again, and under load times out; queueing them here costs only the wait. Other daemons'
// rounds still contend with ours (one daemon per site is the usual case).
type oneAtATime struct {
	Store
	s *Service
}

// turn waits for the shard's turn; the returned func ends it.
func (o oneAtATime) turn(ctx context.Context, d Def, shard int) (func(), error) {
	h := o.s.hintsOf(d)
	if shard < 0 || shard >= len(h.turns) {
		return nil, fmt.Errorf("queue: shard %d of %s out of range", shard, d.Key())
	}
	select {
	case h.turns[shard] <- struct{}{}:
		return func() { <-h.turns[shard] }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for a conditional write of %s: %w", state.ErrUnavailable, d.Key(), ctx.Err())
	}
}

func (o oneAtATime) Insert(ctx context.Context, d Def, j Job, mode insertMode) (bool, error) {
	if mode == insertNew { // a plain write
		return o.Store.Insert(ctx, d, j, mode)
	}
	done, err := o.turn(ctx, d, j.Shard)
	if err != nil {
		return false, err
	}
	defer done()
	return o.Store.Insert(ctx, d, j, mode)
}

func (o oneAtATime) Get(ctx context.Context, d Def, shard int, s slot) (*Job, error) {
	done, err := o.turn(ctx, d, shard)
	if err != nil {
		return nil, err
	}
	defer done()
	return o.Store.Get(ctx, d, shard, s)
}

func (o oneAtATime) Move(ctx context.Context, d Def, shard int, from slot, c cond, to ...*Job) (bool, *Job, error) {
	done, err := o.turn(ctx, d, shard)
	if err != nil {
		return false, nil, err
	}
	defer done()
	return o.Store.Move(ctx, d, shard, from, c, to...)
}

func (o oneAtATime) ClaimAll(ctx context.Context, d Def, shard int, from []slot, claims []*Job) (bool, []bool, error) {
	done, err := o.turn(ctx, d, shard)
	if err != nil {
		return false, nil, err
	}
	defer done()
	return o.Store.ClaimAll(ctx, d, shard, from, claims)
}
