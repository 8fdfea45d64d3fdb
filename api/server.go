package api

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Checker is a dependency the daemon uses. Check makes one real request to it (not a cached
// state) and returns nil if it answered correctly before ctx ended.
type Checker interface {
	Check(ctx context.Context) error
}

// CheckFunc adapts a function to Checker.
type CheckFunc func(ctx context.Context) error

// Check calls f.
func (f CheckFunc) Check(ctx context.Context) error { return f(ctx) }

// NamedCheck is one line of /readyz.
type NamedCheck struct {
	Name    string
	Checker Checker
}

// BuildInfo identifies the running binary.
type BuildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go"`
	Site      string `json:"site"`
	Mode      string `json:"mode"`
}

// Deps are what the server needs from the daemon. Registry receives the server's own metrics
// and is what /metrics exposes.
type Deps struct {
	Logger   *slog.Logger
	Registry *prometheus.Registry
	Checks   []NamedCheck
	Build    BuildInfo
	// State serves the native REST API (/v1). Nil: every /v1 route but the OpenAPI document
	// answers 503 unavailable.
	State State
	// Queues serves the work queue routes (/v1/queues). Nil: they answer 503 unavailable.
	Queues Queues
	// Ownership serves /v1/ownership and refuses row writes of partitions another site owns
	// (409 not_owner). Nil: no ownership policy; every write is accepted here.
	Ownership Ownership
	// Status returns the status view served at /status as JSON (an error: 503). Nil: /status
	// answers 503.
	Status func(ctx context.Context) (any, error)
}

// Server is the HTTP server of one musicd instance. Serve and Shutdown may be called from
// different goroutines.
type Server struct {
	cfg      Config
	deps     Deps
	state    State
	auth     *authenticator
	openapi  []byte // the OpenAPI document as JSON
	http     *http.Server
	draining atomic.Bool
	// patterns are the mux patterns of the native API and the operational endpoints, in order
	// (TestOpenAPIMatchesRoutes compares them with the OpenAPI document).
	patterns []string
	// musicPatterns are those of the MUSIC v2 layer, which docs/music-v2.md describes instead
	// (TestMusicV2DocListsRoutes): its clients have MUSIC's own documents, and the native
	// document stays the one new clients read.
	musicPatterns []string

	depUp       *prometheus.GaugeVec
	depDuration *prometheus.HistogramVec
}

// NewServer builds the server and registers its metrics in deps.Registry. It returns an error if
// the metrics are already registered (two servers on one registry).
func NewServer(cfg Config, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil || deps.Registry == nil {
		return nil, errors.New("api: Logger and Registry are required")
	}
	s := &Server{cfg: cfg, deps: deps, state: deps.State, auth: newAuthenticator(cfg.Tokens)}
	doc, err := openAPIDocument()
	if err != nil {
		return nil, err
	}
	s.openapi = doc
	var tlsConfig *tls.Config
	if cfg.TLSCertFile != "" {
		cert, err := loadKeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, err
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	s.depUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "music_dependency_up",
		Help: "1 if the dependency answered its last readiness check, 0 if not.",
	}, []string{"dependency"})
	s.depDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "music_dependency_check_duration_seconds",
		Help:    "Time taken by readiness checks of each dependency.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"dependency"})
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "music_http_requests_total",
		Help: "HTTP requests served, by route, method and status code.",
	}, []string{"route", "method", "code"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "music_http_request_duration_seconds",
		Help:    "Time to serve HTTP requests, by route and method.",
		Buckets: prometheus.DefBuckets,
	}, []string{"route", "method"})
	apiDuration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "music_api_request_duration_seconds",
		Help:    "Time to serve requests of the native REST API (/v1), by route pattern, method and status code.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"route", "method", "code"})
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "music_build_info",
		Help: "Always 1; the labels identify the running build.",
		ConstLabels: prometheus.Labels{
			"version": deps.Build.Version, "commit": deps.Build.Commit,
			"goversion": deps.Build.GoVersion, "site": deps.Build.Site, "mode": deps.Build.Mode,
		},
	})
	build.Set(1)
	for _, c := range []prometheus.Collector{s.depUp, s.depDuration, requests, duration, apiDuration, build} {
		if err := deps.Registry.Register(c); err != nil {
			return nil, err
		}
	}
	for _, c := range deps.Checks {
		s.depUp.WithLabelValues(c.Name).Set(0)
	}

	mux := http.NewServeMux()
	instrumented := func(pattern, name string, h http.Handler) {
		labels := prometheus.Labels{"route": name}
		h = promhttp.InstrumentHandlerDuration(duration.MustCurryWith(labels), h)
		h = promhttp.InstrumentHandlerCounter(requests.MustCurryWith(labels), h)
		mux.Handle(pattern, h)
	}
	route := func(pattern, name string, h http.Handler) {
		instrumented(pattern, name, h)
		s.patterns = append(s.patterns, pattern)
	}
	route("GET /healthz", "healthz", http.HandlerFunc(s.healthz))
	route("GET /readyz", "readyz", http.HandlerFunc(s.readyz))
	route("GET /version", "version", http.HandlerFunc(s.version))
	route("GET /status", "status", http.HandlerFunc(s.status))
	route("GET /metrics", "metrics", promhttp.HandlerFor(deps.Registry, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(deps.Logger.Handler(), slog.LevelError),
		Registry:          deps.Registry,
		EnableOpenMetrics: true,
		Timeout:           cfg.CheckTimeout,
	}))
	for _, rt := range s.v1Routes() {
		_, path, _ := strings.Cut(rt.pattern, " ")
		// route is the pattern's path: few values, never a raw path.
		h := promhttp.InstrumentHandlerDuration(apiDuration.MustCurryWith(prometheus.Labels{"route": path}), s.serveV1(rt))
		route(rt.pattern, path, h)
	}
	for _, rt := range s.musicRoutes() {
		_, path, _ := strings.Cut(rt.pattern, " ")
		instrumented(rt.pattern, path, s.serveMusic(rt))
		s.musicPatterns = append(s.musicPatterns, rt.pattern)
	}
	instrumented("/MUSIC/rest/", "music_other", musicNotServed(mux))
	route("/", "other", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			if id := requestID(r); validRequestID(id) {
				w.Header().Set(headerRequestID, id) // every /v1 answer carries one (docs/api.md)
			}
		}
		if methods := allowedMethods(mux, r); len(methods) > 0 {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			writeError(w, http.StatusMethodNotAllowed, codeMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
			return
		}
		writeError(w, http.StatusNotFound, codeNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	}))

	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(deps.Logger.Handler(), slog.LevelWarn),
		TLSConfig:         tlsConfig,
	}
	return s, nil
}

// allowedMethods returns the methods with which r's path would reach a route other than the
// catch-all "/", for the Allow header of a 405.
func allowedMethods(mux *http.ServeMux, r *http.Request) []string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		// Patterns without a method are catch-alls ("/", "/MUSIC/rest/"): not an endpoint.
		if _, pattern := mux.Handler(probe); strings.Contains(pattern, " ") {
			out = append(out, m)
		}
	}
	return out
}

// Handler returns the server's routes, for tests and benchmarks that serve them themselves.
func (s *Server) Handler() http.Handler { return s.http.Handler }

// Serve serves HTTP on ln until Shutdown, HTTPS when the configuration names a certificate
// (tls_cert_file, tls_key_file). It returns nil after a Shutdown and the listener's error
// otherwise.
func (s *Server) Serve(ln net.Listener) error {
	var err error
	if s.http.TLSConfig != nil {
		err = s.http.ServeTLS(ln, "", "")
	} else {
		err = s.http.Serve(ln)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting connections, marks the instance not ready, and waits until in-flight
// requests finish or ctx ends; then it closes the remaining connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	err := s.http.Shutdown(ctx)
	if err != nil {
		_ = s.http.Close()
	}
	return err
}

// status serves the status view, read within CheckTimeout.
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	if s.deps.Status == nil {
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "no status view in this build")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.CheckTimeout)
	defer cancel()
	v, err := s.deps.Status(ctx)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// checkResult is one dependency's line in the /readyz body.
type checkResult struct {
	Name       string  `json:"name"`
	OK         bool    `json:"ok"`
	Error      string  `json:"error,omitempty"`
	DurationMS float64 `json:"duration_ms"`
}

// readyz runs every check concurrently, each bounded by CheckTimeout, and answers 200 only if all
// pass and the server is not shutting down.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	results := make([]checkResult, len(s.deps.Checks))
	var wg sync.WaitGroup
	for i, c := range s.deps.Checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(r.Context(), s.cfg.CheckTimeout)
			defer cancel()
			start := time.Now()
			err := c.Checker.Check(ctx)
			took := time.Since(start)
			s.depDuration.WithLabelValues(c.Name).Observe(took.Seconds())
			res := checkResult{Name: c.Name, OK: err == nil, DurationMS: float64(took.Microseconds()) / 1000}
			if err != nil {
				res.Error = err.Error()
				s.depUp.WithLabelValues(c.Name).Set(0)
			} else {
				s.depUp.WithLabelValues(c.Name).Set(1)
			}
			results[i] = res
		}()
	}
	wg.Wait()
	status, code := "ready", http.StatusOK
	for _, res := range results {
		if !res.OK {
			status, code = "not ready", http.StatusServiceUnavailable
		}
	}
	if s.draining.Load() {
		status, code = "shutting down", http.StatusServiceUnavailable
	}
	if code != http.StatusOK {
		s.deps.Logger.Debug("readiness check failed", "status", status, "checks", results)
	}
	writeJSON(w, code, struct {
		Status string        `json:"status"`
		Checks []checkResult `json:"checks"`
	}{status, results})
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.deps.Build)
}
