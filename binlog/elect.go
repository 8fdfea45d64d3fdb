package binlog

import (
	"context"
	"errors"
	"fmt"

	"github.com/musicd/musicd/locks"
)

// Election is the name of the election among a site's musicd instances for this capture.
func (c *Capture) Election() string { return "capture." + c.cfg.Site + "." + c.cfg.Source.Name }

// RunElected campaigns for the capture of this source and captures while it leads, with the
// leadership's epoch as the stream's fencing token: a standby takes over from the last journaled
// GTID, and a former leader that has not noticed its loss can no longer append. It returns nil
// when ctx ends, or an error wrapping ErrNotCapturable.
func (c *Capture) RunElected(ctx context.Context, e locks.Campaigner, candidate string) error {
	return locks.RunElected(ctx, e, c.Election(), candidate, c.logger, func(ctx context.Context, epoch uint64) error {
		err := c.Supervise(ctx, epoch)
		if errors.Is(err, ErrNotCapturable) {
			return fmt.Errorf("%w: %w", locks.ErrPermanent, err)
		}
		return err
	})
}
