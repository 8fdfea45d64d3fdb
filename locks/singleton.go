package locks

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Campaigner is the part of Service a singleton needs.
type Campaigner interface {
	Campaign(ctx context.Context, election, candidate string) (*Leadership, error)
}

// ErrPermanent wraps an error of a singleton's run that campaigning again would not cure;
// RunElected returns it.
var ErrPermanent = errors.New("permanent")

// RunElected runs a singleton: it campaigns in election and, while it leads, runs fn with a
// context that ends when the leadership is lost and with the leadership's epoch (the fencing
// token the singleton stamps its writes with). When fn returns, it resigns and campaigns again,
// after a pause if fn failed (exponential backoff, at most 30 s apart). It returns nil when ctx
// ends, or fn's error when that wraps ErrPermanent.
func RunElected(ctx context.Context, c Campaigner, election, candidate string, logger *slog.Logger,
	fn func(ctx context.Context, epoch uint64) error) error {
	b := backoff.NewExponentialBackOff()
	b.MaxInterval = 30 * time.Second
	b.MaxElapsedTime = 0 // campaigning goes on while the daemon runs; ctx ends it
	pause := func(err error, what string) bool {
		wait := b.NextBackOff()
		logger.Warn(what, "election", election, "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
			return true
		}
	}
	for {
		lead, err := c.Campaign(ctx, election, candidate)
		if err != nil {
			if ctx.Err() != nil || !pause(err, "campaign failed; retrying") {
				return nil
			}
			continue
		}
		logger.Info("leading", "election", election, "epoch", lead.Epoch, "previous_unclean", lead.PreviousUnclean)
		runCtx, cancel := context.WithCancel(ctx)
		watched := make(chan struct{})
		go func() { // ends with runCtx at the latest
			defer close(watched)
			select {
			case <-lead.Lost():
				logger.Warn("leadership lost", "election", election)
				cancel()
			case <-runCtx.Done():
			}
		}()
		err = fn(runCtx, lead.Epoch)
		cancel()
		<-watched
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = lead.Resign(rctx)
		rcancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrPermanent):
			return err
		case err != nil:
			if !pause(err, "singleton stopped; campaigning again") {
				return nil
			}
		default:
			b.Reset()
		}
	}
}
