package api

import (
	"errors"
	"fmt"
	"time"

	"github.com/musicd/musicd/internal/hostport"
)

// Config configures the HTTP listener. Zero values are not valid; start from DefaultConfig.
type Config struct {
	// Listen is the TCP address of the REST listener. Port 0 picks a free port (the address in use
	// is logged). Default 127.0.0.1:8080.
	Listen string `yaml:"listen" help:"REST listener address, host:port (port 0 picks a free port)"`
	// ReadHeaderTimeout bounds how long a client may take to send request headers. Default 5s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout" help:"time a client may take to send request headers"`
	// ReadTimeout bounds reading a whole request, body included. Default 30s.
	ReadTimeout time.Duration `yaml:"read_timeout" help:"time a client may take to send a whole request"`
	// WriteTimeout bounds writing a response. Default 60s (critical operations wait on locks).
	WriteTimeout time.Duration `yaml:"write_timeout" help:"time allowed to write a response"`
	// IdleTimeout closes keep-alive connections idle for this long. Default 120s.
	IdleTimeout time.Duration `yaml:"idle_timeout" help:"keep-alive connections idle this long are closed"`
	// CheckTimeout bounds each dependency check of /readyz. Default 2s.
	CheckTimeout time.Duration `yaml:"check_timeout" help:"time limit of each dependency check behind /readyz"`
}

// DefaultConfig returns the configuration used when nothing is set.
func DefaultConfig() Config {
	return Config{
		Listen:            "127.0.0.1:8080",
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		CheckTimeout:      2 * time.Second,
	}
}

// Validate reports the first invalid field, named by its YAML key.
func (c Config) Validate() error {
	if err := hostport.Validate(c.Listen, true, true); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"read_header_timeout", c.ReadHeaderTimeout},
		{"read_timeout", c.ReadTimeout},
		{"write_timeout", c.WriteTimeout},
		{"idle_timeout", c.IdleTimeout},
		{"check_timeout", c.CheckTimeout},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s: %w", d.name, errNotPositive)
		}
	}
	return nil
}

var errNotPositive = errors.New("must be a positive duration")
