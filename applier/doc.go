// Package applier replays the journal streams of other sites into a local MariaDB database:
// in seq order per stream (a gap is waited for, never skipped), one goroutine per stream,
// one source transaction as one target transaction, the stream's position written in the same
// target transaction as the rows (exactly-once effect; a restart resumes there), on a session
// with skip_replication=1 so that the target's own capture does not journal the writes again
// (no echo) while native replicas still receive them.
//
// Decisions are pure code (decide.go): given an entry and the target's row state (exists,
// equals the entry's before image, last-writer clock from the row_clock table), they yield the
// SQL-level actions, resolving conflicts by last-writer-wins on the HLC timestamp, by site
// priority, or by keeping the target's row and dead-lettering the entry. The driver
// (applier.go, sql.go) reads the journal, reads the target's state under a lock, executes the
// actions with bound values and commits.
//
// Contract: Run blocks until its context ends; a stream whose entry the target refuses stops
// (ErrStopped, reported by Status) unless the policy dead-letters it; other streams go on.
// See docs/applier.md.
package applier
