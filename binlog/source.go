package binlog

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/musicd/musicd/internal/hostport"
	"github.com/musicd/musicd/policies"
)

// SourceConfig describes one MariaDB/MySQL database whose binary log musicd reads.
type SourceConfig struct {
	// Name identifies the source in streams, metrics and logs ([a-z0-9_-], at most 64).
	Name string `yaml:"name"`
	// Addr is host:port of the server.
	Addr string `yaml:"addr"`
	// User and Password of an account with REPLICATION SLAVE, REPLICATION CLIENT and SELECT.
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	// Flavor is "mariadb" (default) or "mysql".
	Flavor string `yaml:"flavor"`
	// ServerID is the replica server id musicd uses on this source; it must differ from the
	// source's own server_id and from every other replica's. Required.
	ServerID uint32 `yaml:"server_id"`
	// Timeout bounds connecting and each statement. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// Tables selects the tables captured and how they replicate (first matching rule wins; no
	// match: not captured).
	Tables policies.Tables `yaml:"tables"`
	// StartPosition is the GTID position a new capture starts after (e.g. "1-1-1000"); empty
	// means the server's current position. Once the source's stream has entries, capture
	// resumes from the journal and this is ignored.
	StartPosition string `yaml:"start_position"`
	// Snapshot says whether tables whose rows were never journaled (every selected table of a new
	// stream, a table added to the selection later) are first read whole into the stream:
	// "initial" (default for MariaDB) or "never" (default for MySQL, where it is not supported).
	Snapshot string `yaml:"snapshot"`
	// SnapshotChunkRows is the number of rows read per snapshot chunk (default 1000; a chunk also
	// stays under 8 MiB).
	SnapshotChunkRows int `yaml:"snapshot_chunk_rows"`
}

// Snapshot modes of SourceConfig.Snapshot.
const (
	SnapshotInitial = "initial"
	SnapshotNever   = "never"
)

var sourceNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// WithDefaults fills the fields left empty.
func (c SourceConfig) WithDefaults() SourceConfig {
	if c.Flavor == "" {
		c.Flavor = mysql.MariaDBFlavor
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Snapshot == "" {
		c.Snapshot = SnapshotInitial
		if c.Flavor == mysql.MySQLFlavor {
			c.Snapshot = SnapshotNever
		}
	}
	if c.SnapshotChunkRows == 0 {
		c.SnapshotChunkRows = 1000
	}
	return c
}

// Validate reports the first invalid field, named by its YAML key.
func (c SourceConfig) Validate() error {
	if !sourceNameRe.MatchString(c.Name) {
		return fmt.Errorf("name: %q must be 1-64 of a-z, 0-9, _ and -, starting with a letter or digit", c.Name)
	}
	if err := hostport.Validate(c.Addr, false, false); err != nil {
		return fmt.Errorf("addr: %w", err)
	}
	if c.User == "" {
		return errors.New("user: required")
	}
	if c.Flavor != mysql.MariaDBFlavor && c.Flavor != mysql.MySQLFlavor {
		return fmt.Errorf("flavor: %q is not mariadb or mysql", c.Flavor)
	}
	if c.ServerID == 0 {
		return errors.New("server_id: required, and distinct from the source's own server_id")
	}
	if c.Timeout <= 0 {
		return errors.New("timeout: must be a positive duration")
	}
	if err := c.Tables.Validate(); err != nil {
		return fmt.Errorf("tables%w", err)
	}
	switch {
	case c.Snapshot != SnapshotInitial && c.Snapshot != SnapshotNever:
		return fmt.Errorf("snapshot: %q is not initial or never", c.Snapshot)
	case c.Snapshot == SnapshotInitial && c.Flavor == mysql.MySQLFlavor:
		return errors.New("snapshot: initial is supported for MariaDB sources only (set never)")
	case c.SnapshotChunkRows < 1 || c.SnapshotChunkRows > 10000:
		return fmt.Errorf("snapshot_chunk_rows: %d is not in 1..10000", c.SnapshotChunkRows)
	}
	if c.StartPosition != "" {
		var err error
		if c.Flavor == mysql.MariaDBFlavor {
			_, err = mysql.ParseMariadbGTIDSet(c.StartPosition)
		} else {
			_, err = mysql.ParseMysqlGTIDSet(c.StartPosition)
		}
		if err != nil {
			return fmt.Errorf("start_position: %q is not a GTID position: %v", c.StartPosition, err)
		}
	}
	return nil
}

// Connect opens a client connection to the source, bounded by ctx and the source's timeout.
func Connect(ctx context.Context, c SourceConfig) (*client.Conn, error) {
	setTimeouts := func(conn *client.Conn) error {
		conn.ReadTimeout, conn.WriteTimeout = c.Timeout, c.Timeout
		return nil
	}
	conn, err := client.ConnectWithContext(ctx, c.Addr, c.User, c.Password, "", c.Timeout, setTimeouts)
	if err != nil {
		return nil, fmt.Errorf("source %s (%s): %w", c.Name, c.Addr, err)
	}
	return conn, nil
}

// Ping logs in to the source and pings it: the readiness check of a source.
func Ping(ctx context.Context, c SourceConfig) error {
	conn, err := Connect(ctx, c)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.Ping(); err != nil {
		return fmt.Errorf("source %s (%s): %w", c.Name, c.Addr, err)
	}
	return nil
}
