package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/nats-io/nats.go"

	"github.com/musicd/musicd/internal/testenv"
)

// Three sites, each a musicd with its own MariaDB (private servers: server ids and GTID domains
// 1, 2 and 3, semi-synchronous so that a commit of the sync table returns only once the capture
// journaled it), mirror db.t among themselves; ownership gives the partition "acct" (db.t) to a,
// then b, then c. An application writes to the database of the site that serves acct, following
// the announcements on NATS. The owner's musicd is killed with -9 during the load: b takes over,
// and when it announces that it serves, b's database holds every write a's database acknowledged
// (b caught up before serving); the application's writes at b then reach c.
func TestOwnershipThreeDatabases(t *testing.T) {
	type siteDB struct {
		addr  string
		conn  *client.Conn
		start string // GTID position where its capture starts
	}
	dbs := map[string]*siteDB{}
	var startMu sync.Mutex
	var wg sync.WaitGroup
	for i, site := range []string{"a", "b", "c"} {
		wg.Add(1)
		go func() { // the three servers start in parallel
			defer wg.Done()
			id := fmt.Sprint(i + 1)
			p := testenv.StartPrivate(t, "mariadb-a", "MUSIC_DEV_MARIADB_A_SERVER_ID="+id, "MUSIC_DEV_MARIADB_A_GTID_DOMAIN="+id)
			startMu.Lock()
			dbs[site] = &siteDB{addr: p.Addr}
			startMu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, s := range dbs {
		c := adminConn(t, s.addr)
		s.conn = c
		for _, q := range []string{
			// A first transaction gives the capture a start position: it then reads (and, as a
			// semi-synchronous replica, acknowledges) everything after it, the applier's own
			// tables included, whichever of the two starts first.
			"CREATE DATABASE start_mark",
			"SET GLOBAL rpl_semi_sync_master_enabled = ON",
			"SET GLOBAL rpl_semi_sync_master_timeout = 60000", // a commit waits up to 60 s for the capture
			"SET SESSION sql_log_bin = 0",
			"CREATE DATABASE db",
			"CREATE TABLE db.t (id BIGINT PRIMARY KEY, v VARCHAR(32) NOT NULL)",
			"SET SESSION sql_log_bin = 1",
		} {
			mustExec(t, c, q)
		}
		r, err := c.Execute("SELECT @@gtid_binlog_pos")
		if err != nil {
			t.Fatal(err)
		}
		pos, _ := r.GetString(0, 0)
		s.start = strings.Clone(pos)
		r.Close()
	}
	metaKS, zkRoot, nc := distributedSetup(t, "musicd-test-own3-")
	misrouted := make(chan map[string]any, 16)
	csub, err := nc.Subscribe("music.conflicts.db.t", func(m *nats.Msg) {
		var c map[string]any
		if json.Unmarshal(m.Data, &c) == nil && c["kind"] == "misrouted" {
			misrouted <- c
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer csub.Unsubscribe()
	serving := make(chan string, 16) // sites announcing they serve acct
	sub, err := nc.Subscribe("music.ownership.acct", func(m *nats.Msg) {
		var ev struct{ Kind, Site string }
		if json.Unmarshal(m.Data, &ev) == nil && ev.Kind == "serving" {
			serving <- ev.Site
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	others := map[string][]string{"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a", "b"}}
	daemons, bases := map[string]*daemon{}, map[string]string{}
	for i, site := range []string{"a", "b", "c"} {
		var streams []string
		for _, o := range others[site] {
			streams = append(streams, "binlog/"+o+"/"+o)
		}
		cfg := writeFile(t, fmt.Sprintf(`
mode: distributed
site: %[1]s
log: {format: json}
api: {listen: "127.0.0.1:0"}
cassandra: {contact_points: ["%[2]s"], keyspace: %[3]s}
zookeeper: {servers: ["%[4]s"], root: %[5]s, session_timeout: 2s}
nats: {urls: ["%[6]s"]}
sources:
  - {name: %[1]s, addr: "%[7]s", user: %[8]s, password: %[9]s, server_id: %[10]d, snapshot: never, start_position: "%[12]s", tables: [{match: "db.*", mode: sync}]}
appliers:
  - {addr: "%[7]s", user: %[8]s, password: %[9]s, meta_database: db_meta, streams: [%[11]s], local_streams: [binlog/%[1]s/%[1]s], tables: [{match: "db.*", mode: sync}]}
ownership:
  sites: [a, b, c]
  failover_grace: 1s
  partitions:
    - {name: acct, tables: [db.t], placement: {mode: preferred, sites: [a, b, c]}}
`, site, testenv.Cassandra(t), metaKS, testenv.ZooKeeper(t), zkRoot, testenv.NATS(t),
			dbs[site].addr, testenv.MariaDBUser, testenv.MariaDBPassword, 4301+i, strings.Join(streams, ", "), dbs[site].start))
		daemons[site] = startDaemon(t, "--config", cfg)
		bases[site] = daemons[site].waitServing(60 * time.Second)
	}
	waitServing := func(want string) {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			select {
			case s := <-serving:
				if s == want {
					return
				}
			case <-deadline:
				t.Fatalf("site %s never announced it serves acct", want)
			}
		}
	}
	waitServing("a")

	// The application at a: one row per transaction; acknowledged when COMMIT returned (semi-sync:
	// after the capture journaled it).
	app := func(site string) *client.Conn {
		c, err := client.Connect(dbs[site].addr, testenv.MariaDBUser, testenv.MariaDBPassword, "db", func(c *client.Conn) error {
			c.ReadTimeout, c.WriteTimeout = 5*time.Second, 5*time.Second
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	conn := app("a")
	var acked []int
	next := 1
	write := func(c *client.Conn) bool {
		_, err := c.Execute(fmt.Sprintf("INSERT INTO t VALUES (%d, 'v%d')", next, next))
		if err == nil {
			acked = append(acked, next)
		}
		next++
		return err == nil
	}
	for range 200 {
		if !write(conn) {
			t.Fatal("a write at the owner failed before any kill")
		}
	}
	// Kill a's musicd while the application keeps writing at a: commits block (no semi-sync
	// acknowledgement) and time out; they are not acknowledged.
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		_ = daemons["a"].cmd.Process.Kill()
		<-daemons["a"].exited
	}()
	for range 20 {
		if !write(conn) {
			break
		}
	}
	<-killed
	waitServing("b")
	// b serves: its database must hold every acknowledged write already.
	have := map[int]bool{}
	r, err := dbs["b"].conn.Execute("SELECT id FROM db.t")
	if err != nil {
		t.Fatal(err)
	}
	for i := range r.RowNumber() {
		id, _ := r.GetInt(i, 0)
		have[int(id)] = true
	}
	r.Close()
	var missing []int
	for _, id := range acked {
		if !have[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("b serves acct without %d of the %d acknowledged writes: %v", len(missing), len(acked), missing)
	}
	t.Logf("b serves with all %d acknowledged writes (%d attempted at a)", len(acked), next-1)

	// The application moves to b; its writes reach c.
	conn = app("b")
	first := next
	for range 50 {
		if !write(conn) {
			t.Fatal("a write at the new owner failed")
		}
	}
	// A misrouted application writes at c, which does not own acct: the row is reported as a
	// conflict (and mirrored like any row).
	if err := func() error { _, err := app("c").Execute("INSERT INTO t VALUES (1000000, 'misrouted')"); return err }(); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-misrouted:
		key, _ := c["key"].(map[string]any)
		if c["partition"] != "acct" || c["site"] != "c" || c["owner"] != "b" || key["id"] != float64(1000000) || c["stream"] != "binlog/c/c" {
			t.Errorf("misrouted report: %v", c)
		}
	case <-time.After(30 * time.Second):
		t.Error("the row written at c was not reported as misrouted")
	}
	defer func() {
		if t.Failed() {
			_, st := get(t, bases["c"]+"/status")
			t.Logf("c's status: %s", st)
		}
	}()
	testenv.WaitFor(t, 60*time.Second, "c to hold b's writes", func() bool {
		r, err := dbs["c"].conn.Execute(fmt.Sprintf("SELECT COUNT(*) FROM db.t WHERE id >= %d AND id < %d", first, next))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		n, _ := r.GetInt(0, 0)
		return n == 50
	})
}
