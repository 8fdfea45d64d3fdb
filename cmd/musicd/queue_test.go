package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
)

// queueCall sends one JSON request and decodes the answer into out (when not nil).
func queueCall(c *http.Client, method, url, body string, out any) (int, error) {
	req, err := http.NewRequest(method, url, bytes.NewBufferString(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if out != nil && len(raw) > 0 && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w: %s", method, url, err, raw)
		}
	}
	if resp.StatusCode >= 500 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, raw)
	}
	return resp.StatusCode, nil
}

// TestQueueAcrossThreeDaemons: three musicd (three sites, one Cassandra, ZooKeeper and NATS)
// serve one queue; 10,000 jobs are enqueued through all three while 16 workers claim through
// them. Some workers abandon some of their claims (their leases run out and the reaper, elected
// among the three, returns the jobs), and try to complete them late. A checker over the log of
// successful completions finds every job completed exactly once, and every late completion
// refused.
func TestQueueAcrossThreeDaemons(t *testing.T) {
	ks := testenv.UniqueName("musicd_test_")
	t.Cleanup(func() { dropKeyspace(t, ks) })
	zroot := "/" + testenv.UniqueName("musicd-queue-")
	var bases []string
	var daemons []*daemon
	for _, site := range []string{"qa", "qb", "qc"} {
		cfg := fmt.Sprintf(`
mode: distributed
site: %s
log: {format: json}
api: {listen: "127.0.0.1:0"}
cassandra: {contact_points: ["%s"], keyspace: %s}
zookeeper: {servers: ["%s"], root: %s}
nats: {urls: ["%s"]}
queue: {reap_interval: 200ms, reap_grace: 100ms}
`, site, testenv.Cassandra(t), ks, testenv.ZooKeeper(t), zroot, testenv.NATS(t))
		d := startDaemon(t, "--config", writeFile(t, cfg))
		daemons = append(daemons, d)
	}
	for _, d := range daemons {
		bases = append(bases, d.waitServing(90*time.Second))
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	q := "/v1/queues/app/work"
	if code, err := queueCall(client, "POST", bases[0]+"/v1/queues/app", `{"name":"work","shards":16,"max_attempts":1000,"lease":"5s"}`, nil); err != nil || code != 201 {
		t.Fatalf("create queue: %d %v", code, err)
	}

	const jobs, workers = 10000, 16
	var (
		mu        sync.Mutex
		completed = map[string][]int{} // job -> the workers whose completion succeeded
		abandoned atomic.Int64
		late      atomic.Int64 // late completions, all refused
		failures  = make(chan error, workers+8)
		done      atomic.Bool
	)
	deadline := time.Now().Add(8 * time.Minute)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := bases[w%3]
			type claim struct {
				id, token string
				at        time.Time
			}
			var stale []claim
			for n := 0; !done.Load(); n++ {
				if time.Now().After(deadline) {
					failures <- fmt.Errorf("worker %d: deadline passed", w)
					return
				}
				var j struct{ ID, Token string }
				lease := "5s"
				abandon := w%4 == 0 && n%97 == 13
				if abandon {
					lease = "300ms"
				}
				code, err := queueCall(client, "POST", base+q+"/claim", fmt.Sprintf(`{"worker":"w%d","lease":"%s","wait":"1s"}`, w, lease), &j)
				if err != nil {
					failures <- fmt.Errorf("worker %d: claim: %w", w, err)
					return
				}
				if code == 204 {
					continue
				}
				if code != 200 {
					failures <- fmt.Errorf("worker %d: claim answered %d", w, code)
					return
				}
				if abandon {
					abandoned.Add(1)
					stale = append(stale, claim{j.ID, j.Token, time.Now()})
					continue
				}
				code, err = queueCall(client, "POST", base+q+"/jobs/"+j.ID+"/complete", `{"token":"`+j.Token+`"}`, nil)
				if err != nil {
					failures <- fmt.Errorf("worker %d: complete %s: %w", w, j.ID, err)
					return
				}
				if code == 204 {
					mu.Lock()
					completed[j.ID] = append(completed[j.ID], w)
					if len(completed) == jobs {
						done.Store(true)
					}
					mu.Unlock()
				}
				// Late completions of abandoned claims (their leases have run out by now or
				// will have when the job is claimed again): refused.
				for len(stale) > 0 && time.Since(stale[0].at) > time.Second {
					s := stale[0]
					stale = stale[1:]
					code, err := queueCall(client, "POST", base+q+"/jobs/"+s.id+"/complete", `{"token":"`+s.token+`"}`, nil)
					if err != nil {
						failures <- fmt.Errorf("worker %d: late complete %s: %w", w, s.id, err)
						return
					}
					late.Add(1)
					if code != 410 && code != 409 {
						failures <- fmt.Errorf("worker %d: late complete of %s answered %d, want 410 or 409", w, s.id, code)
						return
					}
				}
			}
		}()
	}
	// Enqueue through all three daemons while the workers claim.
	start := time.Now()
	var enq sync.WaitGroup
	for p := range 8 {
		enq.Add(1)
		go func() {
			defer enq.Done()
			for i := p; i < jobs; i += 8 {
				code, err := queueCall(client, "POST", bases[i%3]+q+"/jobs", fmt.Sprintf(`{"id":"job-%d","payload":{"n":%d}}`, i, i), nil)
				if err != nil || code != 201 {
					failures <- fmt.Errorf("enqueue job-%d: %d %v", i, code, err)
					return
				}
			}
		}()
	}
	enq.Wait()
	wg.Wait()
	took := time.Since(start)
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	// The checker: every job completed exactly once.
	for i := range jobs {
		if ws := completed[fmt.Sprintf("job-%d", i)]; len(ws) != 1 {
			t.Errorf("job-%d completed %d times (workers %v)", i, len(ws), ws)
		}
	}
	if len(completed) != jobs {
		t.Errorf("%d distinct jobs completed, want %d", len(completed), jobs)
	}
	if abandoned.Load() == 0 || late.Load() == 0 {
		t.Errorf("abandoned %d claims, %d late completions: the test did not exercise expiry", abandoned.Load(), late.Load())
	}
	var left struct{ Jobs []any }
	if code, err := queueCall(client, "GET", bases[1]+q+"/jobs?limit=10", "", &left); err != nil || code != 200 || len(left.Jobs) != 0 {
		t.Errorf("jobs left: %d %v %v", code, err, left.Jobs)
	}
	var dead struct{ Jobs []any }
	if code, err := queueCall(client, "GET", bases[2]+q+"/dead", "", &dead); err != nil || code != 200 || len(dead.Jobs) != 0 {
		t.Errorf("dead letters: %d %v %v", code, err, dead.Jobs)
	}
	t.Logf("%d jobs by %d workers over 3 daemons in %s (%.0f jobs/s); %d claims abandoned, %d late completions refused",
		jobs, workers, took.Round(time.Millisecond), float64(jobs)/took.Seconds(), abandoned.Load(), late.Load())
	for _, d := range daemons {
		if exit, _ := d.stop(syscall.SIGTERM, 10*time.Second); exit != 0 {
			t.Errorf("exit status %d, want 0", exit)
		}
	}
}
