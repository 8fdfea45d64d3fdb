// Package state owns the keyed tables behind the REST API: keyspaces, tables with typed columns and
// primary keys, and rows, stored as real Cassandra tables in distributed mode (so that operators
// can read them with cqlsh) and in Pebble in embedded mode, with the same behaviour (Backend, one
// conformance suite).
//
// Service is the write and read path. Every acknowledged write is first a journal entry, then
// applied to the table with its entry's timestamp (last-writer-wins per column, so replaying is
// harmless): critical, atomic and conditional writes in the key's own stream under the key lock's
// fencing token (the journal refuses a stale holder), eventual writes in this daemon's
// group-committed eventual log. A new lock holder catches the key up before its grant is
// returned. See docs/state.md.
package state
