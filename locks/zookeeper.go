package locks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/musicd/musicd/internal/hostport"
)

// ZooKeeperConfig says how musicd reaches its ZooKeeper ensemble (distributed mode).
type ZooKeeperConfig struct {
	// Servers of the ensemble, host:port.
	Servers []string `yaml:"servers" help:"ZooKeeper ensemble, host:port (comma-separated)"`
	// SessionTimeout: a musicd whose session expires loses every lock it holds. Default 10s.
	SessionTimeout time.Duration `yaml:"session_timeout" help:"ZooKeeper session timeout (a lost session loses every lock)"`
	// Root is the znode under which musicd keeps locks, elections and ownership. Default /music.
	Root string `yaml:"root" help:"znode under which musicd keeps its locks, elections and ownership"`
}

// DefaultZooKeeperConfig returns the defaults; Servers must still be set.
func DefaultZooKeeperConfig() ZooKeeperConfig {
	return ZooKeeperConfig{SessionTimeout: 10 * time.Second, Root: "/music"}
}

// Validate reports the first invalid field, named by its YAML key.
func (c ZooKeeperConfig) Validate() error {
	if len(c.Servers) == 0 {
		return errors.New("servers: at least one server is required")
	}
	for i, s := range c.Servers {
		if err := hostport.Validate(s, false, false); err != nil {
			return fmt.Errorf("servers[%d]: %w", i, err)
		}
	}
	if c.SessionTimeout < 2*time.Second || c.SessionTimeout > 5*time.Minute {
		return fmt.Errorf("session_timeout: %s is outside 2s-5m", c.SessionTimeout)
	}
	if !strings.HasPrefix(c.Root, "/") || strings.HasSuffix(c.Root, "/") || strings.Contains(c.Root, "//") {
		return fmt.Errorf("root: %q must be an absolute znode path without a trailing slash", c.Root)
	}
	return nil
}

// ZooKeeper is an open session to the ensemble.
type ZooKeeper struct {
	Conn *zk.Conn

	cfg ZooKeeperConfig

	mu struct {
		sync.Mutex
		state   zk.State
		changed chan struct{} // closed and replaced at every session state change
	}
	events sync.WaitGroup // the goroutine that consumes session events
}

// DialZooKeeper connects and waits until a session is established or ctx ends. The client then
// reconnects by itself while the connection is open; a session that expires is reported by Check.
func DialZooKeeper(ctx context.Context, cfg ZooKeeperConfig, logger *slog.Logger) (*ZooKeeper, error) {
	return dialZooKeeper(ctx, cfg, logger, nil)
}

// DialZooKeeperWith is DialZooKeeper with a dialer of the connections to the servers (benchmarks
// count requests on the wire with one; tests cut the network).
func DialZooKeeperWith(ctx context.Context, cfg ZooKeeperConfig, logger *slog.Logger, dialer zk.Dialer) (*ZooKeeper, error) {
	return dialZooKeeper(ctx, cfg, logger, dialer)
}

// dialZooKeeper is DialZooKeeper with an optional dialer (tests cut the network with one).
func dialZooKeeper(ctx context.Context, cfg ZooKeeperConfig, logger *slog.Logger, dialer zk.Dialer) (*ZooKeeper, error) {
	z := &ZooKeeper{cfg: cfg}
	z.mu.changed = make(chan struct{})
	zlog := logger.With("component", "zookeeper")
	var (
		conn   *zk.Conn
		events <-chan zk.Event
		err    error
	)
	if dialer != nil {
		conn, events, err = zk.Connect(cfg.Servers, cfg.SessionTimeout, zk.WithLogger(zkLogger{zlog}), zk.WithDialer(dialer))
	} else {
		conn, events, err = zk.Connect(cfg.Servers, cfg.SessionTimeout, zk.WithLogger(zkLogger{zlog}))
	}
	if err != nil {
		return nil, fmt.Errorf("zookeeper %v: %w", cfg.Servers, err)
	}
	z.Conn = conn
	established := make(chan struct{})
	z.events.Add(1)
	go func() { // ends when conn.Close closes the events channel
		defer z.events.Done()
		once := sync.Once{}
		for ev := range events {
			if ev.Type != zk.EventSession {
				continue
			}
			z.mu.Lock()
			z.mu.state = ev.State
			close(z.mu.changed)
			z.mu.changed = make(chan struct{})
			z.mu.Unlock()
			switch ev.State {
			case zk.StateHasSession:
				once.Do(func() { close(established) })
				zlog.Debug("zookeeper session established", "server", ev.Server)
			case zk.StateExpired:
				zlog.Warn("zookeeper session expired")
			case zk.StateDisconnected:
				zlog.Warn("zookeeper disconnected", "server", ev.Server)
			}
		}
	}()
	select {
	case <-established:
		return z, nil
	case <-ctx.Done():
		z.Close()
		return nil, fmt.Errorf("zookeeper %v: no session: %w", cfg.Servers, ctx.Err())
	}
}

// sessionState returns the session's state and a channel closed at its next change.
func (z *ZooKeeper) sessionState() (zk.State, <-chan struct{}) {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.mu.state, z.mu.changed
}

// Check reads the root znode: one real request, bounded by ctx.
func (z *ZooKeeper) Check(ctx context.Context) error {
	z.mu.Lock()
	state := z.mu.state
	z.mu.Unlock()
	if state != zk.StateHasSession {
		return errors.New("zookeeper: no session (" + state.String() + ")")
	}
	done := make(chan error, 1)
	go func() { // bounded by the client's own request timeout; the buffered channel lets it end
		_, _, err := z.Conn.Exists("/")
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("zookeeper: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("zookeeper: %w", ctx.Err())
	}
}

// Close ends the session (its ephemeral nodes go with it) and waits for the event goroutine.
func (z *ZooKeeper) Close() {
	z.Conn.Close()
	z.events.Wait()
}

type zkLogger struct{ l *slog.Logger }

func (z zkLogger) Printf(format string, v ...any) { z.l.Debug(fmt.Sprintf(format, v...)) }
