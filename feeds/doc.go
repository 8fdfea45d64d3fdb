// Package feeds owns musicd's use of NATS: the connection to a NATS cluster (Connect; credentials
// and TLS in distributed mode) or to the NATS server embedded in musicd (StartEmbedded); the
// change feed's JetStream stream (EnsureStream); the relay (Relay) that publishes every journal
// entry, whatever its source, once per (stream, seq) and in seq order per stream; the subjects
// (Subjects, EscapeToken), headers and JSON envelope (Envelope) of those messages; and the
// subscriber helper (Subscribe, Sequencer) that delivers each entry once, in order, from a
// position.
//
// NATS carries notifications only; the journal stays the truth: the relay re-reads the journal
// from its saved position, so nothing is lost across crashes or NATS outages. Nothing in this
// package decides what a change is. docs/feeds.md describes the subjects, the envelope, the
// stream and the guarantees; docs/decisions/0005-feeds.md how exactly-once and in-order
// delivery is achieved.
package feeds
