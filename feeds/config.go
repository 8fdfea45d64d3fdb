package feeds

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/musicd/musicd/internal/hostport"
	"github.com/musicd/musicd/journal"
)

// Config says which NATS musicd uses. In embedded mode (URLs empty) musicd runs its own NATS
// server with JetStream; in distributed mode it connects to URLs.
type Config struct {
	// URLs of the NATS cluster (nats://host:port). Empty means: run the embedded server.
	URLs []string `yaml:"urls" help:"NATS server URLs (comma-separated); empty runs the embedded NATS server"`
	// CredentialsFile is a NATS credentials file (user JWT and NKey seed), for distributed mode.
	// At most one of CredentialsFile, User and Token is set.
	CredentialsFile string `yaml:"credentials_file" help:"NATS credentials file (user JWT and NKey seed; distributed mode)"`
	// User and Password authenticate with a user name and password (distributed mode).
	User     string `yaml:"user" help:"NATS user name (distributed mode; empty: no user/password authentication)"`
	Password string `yaml:"password" help:"NATS password" secret:"true"`
	// Token authenticates with a token (distributed mode).
	Token string `yaml:"token" help:"NATS authentication token (distributed mode)" secret:"true"`
	// TLS configures TLS to the NATS servers (distributed mode). Setting CAFile or a client
	// certificate turns TLS on; tls:// URLs turn it on with the system's roots.
	TLS TLSConfig `yaml:"tls"`
	// ConnectTimeout bounds each connection attempt. Default 5s.
	ConnectTimeout time.Duration `yaml:"connect_timeout" help:"time limit of one NATS connection attempt"`
	// ReconnectWait is the pause between reconnection attempts after a lost connection; the client
	// keeps reconnecting while musicd runs (readiness reports the outage). Default 2s.
	ReconnectWait time.Duration `yaml:"reconnect_wait" help:"pause between NATS reconnection attempts"`
	// Embedded configures the embedded server (used only when URLs is empty).
	Embedded EmbeddedConfig `yaml:"embedded"`
	// Stream is the JetStream stream of the change feed and its subjects.
	Stream StreamConfig `yaml:"stream"`
	// Relay tunes the relay that publishes journal entries.
	Relay RelayConfig `yaml:"relay"`
}

// TLSConfig holds the files of a TLS connection to NATS. Paths are read at connection time.
type TLSConfig struct {
	// CAFile holds the PEM certificates of the authorities that sign the servers' certificates.
	// Empty: the system's roots.
	CAFile string `yaml:"ca_file" help:"PEM file of the CAs that sign the NATS servers' certificates (empty: system roots)"`
	// CertFile and KeyFile are musicd's client certificate and key (PEM), both or neither.
	CertFile string `yaml:"cert_file" help:"PEM client certificate for NATS (with key_file)"`
	KeyFile  string `yaml:"key_file" help:"PEM private key of cert_file"`
}

// enabled reports whether any TLS file is configured.
func (t TLSConfig) enabled() bool { return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" }

// StreamConfig describes the JetStream stream that keeps the change feed, created or updated by
// the relay when it starts (EnsureStream). Its subjects are SubjectPrefix + ".changes.>",
// ".ownership.>" and ".conflicts.>" (docs/feeds.md).
type StreamConfig struct {
	// Name of the JetStream stream. Default MUSIC_CHANGES.
	Name string `yaml:"name" help:"JetStream stream of the change feed"`
	// SubjectPrefix is the first token(s) of every feed subject. Default "music".
	SubjectPrefix string `yaml:"subject_prefix" help:"first subject token(s) of the change feed (music: music.changes.<db>.<table>.<op>)"`
	// Replicas of the stream (1 to 5; 1 in embedded mode). Default 1.
	Replicas int `yaml:"replicas" help:"JetStream replicas of the change feed stream (1-5)"`
	// MaxAge is how long messages are kept. Default 168h (7 days).
	MaxAge time.Duration `yaml:"max_age" help:"how long the change feed stream keeps messages"`
	// MaxBytes caps the stream's size; the oldest messages go first. Default 512 MiB.
	MaxBytes int64 `yaml:"max_bytes" help:"size limit of the change feed stream, bytes (oldest messages are removed first)"`
	// DuplicateWindow is how long JetStream remembers message ids to drop re-publications of an
	// entry (after a relay crash or a lost acknowledgement). It must exceed the longest time
	// from a publication to its repetition: relay restart or fail-over, or a NATS outage
	// (docs/decisions/0005-feeds.md). The server keeps every id of the window in memory.
	// Default 1h.
	DuplicateWindow time.Duration `yaml:"duplicate_window" help:"JetStream de-duplication window of the change feed (longer than a relay fail-over or NATS outage)"`
}

// RelayConfig tunes the relay. Every queue and batch it uses is bounded by these values.
type RelayConfig struct {
	// MaxInFlight bounds the publications awaiting JetStream's acknowledgement. Default 1024.
	MaxInFlight int `yaml:"max_in_flight" help:"change feed publications awaiting acknowledgement, at most"`
	// ReadBatch is the number of entries read from the journal at a time. Default 512.
	ReadBatch int `yaml:"read_batch" help:"journal entries the relay reads at a time"`
	// AckTimeout bounds the wait for one acknowledgement; a publication not acknowledged in
	// time is published again. Default 5s.
	AckTimeout time.Duration `yaml:"ack_timeout" help:"time limit of one JetStream publish acknowledgement"`
	// RetryMaxInterval caps the exponential backoff between attempts while NATS fails. The relay
	// retries for as long as it runs: the journal keeps the entries. Default 10s.
	RetryMaxInterval time.Duration `yaml:"retry_max_interval" help:"longest pause between relay attempts while NATS fails"`
	// PollInterval is how often the relay reads the heads of its streams, to find entries that
	// no Notify announced (appended by another instance), and saves its positions. Default 1s.
	PollInterval time.Duration `yaml:"poll_interval" help:"how often the relay checks its streams' heads and saves its positions"`
	// FollowIdle is how long a followed stream (a key stream of the REST API, one per key) stays
	// relayed after its last append once everything is confirmed. Default 30s.
	FollowIdle time.Duration `yaml:"follow_idle" help:"how long a followed key stream stays relayed after its last append"`
	// SweepInterval is how often the elected sweeper looks for key streams with entries that no
	// relay published (their appender crashed first). Default 1m.
	SweepInterval time.Duration `yaml:"sweep_interval" help:"how often the elected sweeper looks for key streams left unpublished"`
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
		Stream: StreamConfig{
			Name:            "MUSIC_CHANGES",
			SubjectPrefix:   "music",
			Replicas:        1,
			MaxAge:          7 * 24 * time.Hour,
			MaxBytes:        512 << 20,
			DuplicateWindow: time.Hour,
		},
		Relay: RelayConfig{
			MaxInFlight:      1024,
			ReadBatch:        512,
			AckTimeout:       5 * time.Second,
			RetryMaxInterval: 10 * time.Second,
			PollInterval:     time.Second,
			FollowIdle:       30 * time.Second,
			SweepInterval:    time.Minute,
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
	if err := c.validateAuth(); err != nil {
		return err
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
		if c.Stream.MaxBytes > e.MaxStoreBytes {
			return fmt.Errorf("stream.max_bytes: %d exceeds embedded.max_store_bytes (%d)", c.Stream.MaxBytes, e.MaxStoreBytes)
		}
		if c.Stream.Replicas > 1 {
			return fmt.Errorf("stream.replicas: %d, but the embedded server is a single node (use 1)", c.Stream.Replicas)
		}
	}
	if err := c.Stream.validate(); err != nil {
		return err
	}
	return c.Relay.validate()
}

func (c Config) validateAuth() error {
	set := 0
	for _, v := range []string{c.CredentialsFile, c.User, c.Token} {
		if v != "" {
			set++
		}
	}
	switch {
	case set > 0 && c.IsEmbedded():
		return errors.New("credentials_file, user, token: set, but urls is empty (the embedded server needs none)")
	case c.TLS.enabled() && c.IsEmbedded():
		return errors.New("tls: set, but urls is empty (the embedded server is reached in-process)")
	case set > 1:
		return errors.New("credentials_file, user, token: set at most one")
	case c.Password != "" && c.User == "":
		return errors.New("password: set without user")
	case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
		return errors.New("tls.cert_file, tls.key_file: set both or neither")
	}
	return nil
}

var streamNameRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
var prefixRe = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

func (s StreamConfig) validate() error {
	switch {
	case !streamNameRe.MatchString(s.Name):
		return fmt.Errorf("stream.name: %q: 1-64 letters, digits, '_' or '-'", s.Name)
	case len(s.SubjectPrefix) > 64 || !prefixRe.MatchString(s.SubjectPrefix):
		return fmt.Errorf("stream.subject_prefix: %q: dot-separated tokens of letters, digits, '_' or '-' (at most 64 bytes)", s.SubjectPrefix)
	case s.Replicas < 1 || s.Replicas > 5:
		return fmt.Errorf("stream.replicas: %d is not in 1..5", s.Replicas)
	case s.MaxAge <= 0:
		return errors.New("stream.max_age: must be a positive duration")
	case s.MaxBytes < 1<<20:
		return fmt.Errorf("stream.max_bytes: %d is below the minimum of 1 MiB", s.MaxBytes)
	case s.DuplicateWindow <= 0 || s.DuplicateWindow > s.MaxAge:
		return errors.New("stream.duplicate_window: must be positive and at most stream.max_age")
	}
	return nil
}

func (r RelayConfig) validate() error {
	switch {
	case r.MaxInFlight < 1 || r.MaxInFlight > 65536:
		return fmt.Errorf("relay.max_in_flight: %d is not in 1..65536", r.MaxInFlight)
	case r.ReadBatch < 1 || r.ReadBatch > journal.MaxReadEntries:
		return fmt.Errorf("relay.read_batch: %d is not in 1..%d", r.ReadBatch, journal.MaxReadEntries)
	case r.AckTimeout <= 0:
		return errors.New("relay.ack_timeout: must be a positive duration")
	case r.RetryMaxInterval <= 0:
		return errors.New("relay.retry_max_interval: must be a positive duration")
	case r.PollInterval <= 0:
		return errors.New("relay.poll_interval: must be a positive duration")
	case r.FollowIdle <= 0:
		return errors.New("relay.follow_idle: must be a positive duration")
	case r.SweepInterval <= 0:
		return errors.New("relay.sweep_interval: must be a positive duration")
	}
	return nil
}
