// Package applier owns replaying the streams of other sites into a local database: in seq order
// per stream (a gap is waited for, never skipped), one source transaction as one target
// transaction, the applier's position written in the same transaction as the rows (exactly-once
// effect), loop-safe writes that the local capture does not journal again, and conflict
// resolution by the table's policy. Decisions live in pure code; a thin loop does the I/O.
//
// Nothing is implemented yet; see the issue tracker.
package applier
