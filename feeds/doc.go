// Package feeds owns musicd's use of NATS: the connection to a NATS cluster (or to the NATS server
// embedded in musicd in embedded mode), and, as the project grows, the relay that publishes every
// appended journal entry once per (stream, seq) on core subjects and a JetStream stream, the JSON
// envelope of those messages, and helpers for subscribers that resume from a position.
//
// NATS carries notifications only; the journal stays the truth. Nothing in this package decides
// what a change is.
package feeds
