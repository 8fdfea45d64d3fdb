package binlog

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/musicd/musicd/internal/testenv"
)

func testSource(addr string, name string) SourceConfig {
	return SourceConfig{Name: name, Addr: addr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword, ServerID: 4100}.WithDefaults()
}

func queryString(t *testing.T, src SourceConfig, q string) string {
	t.Helper()
	conn, err := Connect(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, err := conn.Execute(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	s, err := r.GetString(0, 0)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

// The harness test, for each site's MariaDB: the server is set up for capture (ROW, FULL images
// and metadata, GTID domain and server id of its own), a committed row reads back, and the binary
// log, read as a replica from the GTID position before the write, carries that row with its
// column names.
func TestMariaDBSites(t *testing.T) {
	sites := []struct {
		name, addr string
		id         string
	}{
		{"a", testenv.MariaDBA(t), "1"},
		{"b", testenv.MariaDBB(t), "2"},
	}
	for _, site := range sites {
		t.Run("site-"+site.name, func(t *testing.T) {
			src := testSource(site.addr, "site-"+site.name)
			if err := Ping(context.Background(), src); err != nil {
				t.Fatalf("Ping: %v", err)
			}
			for q, want := range map[string]string{
				"SELECT @@server_id":           site.id,
				"SELECT @@gtid_domain_id":      site.id,
				"SELECT @@binlog_format":       "ROW",
				"SELECT @@binlog_row_image":    "FULL",
				"SELECT @@binlog_row_metadata": "FULL",
				"SELECT @@log_bin":             "1",
			} {
				if got := queryString(t, src, q); got != want {
					t.Errorf("%s = %q, want %q", q, got, want)
				}
			}
			captureOneRow(t, src)
		})
	}
}

func captureOneRow(t *testing.T, src SourceConfig) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := Connect(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	db := testenv.UniqueName("musicd_test_")
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := conn.Execute(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec("CREATE DATABASE " + db)
	t.Cleanup(func() {
		c, err := Connect(context.Background(), src)
		if err == nil {
			_, _ = c.Execute("DROP DATABASE IF EXISTS " + db)
			c.Close()
		}
	})
	exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, note VARCHAR(32))")
	pos := queryString(t, src, "SELECT @@gtid_current_pos")

	host, portStr, _ := net.SplitHostPort(src.Addr)
	port, _ := strconv.Atoi(portStr)
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: src.ServerID + uint32(time.Now().UnixNano()%1000), Flavor: mysql.MariaDBFlavor,
		Host: host, Port: uint16(port), User: src.User, Password: src.Password,
		MaxReconnectAttempts: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	defer syncer.Close()
	gset, err := mysql.ParseMariadbGTIDSet(pos)
	if err != nil {
		t.Fatalf("gtid %q: %v", pos, err)
	}
	streamer, err := syncer.StartSyncGTID(gset)
	if err != nil {
		t.Fatal(err)
	}

	exec("INSERT INTO "+db+".t (id, note) VALUES (?, ?)", 7, "seven")
	if got := queryString(t, src, "SELECT note FROM "+db+".t WHERE id = 7"); got != "seven" {
		t.Errorf("read back %q, want seven", got)
	}

	for {
		ev, err := streamer.GetEvent(ctx)
		if err != nil {
			t.Fatalf("no row event for the insert: %v", err)
		}
		rows, ok := ev.Event.(*replication.RowsEvent)
		if !ok || string(rows.Table.Schema) != db {
			continue
		}
		names := rows.Table.ColumnNameString()
		if len(rows.Rows) != 1 || fmt.Sprint(rows.Rows[0]) != "[7 seven]" || strings.Join(names, ",") != "id,note" {
			t.Fatalf("row event %v with columns %v, want [7 seven] with id,note", rows.Rows, names)
		}
		return
	}
}

func TestPingFailsOnNothing(t *testing.T) {
	src := SourceConfig{Name: "gone", Addr: "127.0.0.1:1", User: "u", ServerID: 1, Timeout: time.Second}.WithDefaults()
	if err := Ping(context.Background(), src); err == nil || !strings.Contains(err.Error(), "source gone") {
		t.Errorf("Ping of nothing: %v", err)
	}
}

func TestSourceConfigValidate(t *testing.T) {
	good := SourceConfig{Name: "orders", Addr: "db:3306", User: "u", ServerID: 9}.WithDefaults()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mut  func(*SourceConfig)
		want string
	}{
		{func(c *SourceConfig) { c.Name = "Orders" }, "name:"},
		{func(c *SourceConfig) { c.Addr = "db" }, "addr:"},
		{func(c *SourceConfig) { c.User = "" }, "user:"},
		{func(c *SourceConfig) { c.Flavor = "postgres" }, "flavor:"},
		{func(c *SourceConfig) { c.ServerID = 0 }, "server_id:"},
		{func(c *SourceConfig) { c.Snapshot = "always" }, "snapshot:"},
		{func(c *SourceConfig) { c.Flavor = "mysql" }, "snapshot:"}, // initial needs MariaDB
		{func(c *SourceConfig) { c.SnapshotChunkRows = 20000 }, "snapshot_chunk_rows:"},
	} {
		c := good
		tc.mut(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want prefix %q", c, err, tc.want)
		}
	}
}
