package feeds

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// JetStreamConfig is the JetStream stream configuration of cfg: file storage, the feed's subjects,
// limits retention (messages are removed by age and size, not by consumption, so any number of
// subscribers read the same stream), the oldest messages discarded first, and the duplicate
// window.
func JetStreamConfig(cfg StreamConfig) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: "musicd change feed (docs/feeds.md)",
		Subjects:    Subjects{Prefix: cfg.SubjectPrefix}.streamSubjects(),
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		Duplicates:  cfg.DuplicateWindow,
		MaxMsgs:     -1,
	}
}

// EnsureStream creates the change feed's JetStream stream, or updates an existing one to cfg.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, JetStreamConfig(cfg))
	if err != nil {
		return nil, fmt.Errorf("feeds: stream %s: %w", cfg.Name, err)
	}
	return s, nil
}
