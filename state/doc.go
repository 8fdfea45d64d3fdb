// Package state owns the keyed tables behind the REST API: keyspaces, tables with typed columns and
// primary keys, and rows, stored as real Cassandra tables in distributed mode (so that operators
// can read them with cqlsh) and in the embedded store in embedded mode, with the same behaviour.
// Every acknowledged write is first a journal entry in the key's stream.
//
// Nothing is implemented yet; see the issue tracker.
package state
