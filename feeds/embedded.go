package feeds

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedServer is a NATS server with JetStream running inside musicd.
type EmbeddedServer struct {
	ns *server.Server
}

// StartEmbedded starts a NATS server with JetStream storing under storeDir and waits until it
// accepts connections (at most readyTimeout). The caller owns the server and must Shutdown it.
func StartEmbedded(cfg EmbeddedConfig, storeDir, name string, logger *slog.Logger, readyTimeout time.Duration) (*EmbeddedServer, error) {
	opts := &server.Options{
		ServerName:         name,
		JetStream:          true,
		StoreDir:           storeDir,
		JetStreamMaxStore:  cfg.MaxStoreBytes,
		JetStreamMaxMemory: cfg.MaxMemoryBytes,
		NoSigs:             true,
		DontListen:         cfg.Listen == "",
	}
	if cfg.Listen != "" {
		host, portStr, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: listen %q: %w", cfg.Listen, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: listen %q: %w", cfg.Listen, err)
		}
		if port == 0 {
			port = server.RANDOM_PORT // in nats-server, 0 means the default 4222
		} else {
			// The server only logs a bind failure; probe first so that a taken port is a clear error.
			ln, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return nil, fmt.Errorf("embedded nats: %w (set nats.embedded.listen)", err)
			}
			_ = ln.Close()
		}
		opts.Host, opts.Port = host, port
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	ns.SetLoggerV2(natsLogger{logger.With("component", "nats-server")}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(readyTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, errors.New("embedded nats: not ready for connections within " + readyTimeout.String() + " (is the port taken?)")
	}
	return &EmbeddedServer{ns: ns}, nil
}

// ClientURL is the nats:// URL applications use, or "" for an in-process-only server.
func (e *EmbeddedServer) ClientURL() string {
	if e.ns.Addr() == nil {
		return ""
	}
	return e.ns.ClientURL()
}

// Shutdown stops the server and waits until it has stopped.
func (e *EmbeddedServer) Shutdown() {
	e.ns.Shutdown()
	e.ns.WaitForShutdown()
}

// natsLogger routes the embedded server's log lines to slog.
type natsLogger struct{ l *slog.Logger }

func (n natsLogger) Noticef(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Warnf(format string, v ...any)   { n.l.Warn(fmt.Sprintf(format, v...)) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Errorf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n natsLogger) Debugf(format string, v ...any)  { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n natsLogger) Tracef(format string, v ...any)  { n.l.Debug(fmt.Sprintf(format, v...)) }
