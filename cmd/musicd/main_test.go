package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/musicd/musicd/binlog"
	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
)

// The test binary doubles as musicd: with MUSICD_TEST_AS_MAIN=1 it runs main's code, so process
// tests exercise the real signal handling and exit statuses (and, under -race, the race detector).
func TestMain(m *testing.M) {
	if os.Getenv("MUSICD_TEST_AS_MAIN") == "1" {
		os.Exit(realMain(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// daemon is a musicd process started by a test.
type daemon struct {
	t      testing.TB
	cmd    *exec.Cmd
	addr   chan string // the REST address, from the "musicd serving" log line
	mu     sync.Mutex
	stderr bytes.Buffer
	exited chan struct{}
	err    error // Wait's result, valid after exited is closed
}

func startDaemon(t testing.TB, args ...string) *daemon {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "MUSICD_TEST_AS_MAIN=1", "GORACE=atexit_sleep_ms=0")
	cmd.Dir = t.TempDir()
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, cmd: cmd, addr: make(chan string, 1), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	scanned := make(chan struct{})
	go func() { // ends at EOF, when the process exits
		defer close(scanned)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			d.stderr.WriteString(line + "\n")
			d.mu.Unlock()
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "musicd serving" {
				d.addr <- rec.Addr
			}
		}
	}()
	go func() {
		<-scanned
		d.err = cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			_ = cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("musicd stderr:\n%s", d.log())
		}
	})
	return d
}

func (d *daemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// waitServing returns the base URL once musicd logs that it serves.
func (d *daemon) waitServing(timeout time.Duration) string {
	d.t.Helper()
	select {
	case a := <-d.addr:
		return "http://" + a
	case <-d.exited:
		d.t.Fatalf("musicd exited before serving: %v", d.err)
	case <-time.After(timeout):
		d.t.Fatalf("musicd not serving after %s", timeout)
	}
	return ""
}

// stop sends sig and returns the exit code and how long the process took to exit.
func (d *daemon) stop(sig os.Signal, limit time.Duration) (int, time.Duration) {
	d.t.Helper()
	start := time.Now()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(limit):
		d.t.Fatalf("musicd still running %s after %v", limit, sig)
	}
	return d.cmd.ProcessState.ExitCode(), time.Since(start)
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

type readyBody struct {
	Status string
	Checks []struct {
		Name  string
		OK    bool
		Error string
	}
}

func readyz(t *testing.T, base string) (int, readyBody) {
	t.Helper()
	code, body := get(t, base+"/readyz")
	var r readyBody
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	return code, r
}

// With no configuration but a free port, musicd serves its endpoints and exits 0 within 5 s of
// SIGTERM.
func TestEmbeddedServesAndStopsOnSIGTERM(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			d := startDaemon(t, "--api.listen=127.0.0.1:0", "--nats.embedded.listen=127.0.0.1:0", "--log.format=json")
			base := d.waitServing(30 * time.Second)

			if code, body := get(t, base+"/healthz"); code != 200 || !strings.Contains(body, `"ok"`) {
				t.Errorf("/healthz: %d %s", code, body)
			}
			code, r := readyz(t, base)
			if code != 200 || r.Status != "ready" {
				t.Errorf("/readyz: %d %+v", code, r)
			}
			names := map[string]bool{}
			for _, c := range r.Checks {
				names[c.Name] = c.OK
			}
			if !names["nats"] || !names["data_dir"] || !names["journal"] {
				t.Errorf("/readyz checks %+v, want nats, data_dir and journal passing", r.Checks)
			}
			code, metrics := get(t, base+"/metrics")
			for _, want := range []string{`music_build_info{`, `music_dependency_up{dependency="nats"} 1`,
				`music_http_requests_total{code="200",method="get",route="readyz"} 1`, "go_goroutines ", "process_resident_memory_bytes "} {
				if !strings.Contains(metrics, want) {
					t.Errorf("/metrics (%d) lacks %q", code, want)
				}
			}
			var v struct{ Version, Mode, Site string }
			if code, body := get(t, base+"/version"); code != 200 || json.Unmarshal([]byte(body), &v) != nil || v.Mode != "embedded" || v.Site != "local" || v.Version == "" {
				t.Errorf("/version: %d %s", code, body)
			}
			if code, body := get(t, base+"/nope"); code != 404 || !strings.Contains(body, `"not_found"`) {
				t.Errorf("/nope: %d %s", code, body)
			}

			exit, took := d.stop(sig, 5*time.Second)
			if exit != 0 {
				t.Errorf("exit status %d after %v, want 0", exit, sig)
			}
			t.Logf("exited %d in %v after %v", exit, took.Round(time.Millisecond), sig)
			if !strings.Contains(d.log(), `"msg":"shutting down"`) {
				t.Errorf("no shutdown log line")
			}
		})
	}
}

// A wrong configuration exits 2 with one line that names the field.
func TestBadConfigurationExits2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--api.listen=127.0.0.1:99999"}, "api.listen"},
		{[]string{"--config", writeFile(t, "api:\n  listn: 127.0.0.1:1\n")}, `unknown field "api.listn"`},
		{[]string{"--no-such-flag"}, "no-such-flag"},
	} {
		cmd := exec.Command(os.Args[0], tc.args...)
		cmd.Env = append(os.Environ(), "MUSICD_TEST_AS_MAIN=1", "GORACE=atexit_sleep_ms=0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		exit := cmd.ProcessState.ExitCode()
		msg := stderr.String()
		if exit != 2 {
			t.Errorf("%v: exit %d (%v), want 2; stderr %q", tc.args, exit, err, msg)
		}
		if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, tc.want) || !strings.HasPrefix(msg, "musicd: ") {
			t.Errorf("%v: stderr %q, want one line naming %q", tc.args, msg, tc.want)
		}
	}
}

func TestHelpExits0(t *testing.T) {
	cmd := exec.Command(os.Args[0], "--help")
	cmd.Env = append(os.Environ(), "MUSICD_TEST_AS_MAIN=1", "GORACE=atexit_sleep_ms=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("--help: %v", err)
	}
	if !strings.Contains(string(out), "--api.listen string, MUSIC_API_LISTEN") {
		t.Errorf("--help output lacks api.listen:\n%s", out)
	}
}

// In distributed mode musicd reaches the real Cassandra, ZooKeeper, NATS and both MariaDB
// sources, and /readyz checks each of them.
func TestDistributedModeReadiness(t *testing.T) {
	ks := testenv.UniqueName("musicd_test_")
	t.Cleanup(func() { dropKeyspace(t, ks) })
	cfg := fmt.Sprintf(`
mode: distributed
site: test-a
log: {format: json, level: debug}
api: {listen: "127.0.0.1:0"}
cassandra: {contact_points: ["%s"], keyspace: %s}
zookeeper: {servers: ["%s"], root: /musicd-test}
nats: {urls: ["%s"]}
sources:
  - {name: site-a, addr: "%s", user: %s, password: %s, server_id: 4001}
  - {name: site-b, addr: "%s", user: %s, password: %s, server_id: 4002}
`, testenv.Cassandra(t), ks, testenv.ZooKeeper(t), testenv.NATS(t),
		testenv.MariaDBA(t), testenv.MariaDBUser, testenv.MariaDBPassword,
		testenv.MariaDBB(t), testenv.MariaDBUser, testenv.MariaDBPassword)
	d := startDaemon(t, "--config", writeFile(t, cfg))
	base := d.waitServing(60 * time.Second)

	code, r := readyz(t, base)
	if code != 200 || r.Status != "ready" {
		t.Errorf("/readyz: %d %+v", code, r)
	}
	want := []string{"nats", "cassandra", "journal", "zookeeper", "source:site-a", "source:site-b"}
	got := map[string]bool{}
	for _, c := range r.Checks {
		got[c.Name] = c.OK
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("check %s missing or failing in %+v", w, r.Checks)
		}
	}
	if exit, _ := d.stop(syscall.SIGTERM, 5*time.Second); exit != 0 {
		t.Errorf("exit status %d, want 0", exit)
	}
}

// A source that cannot be reached makes musicd not ready, and says which.
func TestReadinessReportsAFailingDependency(t *testing.T) {
	cfg := `
log: {format: json}
api: {listen: "127.0.0.1:0"}
nats: {embedded: {listen: ""}}
sources:
  - {name: gone, addr: "127.0.0.1:1", user: u, server_id: 9, timeout: 1s}
`
	d := startDaemon(t, "--config", writeFile(t, cfg))
	base := d.waitServing(30 * time.Second)
	code, r := readyz(t, base)
	if code != 503 || r.Status != "not ready" {
		t.Errorf("/readyz: %d %+v, want 503 not ready", code, r)
	}
	for _, c := range r.Checks {
		if c.Name == "source:gone" && (c.OK || c.Error == "") {
			t.Errorf("source:gone reported %+v", c)
		}
	}
	if exit, _ := d.stop(syscall.SIGTERM, 5*time.Second); exit != 0 {
		t.Errorf("exit status %d, want 0", exit)
	}
}

// dropKeyspace removes a keyspace a test's musicd created.
// distributedSetup is what a test of musicd daemons in distributed mode starts from: a journal
// keyspace name of its own (the keyspace is dropped when the test ends), a ZooKeeper root of its
// own under prefix, and a NATS connection (closed when the test ends).
func distributedSetup(t testing.TB, prefix string) (metaKS, zkRoot string, nc *nats.Conn) {
	t.Helper()
	metaKS = testenv.UniqueName("musicd_test_")
	t.Cleanup(func() { dropKeyspace(t, metaKS) })
	nc, err := nats.Connect(testenv.NATS(t), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return metaKS, "/" + testenv.UniqueName(prefix), nc
}

func dropKeyspace(t testing.TB, ks string) {
	cfg := journal.DefaultCassandraConfig()
	cfg.ContactPoints = []string{testenv.Cassandra(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := journal.DialCassandra(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Errorf("drop keyspace %s: %v", ks, err)
		return
	}
	defer c.Close()
	if err := c.Session.Query(`DROP KEYSPACE IF EXISTS ` + ks).Exec(); err != nil {
		t.Errorf("drop keyspace %s: %v", ks, err)
	}
}

// End to end in embedded mode: a row committed in a source database is captured into the
// journal and published by the relay on its subject, with the documented envelope.
func TestEmbeddedCaptureToChangeFeed(t *testing.T) {
	addr := testenv.MariaDBA(t)
	db := testenv.UniqueName("e2e_")
	src := binlog.SourceConfig{Name: "a", Addr: addr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword, ServerID: 4003}.WithDefaults()
	conn, err := binlog.Connect(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mustExec := func(q string) {
		t.Helper()
		if _, err := conn.Execute(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	mustExec("CREATE DATABASE " + db)
	defer mustExec("DROP DATABASE " + db)
	mustExec("CREATE TABLE " + db + ".orders (id BIGINT UNSIGNED PRIMARY KEY, note VARCHAR(20))")

	cfg := fmt.Sprintf(`
log: {format: json}
api: {listen: "127.0.0.1:0"}
nats: {embedded: {listen: "127.0.0.1:0"}}
sources:
  - {name: a, addr: "%s", user: %s, password: %s, server_id: 4003, tables: [{match: "%s.*", mode: async}]}
`, addr, testenv.MariaDBUser, testenv.MariaDBPassword, db)
	d := startDaemon(t, "--config", writeFile(t, cfg))
	base := d.waitServing(30 * time.Second)
	natsURL := d.logValue(`"msg":"embedded nats server started"`, "url")
	nc, err := nats.Connect(natsURL, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Read the change feed from its JetStream stream, from the beginning.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var cons jetstream.Consumer
	testenv.WaitFor(t, 30*time.Second, "the relay to create the MUSIC_CHANGES stream", func() bool {
		cons, err = js.OrderedConsumer(ctx, "MUSIC_CHANGES", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"music.changes.>"}})
		return err == nil
	})
	next := func(what string) jetstream.Msg {
		t.Helper()
		m, err := cons.Next(jetstream.FetchMaxWait(30 * time.Second))
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		return m
	}
	// The capture's first entry marks the position it starts from.
	if m := next("the capture's start mark"); !strings.HasSuffix(m.Subject(), ".mark") || m.Headers().Get("Music-Stream") != "binlog/local/a" || m.Headers().Get("Music-Seq") != "1" {
		t.Fatalf("first message: %s %v", m.Subject(), m.Headers())
	}
	if code, r := readyz(t, base); code != 200 {
		t.Fatalf("/readyz %d %+v", code, r)
	}
	mustExec("INSERT INTO " + db + ".orders VALUES (18446744073709551615, 'hello')")
	// The initial snapshot of the (empty) table journals its state marks (one or two, as the
	// capture reaches the chunk's position) before the insert.
	m := next("the insert")
	for strings.HasSuffix(m.Subject(), ".mark") {
		m = next("the insert")
	}
	if m.Subject() != "music.changes."+db+".orders.insert" || m.Headers().Get("Music-Stream") != "binlog/local/a" || !seqAbove(m.Headers().Get("Music-Seq"), 2) {
		t.Errorf("subject %s, headers %v", m.Subject(), m.Headers())
	}
	var env struct {
		Op     string
		After  map[string]json.RawMessage
		Source struct {
			Site, Database, Table, Stream, GTID string
			Seq                                 uint64
		}
		Transaction struct {
			ID   string
			Last bool
		}
	}
	if err := json.Unmarshal(m.Data(), &env); err != nil {
		t.Fatalf("envelope %s: %v", m.Data(), err)
	}
	if env.Op != "c" || string(env.After["id"]) != "18446744073709551615" || string(env.After["note"]) != `"hello"` ||
		env.Source.Database != db || env.Source.Table != "orders" || env.Source.GTID == "" || env.Source.Site != "local" ||
		strconv.FormatUint(env.Source.Seq, 10) != m.Headers().Get("Music-Seq") || env.Transaction.ID != env.Source.GTID || !env.Transaction.Last {
		t.Errorf("envelope %s", m.Data())
	}
	if exit, _ := d.stop(syscall.SIGTERM, 5*time.Second); exit != 0 {
		t.Errorf("exit status %d", exit)
	}
}

// logValue returns the value of key in the first JSON log line containing marker.
func (d *daemon) logValue(marker, key string) string {
	d.t.Helper()
	for _, line := range strings.Split(d.log(), "\n") {
		if strings.Contains(line, marker) {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil {
				if v, ok := rec[key].(string); ok {
					return v
				}
			}
		}
	}
	d.t.Fatalf("no log line with %s and %s", marker, key)
	return ""
}

// Zero-code mirroring through the daemon: a table created and written at site a's MariaDB appears,
// with its rows, in site b's MariaDB (capture, journal, applier in one embedded musicd).
func TestEmbeddedMirrorsSiteAIntoSiteB(t *testing.T) {
	addrA, addrB := testenv.MariaDBA(t), testenv.MariaDBB(t)
	db := testenv.UniqueName("mirror_")
	open := func(addr string) *client.Conn {
		src := binlog.SourceConfig{Name: "x", Addr: addr, User: testenv.MariaDBUser, Password: testenv.MariaDBPassword, ServerID: 1}.WithDefaults()
		c, err := binlog.Connect(context.Background(), src)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := open(addrA), open(addrB)
	defer a.Close()
	defer b.Close()
	exec := func(c *client.Conn, q string) {
		t.Helper()
		if _, err := c.Execute(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, c := range []*client.Conn{a, b} {
		exec(c, "CREATE DATABASE "+db)
		defer exec(c, "DROP DATABASE IF EXISTS "+db)
	}
	cfg := fmt.Sprintf(`
log: {format: json}
api: {listen: "127.0.0.1:0"}
nats: {embedded: {listen: ""}}
sources:
  - {name: a, addr: "%[1]s", user: %[3]s, password: %[4]s, server_id: 4004, tables: [{match: "%[5]s.*", mode: async}]}
appliers:
  - addr: "%[2]s"
    user: %[3]s
    password: %[4]s
    meta_database: %[5]s_meta
    streams: [binlog/local/a]
    tables: [{match: "%[5]s.*", mode: async}]
`, addrA, addrB, testenv.MariaDBUser, testenv.MariaDBPassword, db)
	defer exec(b, "DROP DATABASE IF EXISTS "+db+"_meta")
	d := startDaemon(t, "--config", writeFile(t, cfg))
	base := d.waitServing(30 * time.Second)
	// The capture has started once its start mark is journaled; creating the table after that
	// makes the CREATE TABLE part of the stream.
	testenv.WaitFor(t, 30*time.Second, "the capture to start", func() bool {
		_, m := get(t, base+"/metrics")
		return strings.Contains(m, `music_feeds_published_total`) && regexp.MustCompile(`music_feeds_published_total(\{[^}]*\})? [1-9]`).MatchString(m)
	})
	exec(a, "CREATE TABLE "+db+".t (id INT PRIMARY KEY, v VARCHAR(20))")
	exec(a, "INSERT INTO "+db+".t VALUES (1, 'one'), (2, 'two')")
	exec(a, "UPDATE "+db+".t SET v = 'TWO' WHERE id = 2")
	exec(a, "DELETE FROM "+db+".t WHERE id = 1")
	exec(a, "INSERT INTO "+db+".t VALUES (3, 'three')")
	rows := func() string {
		r, err := b.Execute("SELECT id, v FROM " + db + ".t ORDER BY id")
		if err != nil {
			return err.Error()
		}
		var out []string
		for i := range r.RowNumber() {
			id, _ := r.GetInt(i, 0)
			v, _ := r.GetString(i, 1)
			out = append(out, fmt.Sprintf("%d=%s", id, v))
		}
		return strings.Join(out, ",")
	}
	testenv.WaitFor(t, 60*time.Second, "site b to hold site a's rows", func() bool { return rows() == "2=TWO,3=three" })
	// The status view: the source's stream journaled, published and applied to its head.
	testenv.WaitFor(t, 30*time.Second, "/status to show the stream published and applied", func() bool {
		st := getStatus(t, base)
		if len(st.Sources) != 1 || len(st.Appliers) != 1 || len(st.Appliers[0].Streams) != 1 || st.Mode != "embedded" {
			t.Fatalf("/status: %+v", st)
		}
		src, ap := st.Sources[0], st.Appliers[0].Streams[0]
		return src.Stream == "binlog/local/a" && src.Head > 0 && src.GTID != "" && src.Published != nil && *src.Published == src.Head &&
			ap.Stream == src.Stream && ap.Applied == src.Head && ap.Behind == 0 && ap.Error == ""
	})
	_, m := get(t, base+"/metrics")
	if !strings.Contains(m, "music_applier_applied_transactions_total{") {
		t.Errorf("no applier metrics in /metrics")
	}
	if exit, _ := d.stop(syscall.SIGTERM, 5*time.Second); exit != 0 {
		t.Errorf("exit status %d", exit)
	}
}

// statusBody is what the tests read of /status.
type statusBody struct {
	Mode      string
	Instance  string
	Elections []struct {
		Name, Leader string
		Epoch        uint64
		ThisInstance bool `json:"this_instance"`
	}
	Sources []struct {
		Name, Stream string
		Head         uint64
		GTID         string  `json:"last_gtid"`
		Published    *uint64 `json:"published"`
	}
	Appliers []struct {
		Target  string
		Streams []struct {
			Stream                string
			Applied, Head, Behind uint64
			Error                 string
		}
	}
	Errors []string
}

func getStatus(t *testing.T, base string) statusBody {
	t.Helper()
	code, body := get(t, base+"/status")
	var st statusBody
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
		t.Fatalf("/status: %d %v: %s", code, err, body)
	}
	return st
}

// seqAbove reports whether the Music-Seq header value is a sequence number above n.
func seqAbove(header string, n uint64) bool {
	seq, err := strconv.ParseUint(header, 10, 64)
	return err == nil && seq > n
}
