package feeds

import (
	"context"
	"fmt"
	"time"

	"github.com/musicd/musicd/journal"
)

// sweepPage is the number of stream ids one ListStreams call of a sweep reads.
const sweepPage = 1000

// RunSweeper finds, every cfg.Relay.SweepInterval until ctx ends, the streams under the given
// prefixes whose entries are not all confirmed in the change feed and that nobody is relaying,
// and follows them (Follow). It covers key streams, which their appenders follow only until idle:
// an appender that crashed between its append and the publication leaves entries that no one
// else would publish. Run one sweeper per journal (elected); it is cheap to run twice (the
// followers' duplicates are dropped by JetStream and the Sequencer), never harmful.
//
// A stream counts as abandoned when its relay position (consumer RelayConsumer) is below its
// head and did not move since the previous sweep, so that a stream relayed elsewhere right now is
// left to its relay. The first sweep follows every stream that is behind: it runs when a sweeper
// starts, typically after a crash or a fail-over.
func (r *Relay) RunSweeper(ctx context.Context, prefixes ...string) error {
	for _, p := range prefixes {
		if p == "" {
			return fmt.Errorf("feeds: sweeper: an empty prefix would sweep every stream")
		}
	}
	var behind map[string]uint64 // stream -> position at the previous sweep; nil before the first
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		next := map[string]uint64{}
		complete := true
		for _, p := range prefixes {
			if err := r.sweep(ctx, p, behind, next); err != nil {
				if ctx.Err() == nil {
					r.logger.Warn("change feed sweep failed; trying again at the next one", "prefix", p, "err", err)
				}
				complete = false
				break
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if complete { // an incomplete picture is not judged against: the previous one stays
			behind = next
		}
		t.Reset(r.cfg.SweepInterval)
	}
}

// sweep looks at every stream under prefix, records in next those behind, and follows those
// abandoned (see RunSweeper); prev == nil means the first sweep.
func (r *Relay) sweep(ctx context.Context, prefix string, prev, next map[string]uint64) error {
	after := ""
	for {
		lctx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
		ids, err := r.store.ListStreams(lctx, prefix, after, sweepPage)
		cancel()
		if err != nil {
			return fmt.Errorf("list streams after %q: %w", after, err)
		}
		for _, id := range ids {
			pos, head, err := r.behind(ctx, id)
			if err != nil {
				return err
			}
			if head <= pos {
				continue
			}
			next[id] = pos
			was, seen := prev[id]
			if prev == nil || (seen && was == pos) {
				if !r.Relaying(id) {
					r.m.swept.Inc()
					r.logger.Info("following a stream left unpublished", "stream", id, "position", pos, "head", head)
				}
				if err := r.Follow(id, head); err != nil {
					return err
				}
			}
		}
		if len(ids) < sweepPage {
			return nil
		}
		after = ids[len(ids)-1]
	}
}

// behind returns the relay position and the head of stream.
func (r *Relay) behind(ctx context.Context, stream string) (pos, head uint64, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.AckTimeout)
	defer cancel()
	if pos, _, err = r.store.Position(ctx, RelayConsumer, stream); err != nil {
		return 0, 0, fmt.Errorf("%s: relay position: %w", stream, err)
	}
	var h journal.Head
	if h, err = r.store.Head(ctx, stream); err != nil {
		return 0, 0, fmt.Errorf("%s: head: %w", stream, err)
	}
	return pos, h.Seq, nil
}
