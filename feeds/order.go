package feeds

// Ordering decisions, kept apart from the I/O that feeds them (docs/decisions/0005-feeds.md).
//
// The relay publishes entries asynchronously, several in flight. When a publication fails (NATS
// restarted, a lost connection, a leader change, an acknowledgement that timed out) a later one
// may still have been stored, so JetStream can hold entry k+1 before entry k. JetStream's
// acknowledgement names the stream sequence where the message is stored (for a duplicate: where
// the first copy is), so the relay can tell: it confirms an entry only when its copy lies after
// the confirmed copy of the entry before (inOrder). When one does not, the relay publishes again
// from that entry with message ids of a new run, which JetStream cannot drop as duplicates, so
// the stream always holds, after every confirmed entry, a copy of the next one. A subscriber that
// takes, per journal stream, only seq last+1 (Sequencer) therefore sees every entry once and in
// order, whatever duplicates and early copies the stream also holds.

// inOrder reports whether an acknowledged copy stored at JetStream sequence at may confirm the
// entry after the one confirmed at JetStream sequence prev (0: none confirmed in this relay's
// life yet, or a fresh start with no anchor: anything goes).
func inOrder(prev, at uint64) bool { return at > prev }

// Verdict is what a subscriber does with a message (Sequencer.Next).
type Verdict uint8

// Verdicts.
const (
	// Deliver: the next entry of its stream.
	Deliver Verdict = iota
	// Duplicate: an entry already delivered (seq <= last); drop it.
	Duplicate
	// Early: an entry after a gap (seq > last + 1): a copy stored out of order, which the relay
	// follows with an in-order copy; drop it. An early copy that is never followed means that
	// the JetStream stream lost entries to its retention limits before the subscriber read
	// them: read them from the journal or restart the subscriber from a later position.
	Early
)

func (v Verdict) String() string {
	switch v {
	case Deliver:
		return "deliver"
	case Duplicate:
		return "duplicate"
	case Early:
		return "early"
	}
	return "verdict(?)"
}

// Sequencer decides, per journal stream, which change-feed messages a subscriber delivers: each
// seq once, in order. It is pure and not safe for concurrent use. Its memory grows by one entry
// per journal stream seen.
type Sequencer struct {
	last      map[string]uint64
	fromFirst bool
}

// NewSequencer starts from positions: for each stream, the last seq already processed. A stream
// without a position starts at seq 1 if fromFirst is set, else at the first message seen of it
// (which, if it is an early copy, loses the entries it overtook: see SubscribeOptions).
func NewSequencer(positions map[string]uint64, fromFirst bool) *Sequencer {
	s := &Sequencer{last: make(map[string]uint64, len(positions)), fromFirst: fromFirst}
	for k, v := range positions {
		s.last[k] = v
	}
	return s
}

// Next returns the verdict on seq of stream, and records a delivery.
func (s *Sequencer) Next(stream string, seq uint64) Verdict {
	last, known := s.last[stream]
	if !known && s.fromFirst {
		known = true
	}
	switch {
	case !known || seq == last+1:
		s.last[stream] = seq
		return Deliver
	case seq <= last:
		return Duplicate
	default:
		return Early
	}
}

// Last returns the last seq delivered (or given as position) of stream.
func (s *Sequencer) Last(stream string) (uint64, bool) {
	v, ok := s.last[stream]
	return v, ok
}
