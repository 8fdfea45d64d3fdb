package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/nats-io/nats.go"

	"github.com/musicd/musicd/binlog"
	"github.com/musicd/musicd/internal/testenv"
)

// twoSiteKills is how many times TestTwoSitesSurviveKill9 kills a daemon.
const twoSiteKills = 20

// Two sites, each a musicd in distributed mode (shared Cassandra, ZooKeeper and NATS) with its
// own MariaDB, mirror one table both ways while both sites write disjoint rows (inserts, updates,
// deletes, transactions of several statements). Either daemon is killed with -9 at 20 random
// points and started again. Afterwards both databases hold exactly the rows the workload
// committed (a model kept by the test): nothing lost, nothing applied twice, nothing left behind;
// and no change applied at one site comes back from it on the change feed (no echo).
func TestTwoSitesSurviveKill9(t *testing.T) {
	addrs := map[string]string{"a": testenv.MariaDBA(t), "b": testenv.MariaDBB(t)}
	db := testenv.UniqueName("twosite_")
	conns := map[string]*client.Conn{}
	for site, addr := range addrs {
		c := adminConn(t, addr)
		conns[site] = c
		mustExec(t, c, "CREATE DATABASE "+db)
		mustExec(t, c, "CREATE TABLE "+db+".t (id BIGINT PRIMARY KEY, n INT NOT NULL, v VARCHAR(64), d DECIMAL(20,6), b VARBINARY(16))")
		t.Cleanup(func() { // before adminConn's close (cleanups run last first)
			_, _ = c.Execute("DROP DATABASE IF EXISTS " + db)
			_, _ = c.Execute("DROP DATABASE IF EXISTS " + db + "_meta")
		})
	}
	metaKS, zkRoot, nc := distributedSetup(t, "musicd-test-")

	// Echo check: every change on the feed from a site's capture stream is of that site's rows.
	var echoMu sync.Mutex
	var echoes []string
	seen := map[string]int{}
	keyRE := regexp.MustCompile(`"key":\{"id":(\d+)\}`)
	sub, err := nc.Subscribe("music.changes."+db+".t.>", func(m *nats.Msg) {
		stream := m.Header.Get("Music-Stream")
		echoMu.Lock()
		seen[stream]++
		echoMu.Unlock()
		id := keyRE.FindSubmatch(m.Data)
		if id == nil {
			return
		}
		owner := "a"
		if len(id[1]) >= 7 { // site b writes ids from 1000000
			owner = "b"
		}
		if stream != "binlog/"+owner+"/"+owner {
			echoMu.Lock()
			echoes = append(echoes, fmt.Sprintf("%s: key %s", stream, id[1]))
			echoMu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	configs := map[string]string{}
	for site, other := range map[string]string{"a": "b", "b": "a"} {
		configs[site] = writeFile(t, fmt.Sprintf(`
mode: distributed
site: %[1]s
log: {format: json}
api: {listen: "127.0.0.1:0"}
cassandra: {contact_points: ["%[3]s"], keyspace: %[4]s}
zookeeper: {servers: ["%[5]s"], root: %[6]s, session_timeout: 2s}
nats: {urls: ["%[7]s"]}
sources:
  - {name: %[1]s, addr: "%[8]s", user: %[9]s, password: %[10]s, server_id: %[11]d, tables: [{match: "%[12]s.*", mode: async}]}
appliers:
  - addr: "%[8]s"
    user: %[9]s
    password: %[10]s
    meta_database: %[12]s_meta
    streams: [binlog/%[2]s/%[2]s]
    local_streams: [binlog/%[1]s/%[1]s]
    tables: [{match: "%[12]s.*", mode: async}]
`, site, other, testenv.Cassandra(t), metaKS, testenv.ZooKeeper(t), zkRoot, testenv.NATS(t),
			addrs[site], testenv.MariaDBUser, testenv.MariaDBPassword, map[string]int{"a": 4201, "b": 4202}[site], db))
	}
	daemons, bases := map[string]*daemon{}, map[string]string{}
	start := func(site string) {
		d := startDaemon(t, "--config", configs[site])
		base := d.waitServing(60 * time.Second)
		daemons[site], bases[site] = d, base
		// The capture has started (or resumed) once the relay has published its start mark.
		testenv.WaitFor(t, 60*time.Second, "site "+site+"'s capture to start", func() bool {
			_, m := get(t, base+"/metrics")
			return regexp.MustCompile(`music_feeds_published_total(\{[^}]*\})? [1-9]`).MatchString(m)
		})
	}
	start("a")
	start("b")

	// The workload: each site changes its own rows, in transactions of 1 to 3 statements; the
	// model is what was committed.
	var modelMu sync.Mutex
	model := map[int64]string{} // id -> "n|v|d|b"
	stop := make(chan struct{})
	stopWork := sync.OnceFunc(func() { close(stop) })
	var wg sync.WaitGroup
	workErr := make(chan error, 2)
	for site, base := range map[string]int64{"a": 1, "b": 1_000_000} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			workErr <- siteWorkload(conns[site], db, base, rand.New(rand.NewPCG(uint64(base), 7)), stop, &modelMu, model)
		}()
	}
	// If the test fails meanwhile, the workload stops before its connections close (cleanups
	// run last first), and the failure is reported rather than a crash of the workload.
	t.Cleanup(func() { stopWork(); wg.Wait() })

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for i := range twoSiteKills {
		site := []string{"a", "b"}[rng.IntN(2)]
		// A random point of the workload: between 0.2 and 1.5 s from now.
		<-time.After(time.Duration(200+rng.IntN(1300)) * time.Millisecond)
		d := daemons[site]
		if err := d.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-d.exited
		t.Logf("kill %d: site %s", i+1, site)
		start(site)
	}
	stopWork()
	wg.Wait()
	for range 2 {
		if err := <-workErr; err != nil {
			t.Fatal(err)
		}
	}

	modelMu.Lock()
	want := renderRows(model)
	modelMu.Unlock()
	for site, c := range conns {
		var got string
		ok := false
		deadline := time.Now().Add(3 * time.Minute)
		for time.Now().Before(deadline) {
			if got = tableRows(t, c, db); got == want {
				ok = true
				break
			}
			<-time.After(200 * time.Millisecond) // polling the condition "converged", bounded above
		}
		if !ok {
			t.Errorf("site %s does not hold the committed rows after the kills:\n%s", site, diffRows(want, got))
		}
	}
	// Each site's daemon leads its site's elections, as /status reports from ZooKeeper.
	for site, base := range bases {
		st := getStatus(t, base)
		led := map[string]bool{}
		for _, e := range st.Elections {
			if e.ThisInstance && e.Leader == st.Instance && e.Epoch > 0 {
				led[e.Name] = true
			}
		}
		for _, name := range []string{"capture." + site + "." + site, "relay.binlog." + site + "." + site, "applier." + site + "." + addrs[site]} {
			if !led[name] {
				t.Errorf("site %s: /status does not show this instance leading %s: %+v", site, name, st.Elections)
			}
		}
		if len(st.Sources) != 1 || st.Sources[0].Head == 0 || len(st.Errors) > 0 {
			t.Errorf("site %s: /status sources %+v, errors %v", site, st.Sources, st.Errors)
		}
	}
	echoMu.Lock()
	defer echoMu.Unlock()
	if seen["binlog/a/a"] == 0 || seen["binlog/b/b"] == 0 {
		t.Errorf("the change feed carried no changes of one site: %v", seen)
	}
	if len(echoes) > 0 {
		t.Errorf("%d applied changes came back on the change feed, e.g. %v", len(echoes), echoes[:min(5, len(echoes))])
	}
}

// adminConn connects to the MariaDB server at addr as the tests' account, until the test ends.
func adminConn(t *testing.T, addr string) *client.Conn {
	t.Helper()
	src := binlog.SourceConfig{Name: "x", Addr: addr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword, ServerID: 1}.WithDefaults()
	c, err := binlog.Connect(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustExec(t *testing.T, c *client.Conn, q string) {
	t.Helper()
	if _, err := c.Execute(q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// siteWorkload writes rows with ids base..base+299 until stop is closed, a transaction every
// 5 ms, and records what each committed transaction left in model.
func siteWorkload(c *client.Conn, db string, base int64, rng *rand.Rand, stop <-chan struct{}, mu *sync.Mutex, model map[int64]string) error {
	mine := map[int64]string{}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-stop:
			return nil
		case <-tick.C:
		}
		if _, err := c.Execute("BEGIN"); err != nil {
			return err
		}
		changed := map[int64]string{}
		for range 1 + rng.IntN(3) {
			id := base + int64(rng.IntN(300))
			cur, exists := changed[id]
			if !exists {
				cur, exists = mine[id], mine[id] != ""
			} else {
				exists = cur != ""
			}
			var err error
			switch {
			case !exists:
				v, d, b := fmt.Sprintf("v%d-%d", id, n), fmt.Sprintf("%d.%06d", rng.IntN(1_000_000), rng.IntN(1_000_000)), []byte{byte(n), byte(id), 0, 255}
				_, err = c.Execute("INSERT INTO "+db+".t (id, n, v, d, b) VALUES (?, 0, ?, ?, ?)", id, v, d, b)
				changed[id] = fmt.Sprintf("0|%s|%s|%x", v, d, b)
			case rng.IntN(4) == 0:
				_, err = c.Execute("DELETE FROM "+db+".t WHERE id = ?", id)
				changed[id] = ""
			default:
				parts := strings.SplitN(cur, "|", 4)
				var k int
				fmt.Sscan(parts[0], &k)
				v := fmt.Sprintf("u%d-%d", id, n)
				_, err = c.Execute("UPDATE "+db+".t SET n = n + 1, v = ? WHERE id = ?", v, id)
				changed[id] = fmt.Sprintf("%d|%s|%s|%s", k+1, v, parts[2], parts[3])
			}
			if err != nil {
				_, _ = c.Execute("ROLLBACK")
				return err
			}
		}
		if _, err := c.Execute("COMMIT"); err != nil {
			return err
		}
		mu.Lock()
		for id, row := range changed {
			mine[id] = row
			if row == "" {
				delete(mine, id)
				delete(model, id)
			} else {
				model[id] = row
			}
		}
		mu.Unlock()
	}
}

// tableRows reads db.t as renderRows renders the model.
func tableRows(t *testing.T, c *client.Conn, db string) string {
	t.Helper()
	r, err := c.Execute("SELECT id, n, v, d, HEX(b) FROM " + db + ".t ORDER BY id")
	if err != nil {
		return "error: " + err.Error()
	}
	rows := map[int64]string{}
	for i := range r.RowNumber() {
		id, _ := r.GetInt(i, 0)
		n, _ := r.GetInt(i, 1)
		v, _ := r.GetString(i, 2)
		d, _ := r.GetString(i, 3)
		b, _ := r.GetString(i, 4)
		rows[id] = fmt.Sprintf("%d|%s|%s|%s", n, strings.Clone(v), strings.Clone(d), strings.ToLower(b))
	}
	return renderRows(rows)
}

func renderRows(rows map[int64]string) string {
	ids := make([]int64, 0, len(rows))
	for id := range rows {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var b strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&b, "%d=%s\n", id, rows[id])
	}
	return b.String()
}

// diffRows lists the first differences between two renderings.
func diffRows(want, got string) string {
	w, g := map[string]string{}, map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(want), "\n") {
		id, row, _ := strings.Cut(l, "=")
		w[id] = row
	}
	for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
		id, row, _ := strings.Cut(l, "=")
		g[id] = row
	}
	var out []string
	for id, row := range w {
		if g[id] != row {
			out = append(out, fmt.Sprintf("id %s: want %q, got %q", id, row, g[id]))
		}
	}
	for id, row := range g {
		if _, ok := w[id]; !ok {
			out = append(out, fmt.Sprintf("id %s: want no row, got %q", id, row))
		}
	}
	sort.Strings(out)
	return fmt.Sprintf("%d rows differ, e.g.\n%s", len(out), strings.Join(out[:min(10, len(out))], "\n"))
}
