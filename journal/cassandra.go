package journal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/cenkalti/backoff/v4"

	"github.com/musicd/musicd/internal/hostport"
)

// CassandraConfig says how musicd reaches its Cassandra cluster (distributed mode).
type CassandraConfig struct {
	// ContactPoints are host or host:port of some nodes of the cluster (the driver discovers the
	// rest). Port defaults to 9042.
	ContactPoints []string `yaml:"contact_points" help:"Cassandra contact points, host[:port] (comma-separated)"`
	// LocalDC is this site's data center: queries go to its nodes first, and LOCAL_* consistency
	// levels refer to it. Empty means the driver's default round robin over all nodes.
	LocalDC string `yaml:"local_dc" help:"Cassandra data center of this site (LOCAL_* consistency refers to it)"`
	// Keyspace holds musicd's own tables. Default "music".
	Keyspace string `yaml:"keyspace" help:"keyspace of musicd's own tables"`
	// Username and Password enable PasswordAuthenticator when Username is set.
	Username string `yaml:"username" help:"Cassandra user name (empty: no authentication)"`
	Password string `yaml:"password" help:"Cassandra password" secret:"true"`
	// ProtocolVersion of the native protocol; 0 negotiates. Cassandra 2.1 needs 3.
	ProtocolVersion int `yaml:"protocol_version" help:"native protocol version (0 negotiates; Cassandra 2.1 needs 3)"`
	// Timeout bounds each query. Default 5s.
	Timeout time.Duration `yaml:"timeout" help:"time limit of one Cassandra query"`
	// ConnectTimeout bounds each connection attempt. Default 5s.
	ConnectTimeout time.Duration `yaml:"connect_timeout" help:"time limit of one Cassandra connection attempt"`
	// Replication of the keyspace when musicd creates it (an existing keyspace is left as it is).
	Replication ReplicationConfig `yaml:"replication"`
	// Consistency of the journal's queries for every stream class not named in StreamClasses.
	Consistency ConsistencyConfig `yaml:"consistency"`
	// StreamClasses overrides Consistency per stream class (the part of a stream id before the
	// first '/', e.g. "binlog" or "key"); levels a class leaves empty come from Consistency.
	// Config file only.
	StreamClasses map[string]ConsistencyConfig `yaml:"stream_classes"`
	// CompactClasses lists the stream classes kept in the compact layout: a stream's entries in
	// its own partition, each append one conditional batch, safe for several processes appending
	// under the same epoch (REST keys, class "kv"). See docs/journal.md.
	CompactClasses []string `yaml:"compact_classes" help:"stream classes kept in the compact layout (one partition per stream, one conditional batch per append)"`
	// ExclusiveClasses lists the stream classes whose stream ids name their one writer's epoch
	// (the REST eventual logs, class "kvlog": kvlog/<site>/<instance>/<shard>/<epoch>): no other
	// writer can exist, so appends commit with a plain write instead of a lightweight
	// transaction. See docs/journal.md.
	ExclusiveClasses []string `yaml:"exclusive_classes" help:"stream classes whose ids name their one writer's epoch (appends commit without a lightweight transaction)"`

	// QueryObserver and BatchObserver, when set, see every statement and batch the session runs
	// (the benchmarks count statements and lightweight transactions with them).
	QueryObserver gocql.QueryObserver `yaml:"-"`
	BatchObserver gocql.BatchObserver `yaml:"-"`
}

// ReplicationConfig is the replication of musicd's keyspace.
type ReplicationConfig struct {
	// Strategy is "simple" (SimpleStrategy: one data center) or "network_topology"
	// (NetworkTopologyStrategy: a replica count per data center, for multi-site clusters).
	Strategy string `yaml:"strategy" help:"keyspace replication when musicd creates it: simple or network_topology"`
	// Factor is the replica count of the simple strategy. Default 1.
	Factor int `yaml:"factor" help:"replicas of the simple strategy"`
	// DataCenters maps each data center to its replica count (network_topology). Config file only.
	DataCenters map[string]int `yaml:"data_centers"`
}

// ConsistencyConfig names Cassandra consistency levels for one stream class.
type ConsistencyConfig struct {
	// Write is the level of entry writes and of the commit of the per-batch lightweight
	// transaction: LOCAL_QUORUM (durable in this site), QUORUM or EACH_QUORUM (durable beyond it).
	Write string `yaml:"write" help:"consistency of journal writes: LOCAL_QUORUM, QUORUM, EACH_QUORUM, ONE, ALL"`
	// Read is the level of reads of entries and heads: LOCAL_QUORUM, QUORUM, ONE, ...
	Read string `yaml:"read" help:"consistency of journal reads: LOCAL_QUORUM, QUORUM, ONE, ALL"`
	// Serial is the Paxos level of the fencing transactions: SERIAL (one writer across all sites)
	// or LOCAL_SERIAL (only when a class's streams are written from one site).
	Serial string `yaml:"serial" help:"Paxos consistency of fenced appends: SERIAL or LOCAL_SERIAL"`
}

// DefaultCassandraConfig returns the defaults; ContactPoints must still be set.
func DefaultCassandraConfig() CassandraConfig {
	return CassandraConfig{
		CompactClasses:   []string{"kv"},
		ExclusiveClasses: []string{"kvlog"},
		Keyspace:         "music",
		Timeout:          5 * time.Second,
		ConnectTimeout:   5 * time.Second,
		Replication:      ReplicationConfig{Strategy: "simple", Factor: 1},
		Consistency:      ConsistencyConfig{Write: "LOCAL_QUORUM", Read: "LOCAL_QUORUM", Serial: "SERIAL"},
	}
}

var identRe = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]{0,47}$`)

// Validate reports the first invalid field, named by its YAML key.
func (c CassandraConfig) Validate() error {
	if len(c.ContactPoints) == 0 {
		return errors.New("contact_points: at least one contact point is required")
	}
	for i, class := range c.CompactClasses {
		if class == "" || strings.ContainsAny(class, "/ ") || ValidateStreamID(class+"/x") != nil {
			return fmt.Errorf("compact_classes[%d]: %q is not a stream class (printable ASCII without '/' or spaces)", i, class)
		}
	}
	for i, class := range c.ExclusiveClasses {
		if class == "" || strings.ContainsAny(class, "/ ") || ValidateStreamID(class+"/x") != nil {
			return fmt.Errorf("exclusive_classes[%d]: %q is not a stream class (printable ASCII without '/' or spaces)", i, class)
		}
		if slices.Contains(c.CompactClasses, class) {
			return fmt.Errorf("exclusive_classes[%d]: %q is also a compact class", i, class)
		}
	}
	for i, cp := range c.ContactPoints {
		if !strings.Contains(cp, ":") {
			cp += ":9042" // a bare host (IPv6 addresses need brackets and a port)
		}
		if err := hostport.Validate(cp, false, false); err != nil {
			return fmt.Errorf("contact_points[%d]: %w", i, err)
		}
	}
	if !identRe.MatchString(c.Keyspace) {
		return fmt.Errorf("keyspace: %q is not a valid name (letter, then letters, digits or _, at most 48)", c.Keyspace)
	}
	if c.ProtocolVersion != 0 && (c.ProtocolVersion < 3 || c.ProtocolVersion > 5) {
		return fmt.Errorf("protocol_version: %d is not 0 (negotiate), 3, 4 or 5", c.ProtocolVersion)
	}
	if c.Timeout <= 0 {
		return errors.New("timeout: must be a positive duration")
	}
	if c.ConnectTimeout <= 0 {
		return errors.New("connect_timeout: must be a positive duration")
	}
	if _, err := c.Replication.cql(); err != nil {
		return fmt.Errorf("replication.%w", err)
	}
	if _, err := c.Consistency.parse(); err != nil {
		return fmt.Errorf("consistency.%w", err)
	}
	for class, cc := range c.StreamClasses {
		if err := ValidateStreamID(class); err != nil || strings.Contains(class, "/") {
			return fmt.Errorf("stream_classes: %q is not a stream class", class)
		}
		if _, err := cc.inherit(c.Consistency).parse(); err != nil {
			return fmt.Errorf("stream_classes.%s.%w", class, err)
		}
	}
	return nil
}

// cql renders the replication map of CREATE KEYSPACE. Data center names are validated, so the
// text is safe to splice (CQL has no bind markers in DDL).
func (r ReplicationConfig) cql() (string, error) {
	switch r.Strategy {
	case "simple":
		if r.Factor < 1 || r.Factor > 10 {
			return "", fmt.Errorf("factor: %d is outside 1-10", r.Factor)
		}
		if len(r.DataCenters) > 0 {
			return "", errors.New("data_centers: set, but strategy is simple")
		}
		return fmt.Sprintf("{'class': 'SimpleStrategy', 'replication_factor': %d}", r.Factor), nil
	case "network_topology":
		if len(r.DataCenters) == 0 {
			return "", errors.New("data_centers: at least one data center is required for network_topology")
		}
		dcs := make([]string, 0, len(r.DataCenters))
		for dc := range r.DataCenters {
			dcs = append(dcs, dc)
		}
		slices.Sort(dcs)
		out := "{'class': 'NetworkTopologyStrategy'"
		for _, dc := range dcs {
			n := r.DataCenters[dc]
			if !dcNameRe.MatchString(dc) {
				return "", fmt.Errorf("data_centers: %q is not a valid data center name", dc)
			}
			if n < 1 || n > 10 {
				return "", fmt.Errorf("data_centers.%s: %d replicas is outside 1-10", dc, n)
			}
			out += fmt.Sprintf(", '%s': %d", dc, n)
		}
		return out + "}", nil
	default:
		return "", fmt.Errorf("strategy: %q is not simple or network_topology", r.Strategy)
	}
}

var dcNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// levels are the parsed consistency levels of one stream class.
type levels struct{ write, read, serial gocql.Consistency }

// inherit fills the levels c leaves empty from def.
func (c ConsistencyConfig) inherit(def ConsistencyConfig) ConsistencyConfig {
	if c.Write == "" {
		c.Write = def.Write
	}
	if c.Read == "" {
		c.Read = def.Read
	}
	if c.Serial == "" {
		c.Serial = def.Serial
	}
	return c
}

func (c ConsistencyConfig) parse() (levels, error) {
	var l levels
	var err error
	if l.write, err = parseLevel(c.Write, "LOCAL_QUORUM", "QUORUM", "EACH_QUORUM", "ONE", "ALL", "LOCAL_ONE"); err != nil {
		return l, fmt.Errorf("write: %w", err)
	}
	if l.read, err = parseLevel(c.Read, "LOCAL_QUORUM", "QUORUM", "ONE", "ALL", "LOCAL_ONE"); err != nil {
		return l, fmt.Errorf("read: %w", err)
	}
	if l.serial, err = parseLevel(c.Serial, "SERIAL", "LOCAL_SERIAL"); err != nil {
		return l, fmt.Errorf("serial: %w", err)
	}
	return l, nil
}

func parseLevel(s string, allowed ...string) (gocql.Consistency, error) {
	if !slices.Contains(allowed, s) {
		return 0, fmt.Errorf("%q is not one of %s", s, strings.Join(allowed, ", "))
	}
	return gocql.ParseConsistencyWrapper(s)
}

// Cassandra is an open session to the cluster.
type Cassandra struct {
	Session *gocql.Session
	log     *slog.Logger
}

// DialCassandra opens a session, retrying with exponential backoff until ctx ends. The driver
// then keeps reconnecting to nodes by itself while the session is open.
func DialCassandra(ctx context.Context, cfg CassandraConfig, logger *slog.Logger) (*Cassandra, error) {
	cluster := gocql.NewCluster(cfg.ContactPoints...)
	cluster.ProtoVersion = cfg.ProtocolVersion
	cluster.Timeout = cfg.Timeout
	cluster.ConnectTimeout = cfg.ConnectTimeout
	cluster.Consistency = gocql.LocalQuorum
	cluster.Logger = cqlLogger{logger.With("component", "gocql")}
	// Ask for result metadata with every response instead of decoding with what was cached when
	// the statement was prepared: under load (many sessions, thousands of conditional batches)
	// Cassandra 2.1 with the cached metadata intermittently decoded rows as empty (an existing
	// row read as missing, a text column as ""), which TestLinearizability caught as lost writes
	// in about half of its runs; with metadata in each response, none in the runs since.
	cluster.DisableSkipMetadata = true
	cluster.QueryObserver = cfg.QueryObserver
	cluster.BatchObserver = cfg.BatchObserver
	if cfg.LocalDC != "" {
		cluster.PoolConfig.HostSelectionPolicy = gocql.TokenAwareHostPolicy(gocql.DCAwareRoundRobinPolicy(cfg.LocalDC))
	}
	if cfg.Username != "" {
		cluster.Authenticator = gocql.PasswordAuthenticator{Username: cfg.Username, Password: cfg.Password}
	}
	var s *gocql.Session
	op := func() error {
		var err error
		s, err = cluster.CreateSession()
		if err != nil {
			logger.Warn("cassandra connect failed; retrying", "contact_points", cfg.ContactPoints, "err", err)
		}
		return err
	}
	if err := backoff.Retry(op, backoff.WithContext(backoff.NewExponentialBackOff(), ctx)); err != nil {
		return nil, fmt.Errorf("cassandra %v: %w", cfg.ContactPoints, err)
	}
	return &Cassandra{Session: s, log: logger}, nil
}

// Check reads the coordinator's release version: one real query.
func (c *Cassandra) Check(ctx context.Context) error {
	var v string
	if err := c.Session.Query("SELECT release_version FROM system.local").WithContext(ctx).Scan(&v); err != nil {
		return fmt.Errorf("cassandra: %w", err)
	}
	return nil
}

// closeWait bounds Close.
const closeWait = 2 * time.Second

// Close closes the session and its connections, waiting at most closeWait. The driver (v2.1.2)
// can deadlock in Session.Close while its control connection is reconnecting (Cassandra down or
// just restarted): Close stops the schema refresher first, and the reconnect then waits forever
// for a schema refresh while Close waits for the reconnect. Close then gives up, logs it, and
// leaves the driver's goroutines behind (the process is usually exiting).
func (c *Cassandra) Close() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Session.Close()
	}()
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		if c.log != nil {
			c.log.Warn("closing the Cassandra session did not finish; leaving it (a driver deadlock while reconnecting)", "waited", closeWait)
		}
	}
}

// cqlLogger routes the driver's log lines to slog.
type cqlLogger struct{ l *slog.Logger }

func attrs(fields []gocql.LogField) []any {
	out := make([]any, 0, 2*len(fields))
	for _, f := range fields {
		out = append(out, f.Name, f.Value.String())
	}
	return out
}

func (c cqlLogger) Error(msg string, f ...gocql.LogField)   { c.l.Error(msg, attrs(f)...) }
func (c cqlLogger) Warning(msg string, f ...gocql.LogField) { c.l.Warn(msg, attrs(f)...) }
func (c cqlLogger) Info(msg string, f ...gocql.LogField)    { c.l.Debug(msg, attrs(f)...) }
func (c cqlLogger) Debug(msg string, f ...gocql.LogField)   { c.l.Debug(msg, attrs(f)...) }
