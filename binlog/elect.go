package binlog

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/musicd/musicd/locks"
)

// Elector is what an elected capture needs from the lock service.
type Elector interface {
	Campaign(ctx context.Context, election, candidate string) (*locks.Leadership, error)
}

// Election is the name of the election among a site's musicd instances for this capture.
func (c *Capture) Election() string { return "capture." + c.cfg.Site + "." + c.cfg.Source.Name }

// RunElected campaigns for the capture of this source and captures while it leads, with the
// leadership's epoch as the stream's fencing token: a standby takes over from the last journaled
// GTID, and a former leader that has not noticed its loss can no longer append. It returns nil
// when ctx ends, or ErrNotCapturable.
func (c *Capture) RunElected(ctx context.Context, e Elector, candidate string) error {
	b := backoff.NewExponentialBackOff()
	b.MaxInterval = 30 * time.Second
	b.MaxElapsedTime = 0 // campaigning goes on while the daemon runs; ctx ends it
	for {
		lead, err := e.Campaign(ctx, c.Election(), candidate)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			wait := b.NextBackOff()
			c.logger.Warn("campaign for the capture failed; retrying", "err", err, "in", wait)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			continue
		}
		b.Reset()
		c.logger.Info("leading the capture", "epoch", lead.Epoch, "previous_unclean", lead.PreviousUnclean)
		runCtx, cancel := context.WithCancel(ctx)
		lost := make(chan struct{})
		go func() { // ends with runCtx at the latest
			defer close(lost)
			select {
			case <-lead.Lost():
				c.logger.Warn("capture leadership lost")
				cancel()
			case <-runCtx.Done():
			}
		}()
		err = c.Supervise(runCtx, lead.Epoch)
		cancel()
		<-lost
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = lead.Resign(rctx)
		rcancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrNotCapturable):
			return err
		case err != nil:
			c.logger.Warn("capture stopped; campaigning again", "err", err)
		}
	}
}
