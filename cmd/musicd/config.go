package main

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/musicd/musicd/api"
	"github.com/musicd/musicd/applier"
	"github.com/musicd/musicd/binlog"
	"github.com/musicd/musicd/feeds"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/ownership"
	"github.com/musicd/musicd/state"
	"github.com/musicd/musicd/state/queue"
)

// Modes of operation (DESIGN.md, "Modes").
const (
	modeEmbedded    = "embedded"
	modeDistributed = "distributed"
)

// Config is musicd's whole configuration. Each component owns its section and validates it; this
// struct only assembles them. YAML keys are the names used everywhere: in error messages, in flags
// (--api.listen, with _ written as -) and in environment variables (MUSIC_API_LISTEN).
type Config struct {
	Mode    string `yaml:"mode" help:"embedded (local store, in-process locks, embedded NATS) or distributed (Cassandra, ZooKeeper, NATS)"`
	Site    string `yaml:"site" help:"id of this site (a-z, 0-9, -; required in distributed mode; embedded default: local)"`
	DataDir string `yaml:"data_dir" help:"directory of the embedded stores (embedded mode only)"`

	StartupTimeout  time.Duration `yaml:"startup_timeout" help:"how long to keep trying to reach dependencies at start before giving up"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" help:"how long in-flight requests may take to finish after SIGTERM"`

	Log       LogConfig               `yaml:"log"`
	API       api.Config              `yaml:"api"`
	NATS      feeds.Config            `yaml:"nats"`
	Cassandra journal.CassandraConfig `yaml:"cassandra"`
	ZooKeeper locks.ZooKeeperConfig   `yaml:"zookeeper"`
	State     state.Config            `yaml:"state"`
	Queue     queue.Config            `yaml:"queue"`
	// Sources are the MariaDB/MySQL databases whose binary logs musicd reads (config file only).
	Sources []binlog.SourceConfig `yaml:"sources"`
	// Appliers mirror other sites' streams into local databases (config file only).
	Appliers []applier.Config `yaml:"appliers"`
	// Ownership is the ownership policy (partitions, placement, failover) and its hooks.
	Ownership ownership.Settings `yaml:"ownership"`
}

// LogConfig configures the structured log written to standard error.
type LogConfig struct {
	Format string `yaml:"format" help:"log format: text or json"`
	Level  string `yaml:"level" help:"lowest level logged: debug, info, warn or error"`
}

// DefaultConfig is what musicd runs with when nothing is configured: embedded mode.
func DefaultConfig() Config {
	return Config{
		Mode:            modeEmbedded,
		DataDir:         "musicd-data",
		StartupTimeout:  60 * time.Second,
		ShutdownTimeout: 3 * time.Second,
		Log:             LogConfig{Format: "text", Level: "info"},
		API:             api.DefaultConfig(),
		NATS:            feeds.DefaultConfig(),
		Cassandra:       journal.DefaultCassandraConfig(),
		State:           state.DefaultConfig(),
		Queue:           queue.DefaultConfig(),
		ZooKeeper:       locks.DefaultZooKeeperConfig(),
		Ownership:       ownership.DefaultSettings(),
	}
}

var siteRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// normalize fills values that depend on other values.
func (c *Config) normalize() {
	if c.Mode == modeEmbedded && c.Site == "" {
		c.Site = "local"
	}
	for i := range c.Sources {
		c.Sources[i] = c.Sources[i].WithDefaults()
	}
	for i := range c.Appliers {
		if c.Appliers[i].Site == "" {
			c.Appliers[i].Site = c.Site
		}
		c.Appliers[i] = c.Appliers[i].WithDefaults()
	}
}

// Validate reports the first invalid field by its full YAML path, e.g. "api.listen: ...".
func (c Config) Validate() error {
	switch c.Mode {
	case modeEmbedded:
		if len(c.Cassandra.ContactPoints) > 0 {
			return errors.New("cassandra.contact_points: set, but mode is embedded (use mode: distributed)")
		}
		if len(c.ZooKeeper.Servers) > 0 {
			return errors.New("zookeeper.servers: set, but mode is embedded (use mode: distributed)")
		}
		if len(c.NATS.URLs) > 0 {
			return errors.New("nats.urls: set, but mode is embedded (use mode: distributed)")
		}
		if c.DataDir == "" {
			return errors.New("data_dir: required in embedded mode")
		}
	case modeDistributed:
		if c.Site == "" {
			return errors.New("site: required in distributed mode")
		}
		if err := c.Cassandra.Validate(); err != nil {
			return fmt.Errorf("cassandra.%w", err)
		}
		if err := c.ZooKeeper.Validate(); err != nil {
			return fmt.Errorf("zookeeper.%w", err)
		}
		if len(c.NATS.URLs) == 0 {
			return errors.New("nats.urls: required in distributed mode")
		}
	default:
		return fmt.Errorf("mode: %q is not embedded or distributed", c.Mode)
	}
	if !siteRe.MatchString(c.Site) {
		return fmt.Errorf("site: %q must be 1-32 of a-z, 0-9 and -, starting with a letter or digit", c.Site)
	}
	if c.StartupTimeout <= 0 {
		return errors.New("startup_timeout: must be a positive duration")
	}
	if c.ShutdownTimeout <= 0 || c.ShutdownTimeout > time.Minute {
		return fmt.Errorf("shutdown_timeout: %s is outside (0, 1m]", c.ShutdownTimeout)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("log.format: %q is not text or json", c.Log.Format)
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		return fmt.Errorf("log.level: %w", err)
	}
	if err := c.API.Validate(); err != nil {
		return fmt.Errorf("api.%w", err)
	}
	if err := c.NATS.Validate(); err != nil {
		return fmt.Errorf("nats.%w", err)
	}
	if err := c.State.Validate(); err != nil {
		return fmt.Errorf("state.%w", err)
	}
	if err := c.Queue.Validate(); err != nil {
		return fmt.Errorf("queue.%w", err)
	}
	seen := map[string]bool{}
	for i, s := range c.Sources {
		if err := s.Validate(); err != nil {
			return fmt.Errorf("sources[%d].%w", i, err)
		}
		if seen[s.Name] {
			return fmt.Errorf("sources[%d].name: %q is used twice", i, s.Name)
		}
		seen[s.Name] = true
	}
	if err := c.Ownership.Validate(c.Site); err != nil {
		return fmt.Errorf("ownership.%w", err)
	}
	targets := map[string]bool{}
	for i, a := range c.Appliers {
		if err := a.Validate(); err != nil {
			return fmt.Errorf("appliers[%d].%w", i, err)
		}
		if targets[a.Addr] {
			return fmt.Errorf("appliers[%d].addr: %q has another applier already (one per target database)", i, a.Addr)
		}
		targets[a.Addr] = true
	}
	return nil
}
