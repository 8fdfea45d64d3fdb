package journal

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// dialTest connects to the test Cassandra and creates a keyspace of the test's own, dropped at the
// end (Cassandra 2.1 misbehaves when a table is dropped and re-created under the same name).
func dialTest(t testing.TB) (*Cassandra, string) {
	t.Helper()
	cfg := DefaultCassandraConfig()
	cfg.ContactPoints = []string{testenv.Cassandra(t)}
	cfg.Timeout = 10 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := DialCassandra(ctx, cfg, discard())
	if err != nil {
		t.Fatal(err)
	}
	ks := testenv.UniqueName("musicd_test_")
	if err := c.Session.Query(`CREATE KEYSPACE ` + ks + ` WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`).Exec(); err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Session.Query(`DROP KEYSPACE ` + ks).Exec(); err != nil {
			t.Errorf("drop keyspace %s: %v", ks, err)
		}
		c.Close()
	})
	return c, ks
}

// The harness test: a real session does real reads, writes and a lightweight transaction.
func TestCassandraRoundTrip(t *testing.T) {
	c, ks := dialTest(t)
	ctx := context.Background()
	if err := c.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	var version string
	if err := c.Session.Query(`SELECT release_version FROM system.local`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	t.Logf("Cassandra %s", version)

	s := c.Session
	if err := s.Query(`CREATE TABLE ` + ks + `.kv (k text PRIMARY KEY, v text, n bigint)`).Exec(); err != nil {
		t.Fatal(err)
	}
	if err := s.Query(`INSERT INTO `+ks+`.kv (k, v, n) VALUES (?, ?, ?)`, "a", "one", int64(1)).Exec(); err != nil {
		t.Fatal(err)
	}
	var v string
	var n int64
	if err := s.Query(`SELECT v, n FROM `+ks+`.kv WHERE k = ?`, "a").Scan(&v, &n); err != nil || v != "one" || n != 1 {
		t.Fatalf("read back (%q, %d, %v), want (one, 1, nil)", v, n, err)
	}

	// Lightweight transactions: the first insert applies, the second sees the existing row.
	m := map[string]any{}
	applied, err := s.Query(`INSERT INTO `+ks+`.kv (k, v) VALUES (?, ?) IF NOT EXISTS`, "b", "first").MapScanCAS(m)
	if err != nil || !applied {
		t.Fatalf("first LWT insert: applied=%v err=%v", applied, err)
	}
	m = map[string]any{}
	applied, err = s.Query(`INSERT INTO `+ks+`.kv (k, v) VALUES (?, ?) IF NOT EXISTS`, "b", "second").MapScanCAS(m)
	if err != nil || applied || m["v"] != "first" {
		t.Fatalf("second LWT insert: applied=%v existing=%v err=%v, want not applied with v=first", applied, m, err)
	}
	// A conditional update on a column value (the shape of a fenced append).
	applied, err = s.Query(`UPDATE `+ks+`.kv SET v = ? WHERE k = ? IF v = ?`, "third", "b", "first").ScanCAS()
	if err != nil || !applied {
		t.Fatalf("conditional update: applied=%v err=%v", applied, err)
	}
}

func TestCassandraConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		mut  func(*CassandraConfig)
		want string
	}{
		{func(c *CassandraConfig) {}, ""},
		{func(c *CassandraConfig) { c.ContactPoints = nil }, "contact_points:"},
		{func(c *CassandraConfig) { c.ContactPoints = []string{"h:99999"} }, "contact_points[0]:"},
		{func(c *CassandraConfig) { c.ContactPoints = []string{"[::1]:9042"} }, ""},
		{func(c *CassandraConfig) { c.Keyspace = "1abc" }, "keyspace:"},
		{func(c *CassandraConfig) { c.ProtocolVersion = 2 }, "protocol_version:"},
		{func(c *CassandraConfig) { c.Timeout = 0 }, "timeout:"},
		{func(c *CassandraConfig) {
			c.Replication = ReplicationConfig{Strategy: "network_topology", DataCenters: map[string]int{"dc1": 3, "dc2": 2}}
		}, ""},
		{func(c *CassandraConfig) {
			c.Replication = ReplicationConfig{Strategy: "network_topology", DataCenters: map[string]int{"dc1'; DROP": 3}}
		}, "replication.data_centers:"},
		{func(c *CassandraConfig) { c.Replication.Factor = 0 }, "replication.factor:"},
		{func(c *CassandraConfig) { c.Consistency.Serial = "QUORUM" }, "consistency.serial:"},
		{func(c *CassandraConfig) {
			c.StreamClasses = map[string]ConsistencyConfig{"binlog": {Write: "EACH_QUORUM", Read: "LOCAL_QUORUM", Serial: "SERIAL"}}
		}, ""},
		{func(c *CassandraConfig) { c.StreamClasses = map[string]ConsistencyConfig{"a/b": c.Consistency} }, "stream_classes:"},
	} {
		c := DefaultCassandraConfig()
		c.ContactPoints = []string{"127.0.0.1"}
		tc.mut(&c)
		err := c.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.HasPrefix(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want prefix %q", c, err, tc.want)
		}
	}
}

// A session against a port where nothing listens gives up when its context ends.
func TestDialCassandraGivesUp(t *testing.T) {
	cfg := DefaultCassandraConfig()
	cfg.ContactPoints = []string{"127.0.0.1:1"}
	cfg.ConnectTimeout = 200 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := DialCassandra(ctx, cfg, discard()); err == nil {
		t.Fatal("connected to nothing")
	}
}
