// Package journal owns the ordered, fenced streams that every change of musicd flows through: the
// entry type and its encoding, the Store interface, its Cassandra and embedded implementations, and
// one conformance suite that both pass.
//
// A stream is gap-free (seq 1, 2, 3, ...) and has one writer at a time, enforced by the store
// through the writer's epoch (a fencing token), never by an in-memory check.
//
// Today the package holds the Cassandra connection (configuration, session, readiness check) that
// the store will be built on. It imports no other package of the project.
package journal
