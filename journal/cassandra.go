package journal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
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
}

// DefaultCassandraConfig returns the defaults; ContactPoints must still be set.
func DefaultCassandraConfig() CassandraConfig {
	return CassandraConfig{
		Keyspace:       "music",
		Timeout:        5 * time.Second,
		ConnectTimeout: 5 * time.Second,
	}
}

var identRe = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_]{0,47}$`)

// Validate reports the first invalid field, named by its YAML key.
func (c CassandraConfig) Validate() error {
	if len(c.ContactPoints) == 0 {
		return errors.New("contact_points: at least one contact point is required")
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
	return nil
}

// Cassandra is an open session to the cluster.
type Cassandra struct {
	Session *gocql.Session
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
	return &Cassandra{Session: s}, nil
}

// Check reads the coordinator's release version: one real query.
func (c *Cassandra) Check(ctx context.Context) error {
	var v string
	if err := c.Session.Query("SELECT release_version FROM system.local").WithContext(ctx).Scan(&v); err != nil {
		return fmt.Errorf("cassandra: %w", err)
	}
	return nil
}

// Close closes the session and its connections.
func (c *Cassandra) Close() { c.Session.Close() }

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
