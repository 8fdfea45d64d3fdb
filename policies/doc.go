// Package policies owns what the operator decides about data: which tables replicate and how
// (sync, async or off, and the conflict rule), how rows map to partitions, where each partition is
// owned and how ownership fails over. Policies are validated before they take effect; an invalid
// policy changes nothing.
//
// Today: table rules (Tables: the mode, which the binlog capture uses to select tables, and the
// conflict resolution, which the appliers use), and the ownership policy (Ownership: partitions,
// placement, moves and drains, and the ownership map computed from the live sites), which nothing
// uses yet (see docs/ownership.md).
package policies
