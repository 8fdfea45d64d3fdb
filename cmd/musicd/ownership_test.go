package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/musicd/musicd/internal/testenv"
)

// ack is a write the workload's client saw acknowledged.
type ack struct {
	key        string
	site       string
	start, end time.Time
}

// ownershipEvent is an announcement received on NATS, with the time the test received it.
type ownershipEvent struct {
	Kind, Partition, Site, Instance string
	Epoch                           uint64
	at                              time.Time
}

// Three sites, each a musicd in distributed mode over shared Cassandra, ZooKeeper and NATS, own
// the partition "acct" of a keyed-state table in the order a, b, c, while a client writes to
// whichever site owns it (following 409 not_owner to the owner it names):
//   - a non-owner answers 409 naming the owner's site and address;
//   - the owner is frozen (SIGSTOP) past its ZooKeeper session timeout: b takes over; resumed,
//     a accepts no write until the map gives the partition back to it (a planned move: b drains
//     and hands over cleanly), and in the client's history no two sites' writes interleave;
//   - the owner is killed with -9: b takes over; the time from the kill to b's first
//     acknowledged write is logged;
//   - every acknowledged write is readable at the end, and every change was announced on NATS.
func TestOwnershipThreeSites(t *testing.T) {
	metaKS := testenv.UniqueName("musicd_test_")
	userKS := testenv.UniqueName("own_")
	t.Cleanup(func() { dropKeyspace(t, metaKS); dropKeyspace(t, userKS) })
	zkRoot := "/" + testenv.UniqueName("musicd-test-own-")
	nc, err := nats.Connect(testenv.NATS(t), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var evMu sync.Mutex
	var events []ownershipEvent
	sub, err := nc.Subscribe("music.ownership.>", func(m *nats.Msg) {
		var ev ownershipEvent
		if json.Unmarshal(m.Data, &ev) == nil {
			ev.at = time.Now()
			evMu.Lock()
			events = append(events, ev)
			evMu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	configs := map[string]string{}
	for _, site := range []string{"a", "b", "c"} {
		configs[site] = writeFile(t, fmt.Sprintf(`
mode: distributed
site: %s
log: {format: json}
api: {listen: "127.0.0.1:0"}
cassandra: {contact_points: ["%s"], keyspace: %s}
zookeeper: {servers: ["%s"], root: %s, session_timeout: 2s}
nats: {urls: ["%s"]}
ownership:
  sites: [a, b, c]
  failover_grace: 1s
  partitions:
    - {name: acct, tables: [%s.accounts], placement: {mode: preferred, sites: [a, b, c]}}
    - {name: users, tables: [%s.users], hash: {columns: [id], buckets: 4}, placement: {mode: spread}}
`, site, testenv.Cassandra(t), metaKS, testenv.ZooKeeper(t), zkRoot, testenv.NATS(t), userKS, userKS))
	}
	var mu sync.Mutex // guards daemons and bases (the client reads them)
	daemons, bases := map[string]*daemon{}, map[string]string{}
	start := func(site string) {
		d := startDaemon(t, "--config", configs[site])
		base := d.waitServing(60 * time.Second)
		mu.Lock()
		daemons[site], bases[site] = d, base
		mu.Unlock()
	}
	for _, site := range []string{"a", "b", "c"} {
		start(site)
	}
	jsonCT := map[string]string{"Content-Type": "application/json"}
	v1 := bases["a"] + "/v1/keyspaces"
	if code, body, _ := restCall(t, "POST", v1, `{"name":"`+userKS+`"}`, jsonCT); code != 201 {
		t.Fatalf("create keyspace: %d %v", code, body)
	}
	for _, tb := range []string{"accounts", "users"} {
		if code, body, _ := restCall(t, "POST", v1+"/"+userKS+"/tables", `{"name":"`+tb+`","columns":[{"name":"id","type":"text"},{"name":"n","type":"bigint"}],"partition_key":["id"]}`, jsonCT); code != 201 {
			t.Fatalf("create table %s: %d %v", tb, code, body)
		}
	}
	ownerAt := func(site string) (owner, state string) {
		mu.Lock()
		base := bases[site]
		mu.Unlock()
		var v struct {
			Partitions []struct {
				Partition, State string
				Owner            *struct{ Site string }
			}
		}
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(base + "/v1/ownership")
		if err != nil {
			return "", ""
		}
		defer resp.Body.Close()
		if json.NewDecoder(resp.Body).Decode(&v) != nil {
			return "", ""
		}
		for _, p := range v.Partitions {
			if p.Partition == "acct" && p.Owner != nil {
				return p.Owner.Site, p.State
			}
		}
		return "", ""
	}
	ownedBy := func(want string, at ...string) func() bool {
		return func() bool {
			for _, s := range at {
				if o, _ := ownerAt(s); o != want {
					return false
				}
			}
			o, st := ownerAt(want)
			return o == want && st == "serving"
		}
	}
	testenv.WaitFor(t, 60*time.Second, "a to own acct", ownedBy("a", "b", "c"))

	put := func(site, key string, n int) (int, map[string]any) {
		mu.Lock()
		base := bases[site]
		mu.Unlock()
		req, _ := http.NewRequest("PUT", base+"/v1/keyspaces/"+userKS+"/tables/accounts/rows/"+key,
			strings.NewReader(fmt.Sprintf(`{"values":{"n":%d}}`, n)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := (&http.Client{Timeout: 1500 * time.Millisecond}).Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	// A non-owner names the owner.
	code, body := put("b", "probe", 1)
	owner, _ := body["owner"].(map[string]any)
	if code != 409 || body["code"] != "not_owner" || body["partition"] != "acct" || owner["site"] != "a" ||
		"http://"+fmt.Sprint(owner["address"]) != bases["a"] {
		t.Fatalf("write at b: %d %v (a is %s)", code, body, bases["a"])
	}

	// The client: one write at a time to the site it believes owns acct, following not_owner;
	// after a timeout or a 503 it asks the next site.
	var ackMu sync.Mutex
	var acks []ack
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		site, sites := "a", []string{"a", "b", "c"}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			key := fmt.Sprintf("k%05d", i)
			started := time.Now()
			code, body := put(site, key, i)
			switch code {
			case 200:
				ackMu.Lock()
				acks = append(acks, ack{key, site, started, time.Now()})
				ackMu.Unlock()
			case 409:
				if o, ok := body["owner"].(map[string]any); ok {
					site = fmt.Sprint(o["site"])
				}
			default: // unreachable, frozen, or no owner now: try another site
				site = sites[(strings.Index("abc", site)+1)%3]
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond): // a client's pause between retries
				}
			}
		}
	}()
	acked := func(site string) int {
		ackMu.Lock()
		defer ackMu.Unlock()
		n := 0
		for _, a := range acks {
			if a.site == site {
				n++
			}
		}
		return n
	}
	testenv.WaitFor(t, 30*time.Second, "writes acknowledged by a", func() bool { return acked("a") >= 20 })

	// Freeze a past its session timeout.
	if err := daemons["a"].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	testenv.WaitFor(t, 60*time.Second, "b to own acct while a is frozen", ownedBy("b", "c"))
	testenv.WaitFor(t, 30*time.Second, "writes acknowledged by b", func() bool { return acked("b") >= 20 })
	t.Logf("a frozen: b serves acct after %s", time.Since(frozen).Round(time.Millisecond))
	if err := daemons["a"].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Resumed, a refuses writes until the map gives acct back to it: b releases it first.
	testenv.WaitFor(t, 60*time.Second, "a to own acct again (planned move back)", ownedBy("a", "b", "c"))
	testenv.WaitFor(t, 30*time.Second, "more writes acknowledged by a", func() bool { return acked("a") >= 40 })

	// Kill the owner.
	mu.Lock()
	killed := time.Now()
	_ = daemons["a"].cmd.Process.Kill()
	<-daemons["a"].exited
	mu.Unlock()
	bBefore := acked("b")
	testenv.WaitFor(t, 60*time.Second, "b to own acct after a is killed", ownedBy("b", "c"))
	testenv.WaitFor(t, 30*time.Second, "writes acknowledged by b after the kill", func() bool { return acked("b") > bBefore })
	ackMu.Lock()
	var firstB time.Time
	for _, a := range acks {
		if a.site == "b" && a.start.After(killed) {
			firstB = a.end
			break
		}
	}
	ackMu.Unlock()
	t.Logf("a killed: first write acknowledged by b %s later (session timeout 2s, grace 1s)", firstB.Sub(killed).Round(time.Millisecond))
	evMu.Lock()
	for _, ev := range events {
		if ev.at.After(killed) {
			t.Logf("  +%s %s %s %s", ev.at.Sub(killed).Round(time.Millisecond), ev.Site, ev.Kind, ev.Partition)
		}
	}
	evMu.Unlock()
	close(stop)
	<-done

	// The history: the acknowledging site changes only when ownership moved; a resumed a
	// acknowledged nothing between b's takeover and b's release.
	evMu.Lock()
	evs := append([]ownershipEvent(nil), events...)
	evMu.Unlock()
	var bServing, bReleased time.Time
	for _, ev := range evs {
		if ev.Partition != "acct" || ev.Site != "b" {
			continue
		}
		if ev.Kind == "serving" && bServing.IsZero() {
			bServing = ev.at
		}
		if ev.Kind == "released" && bReleased.IsZero() {
			bReleased = ev.at
		}
	}
	if bServing.IsZero() || bReleased.IsZero() {
		t.Fatalf("announcements of b: serving %v, released %v (%d events)", bServing, bReleased, len(evs))
	}
	ackMu.Lock()
	defer ackMu.Unlock()
	for i, a := range acks {
		if a.site == "a" && a.end.After(bServing) && a.start.Before(bReleased) {
			t.Errorf("write %s acknowledged by a at %s, while b owned acct (%s to %s)", a.key, a.end.Format(time.StampMilli),
				bServing.Format(time.StampMilli), bReleased.Format(time.StampMilli))
		}
		if i > 0 && a.start.Before(acks[i-1].end) {
			t.Errorf("writes %s and %s overlap", acks[i-1].key, a.key)
		}
	}
	// Every acknowledged write is there (read at c, the site that never owned acct).
	for _, a := range acks {
		code, body, _ := restCall(t, "GET", bases["c"]+"/v1/keyspaces/"+userKS+"/tables/accounts/rows/"+a.key, "", nil)
		if code != 200 {
			t.Errorf("acknowledged write %s (by %s) reads %d %v", a.key, a.site, code, body)
		}
	}
	var announced []string
	for _, ev := range evs {
		if ev.Partition == "acct" {
			announced = append(announced, ev.Site+":"+ev.Kind)
		}
	}
	for _, want := range []string{"a:serving", "a:lost", "b:catchup", "b:serving", "b:draining", "b:released"} {
		if !strings.Contains(strings.Join(announced, " "), want) {
			t.Errorf("no %s announced on NATS: %v", want, announced)
		}
	}
	t.Logf("%d writes acknowledged; announcements of acct: %v", len(acks), announced)
}
