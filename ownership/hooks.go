package ownership

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// HooksConfig says what to run when this instance gains or loses a partition (the prom daemon
// use case: an application that follows ownership). Each event runs the command and calls the
// webhook, in the order the events happened, one at a time.
type HooksConfig struct {
	// Command is run with the event in its environment: MUSIC_OWNERSHIP_EVENT (serving, released,
	// lost), MUSIC_PARTITION, MUSIC_EPOCH, MUSIC_SITE, MUSIC_INSTANCE. Empty: none.
	Command []string `yaml:"command" help:"program and arguments run when this instance gains or loses a partition (comma-separated)"`
	// Webhook receives the event as JSON (POST); a 2xx answer is success. Empty: none.
	Webhook string `yaml:"webhook" help:"URL that receives each gain or loss of a partition as JSON (POST)"`
	// Timeout bounds one run of the command and one webhook call. Default 10s.
	Timeout time.Duration `yaml:"timeout" help:"bound of one run of the hook command and of one webhook call"`
	// Attempts bounds the tries of a failed command or call (with backoff). Default 3.
	Attempts int `yaml:"attempts" help:"tries of a failed hook (with backoff)"`
}

// maxQueuedHooks bounds the events waiting for their hooks; past it, events are dropped and
// logged (the hooks of one partition still end with its latest state: the next event).
const maxQueuedHooks = 1024

// WithDefaults fills what is left empty.
func (c HooksConfig) WithDefaults() HooksConfig {
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Attempts == 0 {
		c.Attempts = 3
	}
	return c
}

// Validate reports the first invalid field by its YAML key.
func (c HooksConfig) Validate() error {
	if c.Webhook != "" {
		u, err := url.Parse(c.Webhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("webhook: %q is not an http(s) URL", c.Webhook)
		}
	}
	if len(c.Command) > 0 && c.Command[0] == "" {
		return errors.New("command: the program is empty")
	}
	if c.Timeout < 0 || c.Timeout > 10*time.Minute {
		return fmt.Errorf("timeout: %s is outside 0-10m", c.Timeout)
	}
	if c.Attempts < 0 || c.Attempts > 20 {
		return fmt.Errorf("attempts: %d is outside 0-20", c.Attempts)
	}
	return nil
}

// Hooks runs the hooks of the events it is given (Handle), in order, on one goroutine (Run).
type Hooks struct {
	cfg    HooksConfig
	log    *slog.Logger
	client *http.Client
	queue  chan Event
	mu     sync.Mutex
	failed int
}

// NewHooks returns the hook runner of cfg (defaults filled).
func NewHooks(cfg HooksConfig, logger *slog.Logger) *Hooks {
	cfg = cfg.WithDefaults()
	return &Hooks{cfg: cfg, log: logger.With("component", "ownership-hooks"),
		client: &http.Client{Timeout: cfg.Timeout}, queue: make(chan Event, maxQueuedHooks)}
}

// Enabled reports whether there is anything to run.
func (h *Hooks) Enabled() bool { return len(h.cfg.Command) > 0 || h.cfg.Webhook != "" }

// Handle queues ev if it is a gain or a loss of ownership (serving, released, lost). It never
// blocks.
func (h *Hooks) Handle(ev Event) {
	switch ev.Kind {
	case EventServing, EventReleased, EventLost:
	default:
		return
	}
	select {
	case h.queue <- ev:
	default:
		h.log.Error("ownership hook queue full; event dropped", "event", ev.Kind, "partition", ev.Partition, "epoch", ev.Epoch)
	}
}

// Failed returns how many events' hooks failed after every attempt.
func (h *Hooks) Failed() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failed
}

// Run runs the queued hooks until ctx ends.
func (h *Hooks) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-h.queue:
			if err := h.run(ctx, ev); err != nil && ctx.Err() == nil {
				h.mu.Lock()
				h.failed++
				h.mu.Unlock()
				h.log.Error("ownership hook failed", "event", ev.Kind, "partition", ev.Partition, "epoch", ev.Epoch, "err", err)
			}
		}
	}
}

func (h *Hooks) run(ctx context.Context, ev Event) error {
	b := backoff.WithContext(backoff.WithMaxRetries(backoff.NewExponentialBackOff(), uint64(max(h.cfg.Attempts-1, 0))), ctx)
	return backoff.Retry(func() error {
		if len(h.cfg.Command) > 0 {
			if err := h.command(ctx, ev); err != nil {
				return err
			}
		}
		if h.cfg.Webhook != "" {
			return h.webhook(ctx, ev)
		}
		return nil
	}, b)
}

func (h *Hooks) command(ctx context.Context, ev Event) error {
	cctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, h.cfg.Command[0], h.cfg.Command[1:]...)
	cmd.Env = append(os.Environ(),
		"MUSIC_OWNERSHIP_EVENT="+ev.Kind,
		"MUSIC_PARTITION="+ev.Partition,
		"MUSIC_EPOCH="+strconv.FormatUint(ev.Epoch, 10),
		"MUSIC_SITE="+ev.Site,
		"MUSIC_INSTANCE="+ev.Instance)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 512 {
			out = out[:512]
		}
		return fmt.Errorf("command %s: %w: %s", h.cfg.Command[0], err, bytes.TrimSpace(out))
	}
	return nil
}

func (h *Hooks) webhook(ctx context.Context, ev Event) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return backoff.Permanent(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.Webhook, bytes.NewReader(body))
	if err != nil {
		return backoff.Permanent(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook: %s answered %s", h.cfg.Webhook, resp.Status)
	}
	return nil
}
