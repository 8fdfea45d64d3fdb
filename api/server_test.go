package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func newTestServer(t testing.TB, checks ...NamedCheck) *Server {
	t.Helper()
	s, err := NewServer(DefaultConfig(), Deps{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(),
		Checks:   checks,
		Build:    BuildInfo{Version: "v-test", Commit: "c0ffee", GoVersion: "go", Site: "a", Mode: "embedded"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func do(t testing.TB, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Code, rec.Body.String()
}

func TestReadyzReportsEachCheck(t *testing.T) {
	var failing bool
	s := newTestServer(t,
		NamedCheck{"good", CheckFunc(func(context.Context) error { return nil })},
		NamedCheck{"flaky", CheckFunc(func(context.Context) error {
			if failing {
				return errors.New("connection refused")
			}
			return nil
		})},
	)
	h := s.Handler()
	code, body := do(t, h, "GET", "/readyz")
	if code != 200 || !strings.Contains(body, `"status": "ready"`) {
		t.Fatalf("all passing: %d %s", code, body)
	}
	failing = true
	code, body = do(t, h, "GET", "/readyz")
	var r struct {
		Status string
		Checks []checkResult
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if code != 503 || r.Status != "not ready" || len(r.Checks) != 2 || r.Checks[0].Name != "good" || !r.Checks[0].OK ||
		r.Checks[1].OK || r.Checks[1].Error != "connection refused" {
		t.Errorf("one failing: %d %+v", code, r)
	}
	_, metrics := do(t, h, "GET", "/metrics")
	for _, want := range []string{`music_dependency_up{dependency="flaky"} 0`, `music_dependency_up{dependency="good"} 1`,
		`music_build_info{commit="c0ffee",goversion="go",mode="embedded",site="a",version="v-test"} 1`,
		`music_http_requests_total{code="503",method="get",route="readyz"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// A check that hangs is cut off by CheckTimeout and reported, not waited for.
func TestReadyzBoundsSlowChecks(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CheckTimeout = 50 * time.Millisecond
	s, err := NewServer(cfg, Deps{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(),
		Checks: []NamedCheck{{"stuck", CheckFunc(func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		})}},
	})
	if err != nil {
		t.Fatal(err)
	}
	code, body := do(t, s.Handler(), "GET", "/readyz")
	if code != 503 || !strings.Contains(body, "deadline exceeded") {
		t.Errorf("stuck check: %d %s", code, body)
	}
}

func TestEndpoints(t *testing.T) {
	h := newTestServer(t).Handler()
	for _, tc := range []struct {
		method, path string
		code         int
		want         string
	}{
		{"GET", "/healthz", 200, `"status": "ok"`},
		{"GET", "/version", 200, `"version": "v-test"`},
		{"GET", "/readyz", 200, `"checks": []`},
		{"GET", "/missing", 404, `"code": "not_found"`},
		{"POST", "/healthz", 405, `"code": "method_not_allowed"`},
	} {
		code, body := do(t, h, tc.method, tc.path)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s: %d %q, want %d with %q", tc.method, tc.path, code, body, tc.code, tc.want)
		}
	}
}

// Shutdown makes the instance not ready at once, lets an in-flight request finish, and refuses
// new connections.
func TestShutdownDrains(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	s := newTestServer(t, NamedCheck{"slow", CheckFunc(func(ctx context.Context) error {
		close(entered)
		<-release
		return nil
	})})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	url := "http://" + ln.Addr().String()

	type result struct {
		code int
		err  error
	}
	inflight := make(chan result, 1)
	go func() {
		resp, err := http.Get(url + "/readyz")
		if err != nil {
			inflight <- result{0, err}
			return
		}
		resp.Body.Close()
		inflight <- result{resp.StatusCode, nil}
	}()
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	// New connections are refused once the listener is closed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepting after Shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	r := <-inflight
	if r.err != nil || r.code != 503 {
		t.Errorf("in-flight request during shutdown: %d %v, want 503 (draining) and a complete response", r.code, r.err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve after Shutdown: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	c.Listen = "127.0.0.1:70000"
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "listen:") {
		t.Errorf("bad listen: %v", err)
	}
	c = DefaultConfig()
	c.CheckTimeout = 0
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "check_timeout:") {
		t.Errorf("zero check_timeout: %v", err)
	}
}
