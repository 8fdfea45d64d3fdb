package api

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/musicd/musicd/internal/hostport"
)

// Config configures the HTTP listener and the native REST API. Zero values are not valid; start
// from DefaultConfig.
type Config struct {
	// Listen is the TCP address of the REST listener. Port 0 picks a free port (the address in use
	// is logged). Default 127.0.0.1:8080.
	Listen string `yaml:"listen" help:"REST listener address, host:port (port 0 picks a free port)"`
	// ReadHeaderTimeout bounds how long a client may take to send request headers. Default 5s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout" help:"time a client may take to send request headers"`
	// ReadTimeout bounds reading a whole request, body included. Default 30s.
	ReadTimeout time.Duration `yaml:"read_timeout" help:"time a client may take to send a whole request"`
	// WriteTimeout bounds writing a response. Default 60s (critical operations wait on locks). It
	// must exceed RequestTimeout; the longest lock wait a request may ask for is MaxWait or
	// WriteTimeout - RequestTimeout - 1s, whichever is shorter, so that every answer is written
	// in time.
	WriteTimeout time.Duration `yaml:"write_timeout" help:"time allowed to write a response"`
	// IdleTimeout closes keep-alive connections idle for this long. Default 120s.
	IdleTimeout time.Duration `yaml:"idle_timeout" help:"keep-alive connections idle this long are closed"`
	// CheckTimeout bounds each dependency check of /readyz. Default 2s.
	CheckTimeout time.Duration `yaml:"check_timeout" help:"time limit of each dependency check behind /readyz"`

	// MaxBodyBytes bounds the body of a REST request; a larger body is refused with 413
	// body_too_large. Default 2 MiB (a row holds at most 1 MiB of values, which JSON and base64
	// make larger). At most 64 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes" help:"largest REST request body accepted, in bytes (larger: 413)"`
	// RequestTimeout bounds the work of one /v1 request, not counting the time it asks to wait for
	// a lock (wait); a dependency that does not answer in time makes the request fail with 503
	// unavailable. Default 10s.
	RequestTimeout time.Duration `yaml:"request_timeout" help:"time limit of one REST request, not counting its lock wait"`
	// MaxWait bounds the lock wait a request may ask for (wait, Music-Wait); a longer one is
	// refused with 400. Default 30s.
	MaxWait time.Duration `yaml:"max_wait" help:"longest lock wait a REST request may ask for"`

	// TLSCertFile and TLSKeyFile, both set, make the listener serve HTTPS with this certificate
	// chain and private key (PEM). Both empty: plain HTTP. The files are read at start; restart to
	// rotate them.
	TLSCertFile string `yaml:"tls_cert_file" help:"PEM certificate chain of the REST listener (with tls_key_file: serve HTTPS)"`
	TLSKeyFile  string `yaml:"tls_key_file" help:"PEM private key of the REST listener's certificate"`

	// Tokens, when any are set, make every /v1 request present one of them as
	// "Authorization: Bearer <token>" (config file only). Empty: no authentication. The
	// operational endpoints (/healthz, /readyz, /metrics, /version) never need a token.
	Tokens []Token `yaml:"tokens"`
}

// Token is a bearer token of the REST API and what it may do.
type Token struct {
	// Name identifies the token in logs; it is never a secret. 1-64 bytes, unique.
	Name string `yaml:"name" help:"name of the token in logs"`
	// Token is the secret the client sends: at least 16 bytes of visible ASCII, unique.
	Token string `yaml:"token" help:"the bearer token (at least 16 visible ASCII characters)" secret:"true"`
	// Keyspaces the token may use: keyspace names, or "*" for every keyspace. At least one.
	Keyspaces []string `yaml:"keyspaces" help:"keyspaces the token may use (* for all)"`
	// Access is "read" (reads, selects, lock holders, read locks) or "write" (everything,
	// creating and dropping keyspaces and tables included). Write implies read.
	Access string `yaml:"access" help:"read or write (write implies read)"`
}

// Limits of the configuration.
const (
	maxBodyLimit    = 64 << 20
	minTokenLen     = 16
	maxTokenNameLen = 64
)

// DefaultConfig returns the configuration used when nothing is set.
func DefaultConfig() Config {
	return Config{
		Listen:            "127.0.0.1:8080",
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		CheckTimeout:      2 * time.Second,
		MaxBodyBytes:      2 << 20,
		RequestTimeout:    10 * time.Second,
		MaxWait:           30 * time.Second,
	}
}

// Validate reports the first invalid field, named by its YAML key. It reads the TLS certificate
// and key files when they are set, so that a missing file or a mismatched pair stops musicd at
// start rather than at the first client.
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
		{"request_timeout", c.RequestTimeout},
		{"max_wait", c.MaxWait},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s: %w", d.name, errNotPositive)
		}
	}
	if c.RequestTimeout >= c.WriteTimeout {
		return fmt.Errorf("request_timeout: %s must be shorter than write_timeout (%s)", c.RequestTimeout, c.WriteTimeout)
	}
	if c.MaxBodyBytes <= 0 || c.MaxBodyBytes > maxBodyLimit {
		return fmt.Errorf("max_body_bytes: %d is outside 1-%d", c.MaxBodyBytes, maxBodyLimit)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("tls_cert_file: tls_cert_file and tls_key_file are set together or not at all")
	}
	if c.TLSCertFile != "" {
		if _, err := loadKeyPair(c.TLSCertFile, c.TLSKeyFile); err != nil {
			return err
		}
	}
	names, secrets := map[string]bool{}, map[string]bool{}
	for i, t := range c.Tokens {
		if err := t.validate(); err != nil {
			return fmt.Errorf("tokens[%d]: %w", i, err)
		}
		if names[t.Name] {
			return fmt.Errorf("tokens[%d].name: %q is used twice", i, t.Name)
		}
		if secrets[t.Token] {
			// The message must not show the secret.
			return fmt.Errorf("tokens[%d].token: the same token as an earlier one", i)
		}
		names[t.Name], secrets[t.Token] = true, true
	}
	return nil
}

// validate checks one token; errors name the field (and never show the secret).
func (t Token) validate() error {
	if t.Name == "" || len(t.Name) > maxTokenNameLen {
		return fmt.Errorf("name: %q must be 1-%d bytes", t.Name, maxTokenNameLen)
	}
	if len(t.Token) < minTokenLen {
		return fmt.Errorf("token: shorter than %d characters", minTokenLen)
	}
	for _, r := range t.Token {
		if r <= ' ' || r > '~' {
			return errors.New("token: only visible ASCII characters (no spaces)")
		}
	}
	if len(t.Keyspaces) == 0 {
		return errors.New(`keyspaces: at least one keyspace name, or "*" for all`)
	}
	for _, ks := range t.Keyspaces {
		if ks == "*" {
			continue
		}
		if err := validKeyspaceName(ks); err != nil {
			return fmt.Errorf("keyspaces: %w", err)
		}
	}
	switch t.Access {
	case accessRead, accessWrite:
	default:
		return fmt.Errorf("access: %q is not read or write", t.Access)
	}
	return nil
}

// loadKeyPair reads a PEM certificate chain and its private key; errors name the config keys.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	if _, err := os.ReadFile(certFile); err != nil {
		return tls.Certificate{}, fmt.Errorf("tls_cert_file: %w", err)
	}
	if _, err := os.ReadFile(keyFile); err != nil {
		return tls.Certificate{}, fmt.Errorf("tls_key_file: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls_cert_file: %s and %s are not a valid certificate and key pair: %w", certFile, keyFile, err)
	}
	return cert, nil
}

// effectiveMaxWait is the longest lock wait a request may ask for: MaxWait, shortened so that
// RequestTimeout plus the wait ends a second before WriteTimeout.
func (c Config) effectiveMaxWait() time.Duration {
	return max(0, min(c.MaxWait, c.WriteTimeout-c.RequestTimeout-time.Second))
}

var errNotPositive = errors.New("must be a positive duration")
