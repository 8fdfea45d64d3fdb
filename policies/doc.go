// Package policies owns what the operator decides about data: which tables replicate and how
// (sync, async or off, and the conflict rule), how rows map to partitions, where each partition is
// owned and how ownership fails over. Policies are validated before they take effect; an invalid
// policy changes nothing.
//
// Today: table replication rules (Tables), which the binlog capture uses to select tables.
package policies
