// Command musicd is the per-site daemon of musicd: it reads its configuration, wires the
// components together and runs until SIGTERM or SIGINT. It has no logic of its own.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/musicd/musicd/api"
)

// Set at link time by the Makefile (-ldflags "-X main.version=... -X main.commit=...").
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

// realMain runs musicd and returns its exit status: 0 after a clean shutdown, 2 for a usage or
// configuration error, 1 when the daemon fails.
func realMain(args, environ []string, stdout, stderr io.Writer) int {
	cfg, warnings, err := loadConfig(args, environ)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printUsage(stdout)
		return 0
	case errors.Is(err, errVersion):
		fmt.Fprintf(stdout, "musicd %s (commit %s, %s)\n", version, commit, runtime.Version())
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "musicd: %s\n", oneLine(err.Error()))
		return 2
	}
	logger := newLogger(cfg.Log, stderr)
	for _, w := range warnings {
		logger.Warn(w)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	build := api.BuildInfo{Version: version, Commit: commit, GoVersion: runtime.Version(), Site: cfg.Site, Mode: cfg.Mode}
	if err := run(ctx, cfg, logger, build); err != nil {
		logger.Error("musicd failed", "err", err)
		return 1
	}
	return 0
}

func newLogger(c LogConfig, w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.Level) // validated with the config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil || strings.ContainsAny(s, "+-") {
		return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}
