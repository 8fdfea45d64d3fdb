package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/musicd/musicd/internal/testenv"
)

// restCall sends a JSON request and returns the status, the decoded body and the response.
func restCall(t testing.TB, method, url, body string, h map[string]string) (int, map[string]any, *http.Response) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, resp
}

// The daemon serves keyed state end to end, in both modes: keyspace and table, eventual writes
// (published on the change feed), a lock with critical writes, atomic and compare-and-set writes.
// In embedded mode it does so again after a restart over the same data directory (lock tokens
// stay above the epochs of the previous run).
func TestRESTEndToEnd(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		dataDir := t.TempDir()
		cfg := `
log: {format: json}
api: {listen: "127.0.0.1:0"}
nats: {embedded: {listen: "127.0.0.1:0"}}
`
		file := writeFile(t, cfg)
		d := startDaemon(t, "--config", file, "--data-dir", dataDir)
		base := d.waitServing(30 * time.Second)
		nc, err := nats.Connect(d.logValue(`"msg":"embedded nats server started"`, "url"), nats.Timeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		restScenario(t, base, "app", nc, true)
		if exit, _ := d.stop(syscall.SIGTERM, 5*time.Second); exit != 0 {
			t.Fatalf("exit status %d", exit)
		}
		d = startDaemon(t, "--config", file, "--data-dir", dataDir)
		base = d.waitServing(30 * time.Second)
		restScenario(t, base, "app", nil, false)
		if exit, _ := d.stop(syscall.SIGTERM, 5*time.Second); exit != 0 {
			t.Errorf("exit status %d", exit)
		}
	})
	t.Run("distributed", func(t *testing.T) {
		metaKS := testenv.UniqueName("musicd_test_")
		userKS := testenv.UniqueName("app_")
		t.Cleanup(func() { dropKeyspace(t, metaKS); dropKeyspace(t, userKS) })
		cfg := fmt.Sprintf(`
mode: distributed
site: test-a
log: {format: json}
api: {listen: "127.0.0.1:0"}
cassandra: {contact_points: ["%s"], keyspace: %s}
zookeeper: {servers: ["%s"], root: /%s}
nats: {urls: ["%s"]}
`, testenv.Cassandra(t), metaKS, testenv.ZooKeeper(t), testenv.UniqueName("musicd-test-"), testenv.NATS(t))
		d := startDaemon(t, "--config", writeFile(t, cfg))
		base := d.waitServing(60 * time.Second)
		nc, err := nats.Connect(testenv.NATS(t), nats.Timeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		restScenario(t, base, userKS, nc, true)
		if exit, _ := d.stop(syscall.SIGTERM, 5*time.Second); exit != 0 {
			t.Errorf("exit status %d", exit)
		}
	})
}

// restScenario runs the scenario against base; create says whether to create the keyspace and
// table (false: they exist from a previous run, with row 1 in them).
func restScenario(t *testing.T, base, ks string, nc *nats.Conn, create bool) {
	t.Helper()
	v1 := base + "/v1/keyspaces"
	rows := v1 + "/" + ks + "/tables/kv/rows/"
	jsonCT := map[string]string{"Content-Type": "application/json"}
	var feed *nats.Subscription
	if nc != nil {
		var err error
		if feed, err = nc.SubscribeSync("music.changes." + ks + ".kv.>"); err != nil {
			t.Fatal(err)
		}
		defer feed.Unsubscribe()
	}
	if create {
		if code, body, _ := restCall(t, "POST", v1, `{"name":"`+ks+`"}`, jsonCT); code != 201 {
			t.Fatalf("create keyspace: %d %v", code, body)
		}
		if code, body, _ := restCall(t, "POST", v1+"/"+ks+"/tables", `{"name":"kv","columns":[{"name":"id","type":"bigint"},{"name":"v","type":"text"}],"partition_key":["id"]}`, jsonCT); code != 201 {
			t.Fatalf("create table: %d %v", code, body)
		}
		if code, body, _ := restCall(t, "PUT", rows+"1", `{"values":{"v":"one"}}`, jsonCT); code != 200 {
			t.Fatalf("eventual put: %d %v", code, body)
		}
	}
	code, body, resp := restCall(t, "GET", rows+"1", "", nil)
	if code != 200 || body["values"].(map[string]any)["v"] != "one" || resp.Header.Get("ETag") == "" {
		t.Fatalf("get: %d %v %v", code, body, resp.Header)
	}
	if feed != nil {
		m, err := feed.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatalf("the eventual write on the change feed: %v", err)
		}
		if !strings.Contains(string(m.Data), `"one"`) {
			t.Errorf("change feed message %s: %s", m.Subject, m.Data)
		}
	}
	// A lock, critical writes and reads, release.
	code, body, _ = restCall(t, "POST", v1+"/"+ks+"/tables/kv/locks/2", `{"lease":"30s","owner":"e2e"}`, jsonCT)
	if code != 201 {
		t.Fatalf("create lock: %d %v", code, body)
	}
	ref := body["ref"].(string)
	if code, body, _ = restCall(t, "POST", base+"/v1/locks/"+ref+"/acquire?wait=5s", "", nil); code != 200 {
		t.Fatalf("acquire: %d %v", code, body)
	}
	crit := map[string]string{"Content-Type": "application/json", "Music-Lock": ref}
	if code, body, _ = restCall(t, "PUT", rows+"2?consistency=critical", `{"values":{"v":"critical"}}`, crit); code != 200 {
		t.Fatalf("critical put: %d %v", code, body)
	}
	if code, body, _ = restCall(t, "GET", rows+"2?consistency=critical", "", crit); code != 200 || body["values"].(map[string]any)["v"] != "critical" {
		t.Fatalf("critical get: %d %v", code, body)
	}
	if code, body, _ = restCall(t, "PUT", rows+"2?consistency=atomic&wait=100ms", `{"values":{"v":"blocked"}}`, jsonCT); code != 423 {
		t.Fatalf("atomic put on a held key: %d %v, want 423", code, body)
	}
	if code, _, _ = restCall(t, "DELETE", base+"/v1/locks/"+ref, "", nil); code != 204 {
		t.Fatalf("release: %d", code)
	}
	if code, body, _ = restCall(t, "PUT", rows+"2?consistency=critical", `{"values":{"v":"late"}}`, crit); code != 409 {
		t.Fatalf("critical put after release: %d %v, want 409", code, body)
	}
	// Atomic, then compare-and-set on the version.
	_, _, resp = restCall(t, "PUT", rows+"2?consistency=atomic&wait=5s", `{"values":{"v":"atomic"}}`, jsonCT)
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || etag == "" {
		t.Fatalf("atomic put: %d", resp.StatusCode)
	}
	cas := map[string]string{"Content-Type": "application/json", "If-Match": etag}
	if code, body, _ = restCall(t, "PUT", rows+"2", `{"values":{"v":"cas"}}`, cas); code != 200 {
		t.Fatalf("compare-and-set: %d %v", code, body)
	}
	if code, body, _ = restCall(t, "PUT", rows+"2", `{"values":{"v":"cas again"}}`, cas); code != 412 {
		t.Fatalf("compare-and-set on a stale version: %d %v, want 412", code, body)
	}
	if code, body, _ = restCall(t, "PUT", rows+"2?consistency=atomic&wait=5s", `{"values":{"v":"final"}}`, jsonCT); code != 200 {
		t.Fatalf("atomic put: %d %v", code, body)
	}
	if feed == nil {
		return
	}
	// The writes to key 2 are on the change feed, from the key's stream, in order, and the
	// refused ones (409, 412, 423) are not.
	var stream string
	var seq uint64
	for _, want := range []string{"critical", "atomic", "cas", "final"} {
		m, err := feed.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatalf("waiting for the write %q on the change feed: %v", want, err)
		}
		var env struct {
			Op     string             `json:"op"`
			Key    struct{ ID int64 } `json:"key"`
			After  struct{ V string } `json:"after"`
			Source struct {
				Stream string `json:"stream"`
				Seq    uint64 `json:"seq"`
			} `json:"source"`
		}
		if err := json.Unmarshal(m.Data, &env); err != nil {
			t.Fatalf("envelope on %s: %v: %s", m.Subject, err, m.Data)
		}
		if m.Subject != "music.changes."+ks+".kv.put" || env.Op != "put" || env.Key.ID != 2 || env.After.V != want ||
			!strings.HasPrefix(env.Source.Stream, "kv/"+ks+"/kv/") || m.Header.Get("Music-Stream") != env.Source.Stream {
			t.Fatalf("change feed message on %s, want the write %q of key 2 from its key stream: %s", m.Subject, want, m.Data)
		}
		if stream != "" && (env.Source.Stream != stream || env.Source.Seq != seq+1) {
			t.Errorf("write %q is %s seq %d, want %s seq %d", want, env.Source.Stream, env.Source.Seq, stream, seq+1)
		}
		stream, seq = env.Source.Stream, env.Source.Seq
	}
}
