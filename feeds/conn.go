package feeds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Conn is musicd's connection to NATS.
type Conn struct {
	NC     *nats.Conn
	js     jetstream.JetStream
	closed chan struct{} // closed by the client's ClosedHandler
}

// Connect connects to the configured NATS cluster, or in-process to embedded when it is not nil.
// Initial attempts are retried with exponential backoff until ctx ends; after that the client
// reconnects on its own (every cfg.ReconnectWait) for as long as the connection is open.
func Connect(ctx context.Context, cfg Config, embedded *EmbeddedServer, name string, logger *slog.Logger) (*Conn, error) {
	closed := make(chan struct{})
	opts := []nats.Option{
		nats.Name(name),
		nats.DrainTimeout(drainTimeout),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
		nats.Timeout(cfg.ConnectTimeout),
		nats.ReconnectWait(cfg.ReconnectWait),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { logger.Info("nats reconnected", "url", nc.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { logger.Warn("nats error", "err", err) }),
	}
	url := strings.Join(cfg.URLs, ",")
	if embedded == nil {
		opts = append(opts, authOptions(cfg)...)
	}
	if embedded != nil {
		opts = append(opts, nats.InProcessServer(embedded.ns))
		url = ""
	}
	var nc *nats.Conn
	op := func() error {
		var err error
		nc, err = nats.Connect(url, opts...)
		if err != nil {
			logger.Warn("nats connect failed; retrying", "urls", url, "err", err)
		}
		return err
	}
	if err := backoff.Retry(op, backoff.WithContext(backoff.NewExponentialBackOff(), ctx)); err != nil {
		return nil, fmt.Errorf("nats %s: %w", describe(url), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nats jetstream: %w", err)
	}
	return &Conn{NC: nc, js: js, closed: closed}, nil
}

// authOptions returns the credentials and TLS options of distributed mode (Validate has checked
// that at most one kind of credentials is set).
func authOptions(cfg Config) []nats.Option {
	var opts []nats.Option
	switch {
	case cfg.CredentialsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredentialsFile))
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.TLS.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.TLS.CAFile))
	}
	if cfg.TLS.CertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.TLS.CertFile, cfg.TLS.KeyFile))
	}
	if cfg.TLS.enabled() {
		opts = append(opts, nats.Secure())
	}
	return opts
}

func describe(url string) string {
	if url == "" {
		return "(embedded)"
	}
	return url
}

// Check makes a round trip to the server and asks JetStream for the account's information, so
// that it fails when NATS is unreachable or JetStream is not enabled.
func (c *Conn) Check(ctx context.Context) error {
	if !c.NC.IsConnected() {
		return errors.New("nats: not connected (" + c.NC.Status().String() + ")")
	}
	if _, err := c.js.AccountInfo(ctx); err != nil {
		return fmt.Errorf("nats jetstream: %w", err)
	}
	return nil
}

// drainTimeout bounds how long Close waits for pending messages to flush.
const drainTimeout = time.Second

// Close drains pending publications and subscriptions (at most drainTimeout) and closes the
// connection; it returns once the connection is closed.
func (c *Conn) Close() {
	if err := c.NC.Drain(); err != nil {
		c.NC.Close()
	}
	<-c.closed
}
