package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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

// run starts every component the configuration asks for, serves until ctx ends, then shuts down
// in reverse order of start. It returns nil after a clean shutdown, including one asked for while
// still starting.
func run(ctx context.Context, cfg Config, logger *slog.Logger, build api.BuildInfo) (err error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var closers []func() // run in reverse order on the way out
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	startCtx, cancelStart := context.WithTimeout(ctx, cfg.StartupTimeout)
	defer cancelStart()
	startFailed := func(what string, err error) error {
		if ctx.Err() != nil {
			logger.Info("stopped while starting", "step", what)
			return nil
		}
		return fmt.Errorf("%s: %w", what, err)
	}

	var checks []api.NamedCheck
	var embedded *feeds.EmbeddedServer
	var store journal.Store
	var elector locks.Campaigner // distributed mode: captures are elected among the site's instances
	var lockSvc locks.Service    // key locks and the eventual log's elections
	var stateBackend state.Backend
	var queueStore queue.Store
	if cfg.Mode == modeEmbedded {
		if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
			return fmt.Errorf("data_dir: %w", err)
		}
		checks = append(checks, api.NamedCheck{Name: "data_dir", Checker: api.CheckFunc(func(context.Context) error {
			return probeDir(cfg.DataDir)
		})})
		es, err := journal.OpenEmbedded(filepath.Join(cfg.DataDir, "journal"), logger)
		if err != nil {
			return err
		}
		closers = append(closers, func() {
			if err := es.Close(); err != nil {
				logger.Warn("closing the journal", "err", err)
			}
		})
		store = es
		checks = append(checks, journalCheck(store))

		sb, err := state.OpenEmbeddedBackend(filepath.Join(cfg.DataDir, "state"), logger)
		if err != nil {
			return err
		}
		closers = append(closers, func() {
			if err := sb.Close(); err != nil {
				logger.Warn("closing the state store", "err", err)
			}
		})
		stateBackend = sb
		qs, err := queue.OpenEmbeddedStore(filepath.Join(cfg.DataDir, "queue"), time.Now, logger)
		if err != nil {
			return err
		}
		closers = append(closers, func() {
			if err := qs.Close(); err != nil {
				logger.Warn("closing the queue store", "err", err)
			}
		})
		queueStore = qs
		// One process owns the data directory: in-process locks, with tokens above every
		// epoch an earlier run wrote (see locks.InProcessConfig.FirstToken).
		ip := locks.NewInProcess(locks.InProcessConfig{FirstToken: uint64(time.Now().UnixMicro())})
		closers = append(closers, func() { _ = ip.Close() })
		lockSvc = ip
	}
	if cfg.NATS.IsEmbedded() {
		embedded, err = feeds.StartEmbedded(cfg.NATS.Embedded, filepath.Join(cfg.DataDir, "nats"), "musicd-"+cfg.Site, logger, 10*time.Second)
		if err != nil {
			return err
		}
		closers = append(closers, embedded.Shutdown)
		logger.Info("embedded nats server started", "url", embedded.ClientURL())
	}
	nc, err := feeds.Connect(startCtx, cfg.NATS, embedded, "musicd-"+cfg.Site, logger)
	if err != nil {
		return startFailed("nats", err)
	}
	closers = append(closers, nc.Close)
	checks = append(checks, api.NamedCheck{Name: "nats", Checker: nc})

	if cfg.Mode == modeDistributed {
		cass, err := journal.DialCassandra(startCtx, cfg.Cassandra, logger)
		if err != nil {
			return startFailed("cassandra", err)
		}
		closers = append(closers, cass.Close)
		checks = append(checks, api.NamedCheck{Name: "cassandra", Checker: cass})
		cs, err := journal.OpenCassandraStore(startCtx, cass, cfg.Cassandra, logger)
		if err != nil {
			return startFailed("journal", err)
		}
		store = cs
		checks = append(checks, journalCheck(store))

		zk, err := locks.DialZooKeeper(startCtx, cfg.ZooKeeper, logger)
		if err != nil {
			return startFailed("zookeeper", err)
		}
		closers = append(closers, zk.Close)
		checks = append(checks, api.NamedCheck{Name: "zookeeper", Checker: zk})
		zkLocks, err := locks.NewZooKeeperService(startCtx, zk, locks.ZooKeeperServiceConfig{Logger: logger})
		if err != nil {
			return startFailed("locks", err)
		}
		closers = append(closers, func() { _ = zkLocks.Close() })
		elector, lockSvc = zkLocks, zkLocks

		local, err := gocql.ParseConsistencyWrapper(cfg.State.LocalConsistency)
		if err != nil {
			return fmt.Errorf("state.local_consistency: %w", err)
		}
		global, err := gocql.ParseConsistencyWrapper(cfg.State.GlobalConsistency)
		if err != nil {
			return fmt.Errorf("state.global_consistency: %w", err)
		}
		bcfg := state.CassandraBackendConfig{MetaKeyspace: cfg.Cassandra.Keyspace, DefaultFactor: cfg.Cassandra.Replication.Factor,
			Local: local, Global: global, Timeout: cfg.Cassandra.Timeout}
		if cfg.Cassandra.Replication.Strategy == "network_topology" {
			bcfg.DefaultReplication = cfg.Cassandra.Replication.DataCenters
		}
		cb, err := state.NewCassandraBackend(startCtx, cass.Session, bcfg, logger)
		if err != nil {
			return startFailed("state", err)
		}
		closers = append(closers, func() { _ = cb.Close() })
		stateBackend = cb
		serial := gocql.Serial
		if cfg.Queue.SerialConsistency == "LOCAL_SERIAL" {
			serial = gocql.LocalSerial
		}
		qs, err := queue.NewCassandraStore(startCtx, cass.Session, queue.CassandraConfig{Keyspace: cfg.Cassandra.Keyspace,
			Write: global, Read: local, Serial: serial, Timeout: cfg.Cassandra.Timeout})
		if err != nil {
			return startFailed("queue", err)
		}
		queueStore = qs
	}

	// Background components run until shutdown; their closer (run before the clients they use
	// are closed) stops them and waits.
	bgCtx, stopBG := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	closers = append(closers, func() { stopBG(); bg.Wait() })
	spawn := func(name string, fn func(context.Context) error) {
		bg.Add(1)
		go func() {
			defer bg.Done()
			if err := fn(bgCtx); err != nil {
				logger.Error(name+" stopped", "err", err)
			}
		}()
	}
	relay, err := feeds.NewRelay(cfg.NATS, nc, store, cfg.Site, logger, reg)
	if err != nil {
		return err
	}
	spawn("feeds relay", relay.Run)

	// Appliers: each mirrors other sites' streams into one local database. Woken after local
	// appends, by the change feed for other sites' streams, and by their own polling.
	subjects := feeds.Subjects{Prefix: cfg.NATS.Stream.SubjectPrefix}
	var appliers []*applier.Applier
	var targets []string
	for _, ac := range cfg.Appliers {
		ac.OnConflict = func(c applier.Conflict) {
			body, err := json.Marshal(c)
			if err == nil {
				err = nc.NC.Publish(subjects.Conflicts(c.Database, c.Table), body)
			}
			if err != nil {
				logger.Warn("publishing a conflict", "err", err)
			}
		}
		a, err := applier.New(ac, store, logger, prometheus.WrapRegistererWith(prometheus.Labels{"target": ac.Addr}, reg), time.Now)
		if err != nil {
			return fmt.Errorf("applier %s: %w", ac.Addr, err)
		}
		appliers, targets = append(appliers, a), append(targets, ac.Addr)
		if elector != nil {
			election := applierElection(cfg.Site, ac.Addr)
			spawn("applier "+ac.Addr, func(ctx context.Context) error {
				return locks.RunElected(ctx, elector, election, instanceID(cfg.Site), logger, func(ctx context.Context, _ uint64) error {
					return a.Run(ctx)
				})
			})
		} else {
			spawn("applier "+ac.Addr, a.Run)
		}
	}
	if len(appliers) > 0 {
		sub, err := nc.NC.Subscribe(subjects.ChangesAll(), func(m *nats.Msg) {
			seq, _ := strconv.ParseUint(m.Header.Get("Music-Seq"), 10, 64)
			for _, a := range appliers {
				a.Notify(m.Header.Get("Music-Stream"), seq)
			}
		})
		if err != nil {
			return fmt.Errorf("nats: subscribe to the change feed: %w", err)
		}
		closers = append(closers, func() { _ = sub.Unsubscribe() })
	}
	notify := func(stream string, seq uint64) {
		relay.Notify(stream, seq)
		for _, a := range appliers {
			a.Notify(stream, seq)
		}
	}

	captureMetrics, err := binlog.NewMetrics(reg)
	if err != nil {
		return err
	}
	clock := journal.NewClock(time.Now, 0)
	instance := instanceID(cfg.Site)
	// Rows captured here while another site owns their partition are reported as conflicts
	// (the ownership node is set once it exists; until then nothing is checked).
	var ownRef atomic.Pointer[ownership.Node]
	var onJournaled func(string, []journal.Entry)
	if cfg.Ownership.Enabled() {
		onJournaled = func(stream string, es []journal.Entry) {
			n := ownRef.Load()
			if n == nil {
				return
			}
			for _, m := range n.Misrouted(stream, es) {
				body, err := json.Marshal(m)
				if err == nil {
					err = nc.NC.Publish(subjects.Conflicts(m.Database, m.Table), body)
				}
				if err != nil {
					logger.Warn("publishing a misrouted row", "err", err)
				}
			}
		}
	}
	var captures []*binlog.Capture
	var sourceNames []string
	for _, src := range cfg.Sources {
		checks = append(checks, api.NamedCheck{Name: "source:" + src.Name, Checker: api.CheckFunc(func(ctx context.Context) error {
			return binlog.Ping(ctx, src)
		})})
		capture := binlog.NewCapture(binlog.CaptureConfig{Source: src, Site: cfg.Site, OnAppend: notify, OnJournaled: onJournaled,
			Metrics: captureMetrics, AppliedClocks: appliedClocks(cfg.Appliers, src.Addr)}, store, clock, logger)
		captures, sourceNames = append(captures, capture), append(sourceNames, src.Name)
		if elector != nil {
			// One relay per capture stream among the instances, elected apart from the capture
			// itself: the stream's backlog is published even while no instance can capture.
			spawn("relay of "+capture.Stream(), func(ctx context.Context) error {
				return relay.RunOwnedElected(ctx, elector, capture.Stream(), instance)
			})
			spawn("capture "+src.Name, func(ctx context.Context) error { return capture.RunElected(ctx, elector, instance) })
			continue
		}
		if err := relay.Own(capture.Stream()); err != nil {
			return err
		}
		// Embedded mode: this process owns the data directory, so the next epoch is one above
		// the stream's.
		spawn("capture "+src.Name, func(ctx context.Context) error {
			h, err := store.Head(ctx, capture.Stream())
			if err != nil {
				return err
			}
			return capture.Supervise(ctx, h.Epoch+1)
		})
	}

	ln, err := net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		return fmt.Errorf("api.listen: %w", err)
	}
	closers = append(closers, func() { _ = ln.Close() }) // closed by Shutdown already, unless we fail first

	// Keyed state: eventual writes go to this daemon's eventual log (its streams are published
	// like any other); critical ones to their key's stream.
	stateCfg := cfg.State
	stateCfg.Site = cfg.Site
	if stateCfg.Instance == "" {
		stateCfg.Instance = defaultInstance(ln.Addr())
	}
	// Key streams (one per key written under its lock) are followed by the relay of the instance
	// that appends, until idle; the sweeper, one per deployment, follows what an instance that
	// crashed left unpublished.
	stateAppended := func(stream string, seq uint64) {
		if state.IsKeyStream(stream) {
			if err := relay.Follow(stream, seq); err != nil {
				logger.Error("the change feed cannot follow a key stream", "stream", stream, "err", err)
			}
		}
		notify(stream, seq)
	}
	if elector != nil {
		spawn("change feed sweeper", func(ctx context.Context) error {
			return locks.RunElected(ctx, elector, "feeds.sweeper", instance, logger, func(ctx context.Context, _ uint64) error {
				return relay.RunSweeper(ctx, state.KeyStreamPrefix)
			})
		})
	} else {
		spawn("change feed sweeper", func(ctx context.Context) error { return relay.RunSweeper(ctx, state.KeyStreamPrefix) })
	}
	stateSvc, err := state.New(stateCfg, state.Deps{Backend: stateBackend, Journal: store, Locks: lockSvc, Clock: clock,
		Logger: logger, Registerer: reg, OnAppend: stateAppended, OnStream: func(stream string) {
			if err := relay.Own(stream); err != nil {
				logger.Error("the change feed cannot follow an eventual log", "stream", stream, "err", err)
			}
		}})
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	spawn("state", stateSvc.Run)

	// The work queue: claims that wait are woken by notices on NATS from every daemon.
	queueSvc, err := queue.New(cfg.Queue, queue.Deps{Store: queueStore, Elector: elector, Candidate: instance, Logger: logger,
		Registerer: reg, Notify: func(n queue.Notice) {
			body, err := json.Marshal(n)
			if err == nil {
				err = nc.NC.Publish(subjects.Queue(n.Namespace, n.Name), body)
			}
			if err != nil {
				logger.Debug("publishing a queue notice", "err", err)
			}
		}})
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	qsub, err := nc.NC.Subscribe(subjects.QueueAll(), func(m *nats.Msg) {
		var n queue.Notice
		if json.Unmarshal(m.Data, &n) == nil {
			queueSvc.Woken(n)
		}
	})
	if err != nil {
		return fmt.Errorf("nats: subscribe to queue notices: %w", err)
	}
	closers = append(closers, func() { _ = qsub.Unsubscribe() })
	spawn("queue reaper", queueSvc.Run)

	// Ownership: every instance takes part (presence, controller election, the partitions the
	// map gives its site); a new owner serves only once its appliers caught up.
	var own *ownership.Node
	if cfg.Ownership.Enabled() {
		addr := cfg.Ownership.Address
		if addr == "" {
			addr = ln.Addr().String()
		}
		hooks := ownership.NewHooks(cfg.Ownership.Hooks, logger)
		ocfg := ownership.Config{Site: cfg.Site, Instance: instance, Address: addr, Policy: cfg.Ownership.Policy(cfg.Site)}
		if cfg.Mode == modeDistributed {
			// Confirmed within half the session timeout, an owner stops accepting before its
			// session can expire and another site take over.
			ocfg.Lease = cfg.ZooKeeper.SessionTimeout / 2
		}
		own, err = ownership.New(ocfg,
			ownership.Deps{Locks: lockSvc, Journal: store, Logger: logger, Registerer: reg,
				CatchUp: func(ctx context.Context, _ string, _ uint64, _ bool) error {
					for _, a := range appliers {
						if err := a.CatchUp(ctx); err != nil {
							return err
						}
					}
					return nil
				},
				OnEvent: func(ev ownership.Event) {
					subject := subjects.OwnershipMap()
					if ev.Partition != "" {
						subject = subjects.Ownership(ev.Partition)
					}
					body, err := json.Marshal(ev)
					if err == nil {
						err = nc.NC.Publish(subject, body)
					}
					if err != nil {
						logger.Warn("publishing an ownership change", "err", err)
					}
					hooks.Handle(ev)
				}})
		if err != nil {
			return err
		}
		ownRef.Store(own)
		osub, err := nc.NC.Subscribe(subjects.OwnershipAll(), func(*nats.Msg) { own.Wake() })
		if err != nil {
			return fmt.Errorf("nats: subscribe to ownership changes: %w", err)
		}
		closers = append(closers, func() { _ = osub.Unsubscribe() })
		spawn("ownership", own.Run)
		if hooks.Enabled() {
			spawn("ownership hooks", hooks.Run)
		}
	}

	status := &statusSource{site: cfg.Site, instance: instance, mode: cfg.Mode, store: store, relay: relay,
		captures: captures, sourceNames: sourceNames, appliers: appliers, targets: targets, ownership: own}
	if elector != nil {
		status.observer = lockSvc
		for _, c := range captures {
			status.elections = append(status.elections, c.Election(), feeds.RelayElection(c.Stream()))
		}
		for _, t := range targets {
			status.elections = append(status.elections, applierElection(cfg.Site, t))
		}
		status.elections = append(status.elections, "feeds.sweeper", queue.ReaperElection)
		if own != nil {
			status.elections = append(status.elections, ownership.ControllerElection)
		}
	}
	srv, err := api.NewServer(cfg.API, api.Deps{Logger: logger, Registry: reg, Checks: checks, Build: build, State: stateSvc,
		Queues: queueSvc, Status: status.status, Ownership: ownershipAPI(own)})
	if err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }() // ends when Shutdown closes the listener
	logger.Info("musicd serving", "addr", ln.Addr().String(), "mode", cfg.Mode, "site", cfg.Site, "version", build.Version)

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
	}
	logger.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		logger.Warn("in-flight requests cut off at shutdown", "err", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, net.ErrClosed) {
		logger.Warn("http server", "err", err)
	}
	return nil
}

// probeDir checks that dir exists and is writable by creating and removing a file in it.
func probeDir(dir string) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	if err := f.Close(); err != nil {
		return err
	}
	return os.Remove(name)
}

// journalCheck reads the head of a probe stream: a real read of the journal's store.
func journalCheck(s journal.Store) api.NamedCheck {
	return api.NamedCheck{Name: "journal", Checker: api.CheckFunc(func(ctx context.Context) error {
		_, err := s.Head(ctx, "musicd/readyz")
		return err
	})}
}

// defaultInstance names this daemon's eventual log after its host and API port: stable across
// restarts, distinct between daemons of one host.
func defaultInstance(addr net.Addr) string {
	host, err := os.Hostname()
	if err != nil || locks.ValidateName(host) != nil {
		host = "musicd"
	}
	port := "0"
	if a, ok := addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(a.Port)
	}
	return host + "-" + port
}

// instanceID names this musicd in elections.
func instanceID(site string) string { return fmt.Sprintf("%s-%d", site, os.Getpid()) }

// applierElection is the election among a site's instances of the applier into target.
func applierElection(site, target string) string { return "applier." + site + "." + target }

// ownershipAPI is own for the API: a nil interface when there is no policy.
func ownershipAPI(own *ownership.Node) api.Ownership {
	if own == nil {
		return nil
	}
	return own
}

// appliedClocks is the meta database of the applier that writes into the database server at
// addr (the same addr as a source's), whose row clocks tell a snapshot which rows came from other
// sites; "" if no applier does.
func appliedClocks(appliers []applier.Config, addr string) string {
	for _, ac := range appliers {
		if ac.Addr == addr {
			return ac.WithDefaults().MetaDatabase
		}
	}
	return ""
}
