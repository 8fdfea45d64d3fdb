package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/state"
)

// BenchmarkREST measures the native REST API of one daemon in distributed mode (Cassandra and
// ZooKeeper from the dev servers) at a concurrency of 16 clients: requests/s, p50 and p99, and
// per request the Cassandra statements, lightweight transactions and SERIAL reads, and the
// ZooKeeper requests it caused (counted on the Cassandra session and on the ZooKeeper wire).
// Beside eventual put, in the same run, the limit: the same rows inserted directly through the
// driver at the same concurrency, and for both the CPU time per request that Cassandra and this
// process (the daemon and its clients, or the driver) used; then both again with Cassandra and
// this process on CPUs of their own (eventual_put_separate_cores). For exploring,
// MUSIC_BENCH_CONC sets the number of clients and MUSIC_BENCH_SHARDS the eventual log's shards.
func BenchmarkREST(b *testing.B) {
	env := newRESTBench(b)
	conc := 16
	if v, err := strconv.Atoi(os.Getenv("MUSIC_BENCH_CONC")); err == nil {
		conc = v
	}

	// Eventual put at the benchmark's concurrency, and at 64 clients, where both it and the
	// driver come closer to their limits on this machine.
	warm := false
	eventualPut := func(conc int) func(b *testing.B) {
		return func(b *testing.B) {
			if !warm { // a new table, statements not yet prepared, a cold Cassandra: not measured
				warm = true
				env.run(b, conc, 3000, func(w, i int) (benchReq, int) {
					return env.breq("PUT", fmt.Sprintf("/rows/%d", 5_000_000+w*1_000_000+i), `{"values":{"v":"warm","n":7}}`, nil), 200
				})
				env.driverInserts(b, conc, 3000, 0)
			}
			// Ours and the driver take turns, three rounds each, and the medians are reported:
			// the driver's rate alone drifts by a fifth from run to run on this machine, and
			// whichever ran second met Cassandra flushing what the first had written.
			n := max(b.N, 30000) / 3
			batchSum, batchN := env.histogram("music_state_eventual_batch_entries")
			appendSum, appendN := env.histogram("music_state_eventual_append_seconds")
			var oursR, rawR []benchResult
			for round := range 3 {
				oursR = append(oursR, env.run(b, conc, n, func(w, i int) (benchReq, int) {
					id := w*1_000_000 + round*100_000 + i
					return env.breq("PUT", fmt.Sprintf("/rows/%d", id), `{"values":{"v":"value-`+strconv.Itoa(i)+`","n":7}}`, nil), 200
				}))
				rawR = append(rawR, env.driverInserts(b, conc, n, round*100_000))
			}
			ours, raw := medianResult(oursR), medianResult(rawR)
			b.ReportMetric(ours.rate, "req/s")
			b.ReportMetric(raw.rate, "req/s;baseline=driver")
			b.ReportMetric(ours.rate/raw.rate, "ratio_to_driver")
			ours.report(b)
			b.ReportMetric(raw.p50, "p50_ms;baseline=driver")
			b.ReportMetric(raw.p99, "p99_ms;baseline=driver")
			ours.cpu.report(b, "")
			raw.cpu.report(b, ";baseline=driver")
			b.ReportMetric(env.histogramMean("music_state_eventual_batch_entries", batchSum, batchN), "entries/append")
			b.ReportMetric(env.histogramMean("music_state_eventual_append_seconds", appendSum, appendN)*1000, "append_ms")
		}
	}
	b.Run("eventual_put", eventualPut(conc))
	b.Run("eventual_put_64_clients", eventualPut(64))
	// The same with Cassandra on a CPU of its own and the daemon with its clients (or the
	// driver's inserts) on the other(s), as on machines of their own: on two shared cores, the
	// JVM's and the Go runtime's threads take turns on the same CPUs, which costs a multi-hop
	// request path (HTTP, group commit, driver) more than the driver's loop (docs/state.md).
	b.Run("eventual_put_separate_cores", func(b *testing.B) {
		undo, err := separateCores()
		if err != nil {
			b.Skipf("cannot give Cassandra and this process CPUs of their own: %v", err)
		}
		defer undo()
		eventualPut(conc)(b)
	})
	b.Run("eventual_get", func(b *testing.B) {
		n := max(b.N, 2000)
		env.run(b, conc, n, func(w, i int) (benchReq, int) {
			return env.breq("GET", fmt.Sprintf("/rows/%d", w*1_000_000+i%500), "", nil), 200
		}).reportAll(b)
	})
	b.Run("critical_put", func(b *testing.B) {
		n := max(b.N, 1000)
		refs := make([]string, conc)
		for w := range conc { // each client holds the lock of its own key
			refs[w] = env.lock(b, 2_000_000+w)
		}
		env.run(b, conc, n, func(w, i int) (benchReq, int) {
			return env.breq("PUT", fmt.Sprintf("/rows/%d?consistency=critical", 2_000_000+w), `{"values":{"v":"c","n":`+strconv.Itoa(i)+`}}`,
				http.Header{"Music-Lock": {refs[w]}}), 200
		}).reportAll(b)
		// The framework may run this again with a larger b.N: let the next run take the locks.
		for _, ref := range refs {
			rel, _ := http.NewRequest("DELETE", env.base+"/v1/locks/"+ref, nil)
			env.do(b, rel, 204)
		}
	})
	b.Run("atomic_put", func(b *testing.B) {
		n := max(b.N, 500)
		env.run(b, conc, n, func(w, i int) (benchReq, int) {
			return env.breq("PUT", fmt.Sprintf("/rows/%d?consistency=atomic", 3_000_000+w*1000+i%5), `{"values":{"v":"a","n":1}}`, nil), 200
		}).reportAll(b)
	})
	b.Run("compare_and_set", func(b *testing.B) {
		n := max(b.N, 500)
		versions := make([]string, conc) // each client chains compare-and-sets on its own key
		for w := range conc {
			versions[w] = env.put(b, 4_000_000+w)
		}
		var mu sync.Mutex
		env.runResp(b, conc, n, func(w, i int) (benchReq, int) {
			mu.Lock()
			v := versions[w]
			mu.Unlock()
			return env.breq("PUT", fmt.Sprintf("/rows/%d", 4_000_000+w), `{"values":{"v":"cas","n":`+strconv.Itoa(i)+`}}`, http.Header{"If-Match": {v}}), 200
		}, func(w int, resp benchResp) {
			mu.Lock()
			versions[w] = resp.etag
			mu.Unlock()
		}).reportAll(b)
	})
}

type restBench struct {
	base    string
	client  *http.Client
	session *gocql.Session
	ks      string
	counts  *opCounts
	reg     *prometheus.Registry
}

// histogram returns the sum and count of a histogram of the state service's registry.
func (e *restBench) histogram(name string) (float64, uint64) {
	mfs, _ := e.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleSum(), h.GetSampleCount()
		}
	}
	return 0, 0
}

// histogramMean returns the mean of what a histogram observed since its snapshot (sum, count).
func (e *restBench) histogramMean(name string, sum0 float64, count0 uint64) float64 {
	sum, count := e.histogram(name)
	if count <= count0 {
		return 0
	}
	return (sum - sum0) / float64(count-count0)
}

// opCounts counts what the daemon sends to Cassandra and ZooKeeper.
type opCounts struct {
	stmts, lwts, serials, zk atomic.Int64
}

func (c *opCounts) ObserveQuery(_ context.Context, q gocql.ObservedQuery) {
	c.stmts.Add(1)
	if isLWT(q.Statement) {
		c.lwts.Add(1)
	}
	if q.Query != nil {
		if cl := q.Query.GetConsistency(); cl == gocql.Serial || cl == gocql.LocalSerial {
			c.serials.Add(1)
		}
	}
}

func (c *opCounts) ObserveBatch(_ context.Context, b gocql.ObservedBatch) {
	c.stmts.Add(1)
	for _, s := range b.Statements {
		if isLWT(s) {
			c.lwts.Add(1)
			break
		}
	}
}

func isLWT(stmt string) bool { return strings.Contains(stmt, " IF ") }

func (c *opCounts) snapshot() [4]int64 {
	return [4]int64{c.stmts.Load(), c.lwts.Load(), c.serials.Load(), c.zk.Load()}
}

// zkCounter counts ZooKeeper requests on the wire: every frame the client writes except the
// connect request (xid 0) and pings (xid -2).
type zkCounter struct {
	net.Conn
	n *atomic.Int64
}

func (c zkCounter) Write(p []byte) (int, error) {
	if len(p) >= 12 {
		if xid := int32(binary.BigEndian.Uint32(p[4:8])); xid != 0 && xid != -2 {
			c.n.Add(1)
		}
	}
	return c.Conn.Write(p)
}

func newRESTBench(b *testing.B) *restBench {
	b.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	counts := &opCounts{}

	ccfg := journal.DefaultCassandraConfig()
	ccfg.Keyspace = testenv.UniqueName("musicd_bench_")
	ccfg.QueryObserver, ccfg.BatchObserver = counts, counts
	deps, cass, _ := distributedDeps(b, ccfg, func(network, addr string, timeout time.Duration) (net.Conn, error) {
		c, err := net.DialTimeout(network, addr, timeout)
		if err != nil {
			return nil, err
		}
		return zkCounter{Conn: c, n: &counts.zk}, nil
	}, logger)
	cfg := state.DefaultConfig()
	cfg.Site, cfg.Instance = "bench", "bench-0"
	if v, err := strconv.Atoi(os.Getenv("MUSIC_BENCH_SHARDS")); err == nil {
		cfg.EventualShards = v
	}
	stateReg := prometheus.NewRegistry()
	deps.Registerer = stateReg
	svc, err := state.New(cfg, deps)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = svc.Run(runCtx) }()

	acfg := DefaultConfig()
	acfg.Listen = "127.0.0.1:0"
	srv, err := NewServer(acfg, Deps{Logger: logger, Registry: prometheus.NewRegistry(), State: svc})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() {
		_ = srv.Shutdown(context.Background())
		stop()
		wg.Wait()
		_ = cass.Session.Query(`DROP KEYSPACE ` + ccfg.Keyspace).Exec()
		_ = cass.Session.Query(`DROP KEYSPACE bench`).Exec()
	})
	env := &restBench{base: "http://" + ln.Addr().String(), client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second},
		session: cass.Session, ks: ccfg.Keyspace, counts: counts, reg: stateReg}
	_ = cass.Session.Query(`DROP KEYSPACE bench`).Exec() // a previous run's, if it was killed
	for _, body := range []struct{ path, body string }{
		{"/v1/keyspaces", `{"name":"bench"}`},
		{"/v1/keyspaces/bench/tables", `{"name":"kv","columns":[{"name":"id","type":"bigint"},{"name":"v","type":"text"},{"name":"n","type":"bigint"}],"partition_key":["id"]}`},
	} {
		resp, err := env.client.Post(env.base+body.path, "application/json", strings.NewReader(body.body))
		if err != nil || resp.StatusCode != 201 {
			b.Fatalf("setup %s: %v %v", body.path, err, resp)
		}
		resp.Body.Close()
	}
	// The driver's table for the limit: the same columns, in the same keyspace.
	if err := cass.Session.Query(`CREATE TABLE bench.raw (id bigint PRIMARY KEY, v text, n bigint, music_ts bigint)`).Exec(); err != nil {
		b.Fatal(err)
	}
	return env
}

func (e *restBench) req(method, path, body string, h http.Header) *http.Request {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, e.base+"/v1/keyspaces/bench/tables/kv"+path, r)
	for k, v := range h {
		req.Header[k] = v
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return req
}

// do sends req and checks its status; on failure it reports the error and returns nil (it may run
// on a client goroutine, where b.Fatal is not allowed).
func (e *restBench) do(b *testing.B, req *http.Request, want int) *http.Response {
	resp, err := e.client.Do(req)
	if err != nil {
		b.Error(err)
		return nil
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		b.Errorf("%s %s: %d %s", req.Method, req.URL.Path, resp.StatusCode, body)
		return nil
	}
	return resp
}

// lock creates and acquires the lock of row id, returning the reference.
func (e *restBench) lock(b *testing.B, id int) string {
	req, _ := http.NewRequest("POST", fmt.Sprintf("%s/v1/keyspaces/bench/tables/kv/locks/%d", e.base, id), strings.NewReader(`{"lease":"10m"}`))
	resp, err := e.client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		b.Fatalf("create lock: %d %s", resp.StatusCode, body.String())
	}
	var created struct{ Ref string }
	if err := json.Unmarshal(body.Bytes(), &created); err != nil || created.Ref == "" {
		b.Fatalf("no ref in %s (%v)", body.String(), err)
	}
	ref := created.Ref
	acq, _ := http.NewRequest("POST", e.base+"/v1/locks/"+ref+"/acquire?wait=5s", nil)
	if e.do(b, acq, 200) == nil {
		b.FailNow()
	}
	return ref
}

// put writes row id eventually and returns its ETag.
func (e *restBench) put(b *testing.B, id int) string {
	resp := e.do(b, e.req("PUT", fmt.Sprintf("/rows/%d", id), `{"values":{"v":"x","n":0}}`, nil), 200)
	if resp == nil {
		b.FailNow()
	}
	return resp.Header.Get("ETag")
}

type benchResult struct {
	rate, p50, p99 float64
	per            [4]float64 // statements, LWTs, SERIAL reads, ZooKeeper requests per request
	cpu            cpuPerOp
}

func (r benchResult) report(b *testing.B) {
	b.ReportMetric(r.p50, "p50_ms")
	b.ReportMetric(r.p99, "p99_ms")
	b.ReportMetric(r.per[0], "cql_stmts/op")
	b.ReportMetric(r.per[1], "lwt/op")
	b.ReportMetric(r.per[2], "serial_reads/op")
	b.ReportMetric(r.per[3], "zk_reqs/op")
}

func (r benchResult) reportAll(b *testing.B) {
	b.ReportMetric(r.rate, "req/s")
	r.report(b)
}

func (e *restBench) run(b *testing.B, conc, n int, mk func(w, i int) (benchReq, int)) benchResult {
	return e.runResp(b, conc, n, mk, nil)
}

// runResp sends n requests from conc clients (client w sends its i-th request mk(w, i)) and
// measures them. Each client is one keep-alive connection written and read by its own goroutine,
// as wrk or h2load do, and renders its requests and parses the responses itself: on a machine
// whose two cores also run the daemon and Cassandra, the load generator's CPU is taken from what
// is measured (net/http's Transport, with two goroutines per connection and the hand-offs between
// them, took about a quarter of the process's CPU; http.Request.Write and http.ReadResponse
// another tenth).
func (e *restBench) runResp(b *testing.B, conc, n int, mk func(w, i int) (benchReq, int), after func(w int, resp benchResp)) benchResult {
	lat := make([][]time.Duration, conc)
	conns := make([]*benchConn, conc)
	for w := range conns {
		c, err := e.dial()
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[w] = c
	}
	before := e.counts.snapshot()
	cpu0 := readCPU()
	b.ResetTimer()
	b.StartTimer() // an earlier run in the same benchmark stopped it
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += conc {
				req, want := mk(w, i/conc)
				t0 := time.Now()
				resp, err := conns[w].do(req, want)
				if err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
				if after != nil {
					after(w, resp)
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	b.StopTimer()
	after2 := e.counts.snapshot()
	all := slices.Concat(lat...)
	r := benchResult{rate: float64(n) / took.Seconds(), p50: ms(pct(all, 50)), p99: ms(pct(all, 99)), cpu: readCPU().since(cpu0, n)}
	for i := range r.per {
		r.per[i] = float64(after2[i]-before[i]) / float64(n)
	}
	return r
}

// benchReq is one request of a benchmark: path is below the benchmark's table.
type benchReq struct {
	method, path, body string
	header             http.Header
}

func (e *restBench) breq(method, path, body string, h http.Header) benchReq {
	return benchReq{method: method, path: "/v1/keyspaces/bench/tables/kv" + path, body: body, header: h}
}

// benchResp is what a benchmark keeps of a response.
type benchResp struct {
	status int
	etag   string
}

// benchConn is one keep-alive HTTP/1.1 connection to the daemon, used by one goroutine.
type benchConn struct {
	net.Conn
	r   *bufio.Reader
	out []byte // the request being rendered
	in  []byte // the response body
}

func (e *restBench) dial() (*benchConn, error) {
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(e.base, "http://"), 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &benchConn{Conn: c, r: bufio.NewReaderSize(c, 16<<10)}, nil
}

// do sends req, reads the whole response and checks its status. The response must carry a
// Content-Length (the daemon's answers to these requests do; chunked ones are refused).
func (c *benchConn) do(req benchReq, want int) (benchResp, error) {
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	b := append(c.out[:0], req.method...)
	b = append(b, ' ')
	b = append(b, req.path...)
	b = append(b, " HTTP/1.1\r\nHost: bench\r\n"...)
	for k, vs := range req.header {
		for _, v := range vs {
			b = append(append(append(append(b, k...), ": "...), v...), "\r\n"...)
		}
	}
	if req.body != "" {
		b = append(b, "Content-Type: application/json\r\nContent-Length: "...)
		b = strconv.AppendInt(b, int64(len(req.body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(append(b, "\r\n"...), req.body...)
	c.out = b
	if _, err := c.Write(b); err != nil {
		return benchResp{}, err
	}
	var resp benchResp
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return resp, fmt.Errorf("%s %s: status line: %w", req.method, req.path, err)
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return resp, fmt.Errorf("%s %s: bad status line %q", req.method, req.path, line)
	}
	if resp.status, err = strconv.Atoi(string(line[9:12])); err != nil {
		return resp, fmt.Errorf("%s %s: bad status line %q", req.method, req.path, line)
	}
	length := -1
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return resp, fmt.Errorf("%s %s: headers: %w", req.method, req.path, err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return resp, fmt.Errorf("%s %s: bad header %q", req.method, req.path, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil {
				return resp, fmt.Errorf("%s %s: bad Content-Length %q", req.method, req.path, value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			return resp, fmt.Errorf("%s %s: Transfer-Encoding %q: only responses with a Content-Length are read", req.method, req.path, value)
		case bytes.EqualFold(name, []byte("ETag")):
			resp.etag = string(value)
		}
	}
	if length < 0 && (resp.status == http.StatusNoContent || resp.status == http.StatusNotModified) {
		length = 0
	}
	if length < 0 {
		return resp, fmt.Errorf("%s %s: no Content-Length", req.method, req.path)
	}
	c.in = slices.Grow(c.in[:0], length)[:length]
	if _, err := io.ReadFull(c.r, c.in); err != nil {
		return resp, fmt.Errorf("%s %s: body: %w", req.method, req.path, err)
	}
	if resp.status != want {
		return resp, fmt.Errorf("%s %s: %d %s", req.method, req.path, resp.status, c.in)
	}
	return resp, nil
}

// medianResult is the median of each figure of rs.
func medianResult(rs []benchResult) benchResult {
	med := func(f func(benchResult) float64) float64 {
		xs := make([]float64, len(rs))
		for i, r := range rs {
			xs[i] = f(r)
		}
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	out := benchResult{rate: med(func(r benchResult) float64 { return r.rate }),
		p50: med(func(r benchResult) float64 { return r.p50 }), p99: med(func(r benchResult) float64 { return r.p99 })}
	for i := range out.per {
		out.per[i] = med(func(r benchResult) float64 { return r.per[i] })
	}
	out.cpu = cpuPerOp{cassandra: med(func(r benchResult) float64 { return r.cpu.cassandra }),
		process: med(func(r benchResult) float64 { return r.cpu.process })}
	return out
}

// driverInserts inserts n rows directly through the driver from conc goroutines: the limit. Ids
// start at from (per client).
func (e *restBench) driverInserts(b *testing.B, conc, n, from int) benchResult {
	lat := make([][]time.Duration, conc)
	cpu0 := readCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += conc {
				t0 := time.Now()
				err := e.session.Query(`INSERT INTO bench.raw (id, v, n, music_ts) VALUES (?, ?, ?, ?) USING TIMESTAMP ?`,
					int64(w*1_000_000+from+i), "value-"+strconv.Itoa(i), int64(7), t0.UnixMicro(), t0.UnixMicro()).Consistency(gocql.LocalQuorum).Exec()
				if err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	all := slices.Concat(lat...)
	return benchResult{rate: float64(n) / time.Since(start).Seconds(), p50: ms(pct(all, 50)), p99: ms(pct(all, 99)), cpu: readCPU().since(cpu0, n)}
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) float64 { return d.Seconds() * 1000 }

// cpuPerOp is the CPU time per request, in microseconds, that Cassandra (the dev server; 0 if
// its PID is not known) and this process (the daemon and the benchmark's clients, or the
// driver's inserts) used during a run.
type cpuPerOp struct{ cassandra, process float64 }

type cpuClock struct {
	cassandra, process time.Duration
	cassKnown          bool
}

func readCPU() cpuClock {
	c, ok := testenv.ServerCPU("cassandra")
	return cpuClock{cassandra: c, process: testenv.ProcessCPU(), cassKnown: ok}
}

func (c cpuClock) since(c0 cpuClock, n int) cpuPerOp {
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	out := cpuPerOp{process: us(c.process - c0.process)}
	if c.cassKnown && c0.cassKnown {
		out.cassandra = us(c.cassandra - c0.cassandra)
	}
	return out
}

func (c cpuPerOp) report(b *testing.B, suffix string) {
	if c.cassandra > 0 {
		b.ReportMetric(c.cassandra, "cassandra_cpu_us/op"+suffix)
	}
	b.ReportMetric(c.process, "process_cpu_us/op"+suffix)
}
