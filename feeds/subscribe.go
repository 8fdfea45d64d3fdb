package feeds

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Change is one journal entry delivered by Subscribe.
type Change struct {
	Stream   string   // journal stream
	Seq      uint64   // seq in the journal stream
	Subject  string   // NATS subject it was published on
	Envelope Envelope // the decoded body
	Data     []byte   // the body as published
	// StreamSeq is the message's JetStream stream sequence. To resume after the last change
	// handled, subscribe with StartSeq = its StreamSeq + 1 and Positions = the last Seq handled
	// of every journal stream.
	StreamSeq uint64
}

// SubscribeOptions says where a subscription reads and from where.
type SubscribeOptions struct {
	// Stream is the JetStream stream (default "MUSIC_CHANGES").
	Stream string
	// Filter is a subject filter within the stream (default "music.changes.>"). It must let
	// whole journal streams through (e.g. "music.changes.shop.>" for a keyspace's key streams):
	// a filter that lets only part of a stream through (one table of a binlog stream that
	// captures several) leaves gaps in seq, and entries after a gap are taken for early copies
	// and dropped. For such filters use a plain JetStream consumer and drop duplicates by
	// (Music-Stream, Music-Seq).
	Filter string
	// StartSeq is the JetStream stream sequence to start at; 0 means StartTime, or the beginning.
	StartSeq uint64
	// StartTime starts at the first message stored at or after it (when StartSeq is 0).
	StartTime time.Time
	// Positions holds, per journal stream, the last seq already handled: those entries, and
	// copies of them, are not delivered again. A stream without a position starts at the first
	// message of it read, unless FromFirstSeq is set.
	Positions map[string]uint64
	// FromFirstSeq starts streams without a position at seq 1. Set it when reading a JetStream
	// stream that holds every journal stream from its first entry (nothing removed by
	// retention): then even an early copy stored before a stream's first entries (after a
	// failed publication) is recognized. Without it, such a copy would be taken as the start of
	// its stream and the entries it overtook skipped. With it, a stream whose first entries are
	// gone from the JetStream stream is never delivered.
	FromFirstSeq bool
}

// Subscribe reads the change feed with a JetStream ordered consumer (ephemeral, re-created by
// the client from the last message read after a reconnect or a lost message) and calls handler
// for each entry, one at a time, per journal stream in seq order and once (Sequencer): copies
// of entries already delivered are dropped, and so are copies stored ahead of an earlier entry
// (the relay stores that earlier entry again after them). It returns nil when ctx ends, or the
// first error of handler or of the subscription.
func Subscribe(ctx context.Context, js jetstream.JetStream, opts SubscribeOptions, handler func(ctx context.Context, c Change) error) error {
	if opts.Stream == "" {
		opts.Stream = "MUSIC_CHANGES"
	}
	if opts.Filter == "" {
		opts.Filter = Subjects{Prefix: "music"}.ChangesAll()
	}
	cc := jetstream.OrderedConsumerConfig{FilterSubjects: []string{opts.Filter}}
	switch {
	case opts.StartSeq > 0:
		cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, opts.StartSeq
	case !opts.StartTime.IsZero():
		t := opts.StartTime
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
	}
	cons, err := js.OrderedConsumer(ctx, opts.Stream, cc)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("feeds: subscribe to %s: %w", opts.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("feeds: subscribe to %s: %w", opts.Stream, err)
	}
	defer it.Stop()
	seqr := NewSequencer(opts.Positions, opts.FromFirstSeq)
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("feeds: subscription to %s: %w", opts.Stream, err)
		}
		stream := msg.Headers().Get(HeaderStream)
		seq, err := strconv.ParseUint(msg.Headers().Get(HeaderSeq), 10, 64)
		if stream == "" || err != nil {
			return fmt.Errorf("feeds: message on %s without valid %s and %s headers", msg.Subject(), HeaderStream, HeaderSeq)
		}
		if seqr.Next(stream, seq) != Deliver {
			continue
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("feeds: stream %s seq %d: %w", stream, seq, err)
		}
		env, err := DecodeEnvelope(msg.Data())
		if err != nil {
			return fmt.Errorf("feeds: stream %s seq %d: envelope: %w", stream, seq, err)
		}
		c := Change{Stream: stream, Seq: seq, Subject: msg.Subject(), Envelope: env, Data: msg.Data(), StreamSeq: meta.Sequence.Stream}
		if err := handler(ctx, c); err != nil {
			return err
		}
	}
}
