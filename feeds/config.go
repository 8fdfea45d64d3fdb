package feeds

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/musicd/musicd/internal/hostport"
)

// Config says which NATS musicd uses. In embedded mode (URLs empty) musicd runs its own NATS
// server with JetStream; in distributed mode it connects to URLs.
type Config struct {
	// URLs of the NATS cluster (nats://host:port). Empty means: run the embedded server.
	URLs []string `yaml:"urls" help:"NATS server URLs (comma-separated); empty runs the embedded NATS server"`
	// ConnectTimeout bounds each connection attempt. Default 5s.
	ConnectTimeout time.Duration `yaml:"connect_timeout" help:"time limit of one NATS connection attempt"`
	// ReconnectWait is the pause between reconnection attempts after a lost connection; the client
	// keeps reconnecting while musicd runs (readiness reports the outage). Default 2s.
	ReconnectWait time.Duration `yaml:"reconnect_wait" help:"pause between NATS reconnection attempts"`
	// Embedded configures the embedded server (used only when URLs is empty).
	Embedded EmbeddedConfig `yaml:"embedded"`
}

// EmbeddedConfig configures the NATS server embedded in musicd.
type EmbeddedConfig struct {
	// Listen is where applications reach the embedded server. Port 0 picks a free port; an empty
	// value serves in-process connections only. Default 127.0.0.1:4250 (not 4222, which a system
	// NATS often holds).
	Listen string `yaml:"listen" help:"client address of the embedded NATS server (port 0: any free port; empty: in-process only)"`
	// MaxStoreBytes caps JetStream's file storage. Default 1 GiB.
	MaxStoreBytes int64 `yaml:"max_store_bytes" help:"JetStream file storage limit of the embedded server, bytes"`
	// MaxMemoryBytes caps JetStream's memory storage. Default 64 MiB.
	MaxMemoryBytes int64 `yaml:"max_memory_bytes" help:"JetStream memory storage limit of the embedded server, bytes"`
}

// DefaultConfig returns the configuration used when nothing is set: embedded NATS.
func DefaultConfig() Config {
	return Config{
		ConnectTimeout: 5 * time.Second,
		ReconnectWait:  2 * time.Second,
		Embedded: EmbeddedConfig{
			Listen:         "127.0.0.1:4250",
			MaxStoreBytes:  1 << 30,
			MaxMemoryBytes: 64 << 20,
		},
	}
}

// IsEmbedded reports whether this configuration runs the embedded server.
func (c Config) IsEmbedded() bool { return len(c.URLs) == 0 }

// Validate reports the first invalid field, named by its YAML key.
func (c Config) Validate() error {
	for i, u := range c.URLs {
		rest, ok := strings.CutPrefix(u, "nats://")
		if !ok {
			rest, ok = strings.CutPrefix(u, "tls://")
		}
		if !ok {
			return fmt.Errorf("urls[%d]: %q must start with nats:// or tls://", i, u)
		}
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			rest = rest[at+1:]
		}
		if err := hostport.Validate(rest, false, false); err != nil {
			return fmt.Errorf("urls[%d]: %w", i, err)
		}
	}
	if c.ConnectTimeout <= 0 {
		return errors.New("connect_timeout: must be a positive duration")
	}
	if c.ReconnectWait <= 0 {
		return errors.New("reconnect_wait: must be a positive duration")
	}
	if c.IsEmbedded() {
		e := c.Embedded
		if e.Listen != "" {
			if err := hostport.Validate(e.Listen, true, false); err != nil {
				return fmt.Errorf("embedded.listen: %w", err)
			}
		}
		if e.MaxStoreBytes < 1<<20 {
			return fmt.Errorf("embedded.max_store_bytes: %d is below the minimum of 1 MiB", e.MaxStoreBytes)
		}
		if e.MaxMemoryBytes < 1<<20 {
			return fmt.Errorf("embedded.max_memory_bytes: %d is below the minimum of 1 MiB", e.MaxMemoryBytes)
		}
	}
	return nil
}
