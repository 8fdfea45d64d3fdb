// Package journal owns the ordered, fenced streams that every change of musicd flows through: the
// entry type and its encoding (Encode, DecodeEntry), the hybrid logical clock (Clock), the Store
// interface, its Cassandra (CassandraStore) and embedded (EmbeddedStore, Pebble) implementations,
// and the conformance suite that both pass (store_conformance_test.go).
//
// A stream is gap-free (seq 1, 2, 3, ...) and has one writer at a time, enforced by the store
// through the writer's epoch (a fencing token from the lock service), never by an in-memory check.
// An append is atomic, durable on return at the configured consistency, and safe to retry.
// docs/journal.md describes the model, the encoding and the Cassandra append protocol.
//
// The package imports no other package of the project except the leaf internal/hostport.
package journal
