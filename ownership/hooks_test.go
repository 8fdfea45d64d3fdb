package ownership

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musicd/musicd/internal/testenv"
)

// The command and the webhook run for gains and losses only, in order; a webhook that fails is
// tried again (with backoff, a bounded number of times).
func TestHooks(t *testing.T) {
	var mu sync.Mutex
	var got []Event
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var ev Event
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
			t.Error(err)
		}
		got = append(got, ev)
	}))
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "events")
	h := NewHooks(HooksConfig{Command: []string{"sh", "-c", `echo "$MUSIC_OWNERSHIP_EVENT $MUSIC_PARTITION $MUSIC_EPOCH $MUSIC_SITE" >> ` + file},
		Webhook: srv.URL, Timeout: 5 * time.Second}, slog.New(slog.DiscardHandler))
	if err := h.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for _, ev := range []Event{
		{Kind: EventMap, Version: 3},
		{Kind: EventServing, Partition: "users/3", Epoch: 17, Site: "a"},
		{Kind: EventCatching, Partition: "orders", Epoch: 18, Site: "a"},
		{Kind: EventLost, Partition: "users/3", Epoch: 17, Site: "a"},
	} {
		h.Handle(ev)
	}
	testenv.WaitFor(t, 30*time.Second, "two webhook calls", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2
	})
	lines, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// The first event's command ran twice: its webhook failed once, and the hook is retried whole.
	want := "serving users/3 17 a\nserving users/3 17 a\nlost users/3 17 a\n"
	if string(lines) != want {
		t.Errorf("command runs:\n%s\nwant\n%s", lines, want)
	}
	mu.Lock()
	if got[0].Kind != EventServing || got[1].Kind != EventLost || got[1].Epoch != 17 {
		t.Errorf("webhook events: %+v", got)
	}
	mu.Unlock()
	if h.Failed() != 0 {
		t.Errorf("%d hooks failed", h.Failed())
	}
}

func TestHooksGiveUp(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		w.WriteHeader(http.StatusInternalServerError)
	}))
	defer srv.Close()
	h := NewHooks(HooksConfig{Webhook: srv.URL, Attempts: 2}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = h.Run(ctx) }()
	defer func() { cancel(); <-done }()
	h.Handle(Event{Kind: EventReleased, Partition: "orders", Epoch: 5})
	testenv.WaitFor(t, 30*time.Second, "the hook to be given up", func() bool { return h.Failed() == 1 })
	mu.Lock()
	defer mu.Unlock()
	if calls != 2 {
		t.Errorf("%d calls, want 2 attempts", calls)
	}
}

func TestHooksConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  HooksConfig
		want string
	}{
		{HooksConfig{Webhook: "ftp://x"}, "webhook"},
		{HooksConfig{Webhook: "http://"}, "webhook"},
		{HooksConfig{Command: []string{""}}, "command"},
		{HooksConfig{Timeout: time.Hour}, "timeout"},
		{HooksConfig{Attempts: 100}, "attempts"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %s", c.cfg, err, c.want)
		}
	}
	if err := (HooksConfig{Command: []string{"true"}, Webhook: "https://example.com/hook"}).Validate(); err != nil {
		t.Error(err)
	}
}
