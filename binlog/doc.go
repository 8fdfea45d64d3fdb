// Package binlog owns capture of MariaDB/MySQL changes with go-mysql: the configuration of source
// databases, GTID positions, row decoding with the schema carried by each event (never the live
// schema), DDL, transactions, the initial snapshot and the semi-synchronous acknowledgement.
//
// Today it holds the source configuration and a readiness check that logs in to each source.
package binlog
