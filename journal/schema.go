package journal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/cenkalti/backoff/v4"
)

// migration is one step of the journal's Cassandra schema. Steps are applied in order, once, and
// recorded in musicd_schema; each statement is idempotent so that two daemons migrating at the
// same time, or one that died half-way, converge. CQL here is valid on Cassandra 2.1 through 5.x.
type migration struct {
	version    int
	statements []string // %[1]s is the keyspace
}

var journalMigrations = []migration{
	{version: 1, statements: []string{
		`CREATE TABLE IF NOT EXISTS %[1]s.journal_meta (key text PRIMARY KEY, value bigint)`,
		`CREATE TABLE IF NOT EXISTS %[1]s.journal_streams (stream text PRIMARY KEY, epoch bigint, head bigint, low bigint)`,
		`CREATE TABLE IF NOT EXISTS %[1]s.journal_entries (stream text, bucket bigint, seq bigint, data blob,
			PRIMARY KEY ((stream, bucket), seq)) WITH CLUSTERING ORDER BY (seq ASC)`,
		`CREATE TABLE IF NOT EXISTS %[1]s.journal_dir (class text, shard int, stream text, PRIMARY KEY ((class, shard), stream))`,
		`CREATE TABLE IF NOT EXISTS %[1]s.journal_consumers (stream text, consumer text, seq bigint, PRIMARY KEY (stream, consumer))`,
	}},
	{version: 2, statements: []string{
		// Compact streams (cassandra_compact.go): entries in the stream's partition, head in
		// static columns, appends as one conditional batch.
		`CREATE TABLE IF NOT EXISTS %[1]s.journal_compact (stream text, seq bigint, data blob,
			epoch bigint static, head bigint static, low bigint static,
			PRIMARY KEY (stream, seq)) WITH CLUSTERING ORDER BY (seq ASC)`,
	}},
	{version: 3, statements: []string{
		// Exclusive streams (cassandra_exclusive.go): bucketed entries with the bucket's head in a
		// static column, so that entries and head are written by one single-partition batch.
		`CREATE TABLE IF NOT EXISTS %[1]s.journal_exclusive (stream text, bucket bigint, seq bigint, data blob,
			head bigint static, PRIMARY KEY ((stream, bucket), seq)) WITH CLUSTERING ORDER BY (seq ASC)`,
	}},
}

// ExecDDL runs an idempotent schema statement (CREATE ... IF NOT EXISTS), each try bounded by
// 30 s (DDL waits for schema agreement). Daemons that start together race to create the same
// tables, and Cassandra 2.1 then fails all but one with "Column family ID mismatch" (or a
// conflicting schema change): ExecDDL waits for schema agreement and tries again, up to 5 times
// with backoff, after which the statement finds the table and does nothing.
func ExecDDL(ctx context.Context, s *gocql.Session, stmt string) error {
	b := backoff.WithContext(backoff.WithMaxRetries(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(200*time.Millisecond), backoff.WithMaxInterval(5*time.Second)), 5), ctx)
	return backoff.Retry(func() error {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		err := s.Query(stmt).WithContext(qctx).Exec()
		if err == nil || !isSchemaRace(err) {
			if err != nil {
				return backoff.Permanent(err)
			}
			return nil
		}
		_ = s.AwaitSchemaAgreement(qctx)
		return err
	}, b)
}

// isSchemaRace reports whether err is Cassandra refusing a schema change that raced another.
func isSchemaRace(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "Column family ID mismatch") || strings.Contains(msg, "conflicting") ||
		strings.Contains(msg, "schema version mismatch")
}

// migrate creates the keyspace and applies missing migrations. It returns the bucket size the
// keyspace was created with (fixed for its lifetime: changing it would misplace entries).
func migrate(ctx context.Context, s *gocql.Session, cfg CassandraConfig, logger *slog.Logger) (uint64, error) {
	repl, err := cfg.Replication.cql()
	if err != nil {
		return 0, err
	}
	ks := cfg.Keyspace
	exec := func(stmt string) error { return ExecDDL(ctx, s, stmt) }
	if err := exec(`CREATE KEYSPACE IF NOT EXISTS ` + ks + ` WITH replication = ` + repl); err != nil {
		return 0, fmt.Errorf("journal: create keyspace %s: %w", ks, err)
	}
	if err := exec(`CREATE TABLE IF NOT EXISTS ` + ks + `.musicd_schema (component text, version int, PRIMARY KEY (component, version))`); err != nil {
		return 0, fmt.Errorf("journal: create %s.musicd_schema: %w", ks, err)
	}
	applied := map[int]bool{}
	iter := s.Query(`SELECT version FROM `+ks+`.musicd_schema WHERE component = ?`, "journal").WithContext(ctx).Consistency(gocql.Quorum).Iter()
	var v int
	for iter.Scan(&v) {
		applied[v] = true
	}
	if err := iter.Close(); err != nil {
		return 0, fmt.Errorf("journal: read schema version: %w", err)
	}
	for _, m := range journalMigrations {
		if applied[m.version] {
			continue
		}
		logger.Info("journal: migrating Cassandra schema", "keyspace", ks, "version", m.version)
		for _, stmt := range m.statements {
			if err := exec(fmt.Sprintf(stmt, ks)); err != nil {
				return 0, fmt.Errorf("journal: migration %d: %w", m.version, err)
			}
		}
		if err := s.AwaitSchemaAgreement(ctx); err != nil {
			return 0, fmt.Errorf("journal: migration %d: schema agreement: %w", m.version, err)
		}
		if err := s.Query(`INSERT INTO `+ks+`.musicd_schema (component, version) VALUES (?, ?)`, "journal", m.version).
			WithContext(ctx).Consistency(gocql.Quorum).Exec(); err != nil {
			return 0, fmt.Errorf("journal: record migration %d: %w", m.version, err)
		}
	}
	// The bucket size is chosen once, by the first daemon to get there.
	var bucket int64
	if _, err := s.Query(`INSERT INTO `+ks+`.journal_meta (key, value) VALUES ('bucket_size', ?) IF NOT EXISTS`, int64(defaultBucket)).
		WithContext(ctx).Consistency(gocql.Quorum).MapScanCAS(map[string]any{}); err != nil {
		return 0, fmt.Errorf("journal: bucket size: %w", err)
	}
	if err := s.Query(`SELECT value FROM ` + ks + `.journal_meta WHERE key = 'bucket_size'`).WithContext(ctx).
		Consistency(gocql.Serial).Scan(&bucket); err != nil {
		return 0, fmt.Errorf("journal: bucket size: %w", err)
	}
	if bucket <= 0 {
		return 0, errors.New("journal: corrupt bucket size in journal_meta")
	}
	return uint64(bucket), nil
}
