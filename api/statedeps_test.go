package api

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"
	"github.com/go-zookeeper/zk"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/state"
)

// distributedDeps builds what a distributed daemon's state service uses, on the dev servers: its
// own Cassandra session (ccfg names the meta keyspace; the contact points are filled in), the
// journal store and the state backend on it, and a ZooKeeper lock service under a root of its own
// (connections dialed with zkDialer; nil: the default). Everything closes when tb ends; closeCass
// closes the session earlier (it may be called more than once). Clock and Logger are set; the
// caller adds the rest of state.Deps.
func distributedDeps(tb testing.TB, ccfg journal.CassandraConfig, zkDialer zk.Dialer, logger *slog.Logger) (deps state.Deps, cass *journal.Cassandra, closeCass func()) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ccfg.ContactPoints = []string{testenv.Cassandra(tb)}
	cass, err := journal.DialCassandra(ctx, ccfg, logger)
	if err != nil {
		tb.Fatal(err)
	}
	var once sync.Once
	closeCass = func() { once.Do(cass.Close) }
	tb.Cleanup(closeCass)
	store, err := journal.OpenCassandraStore(ctx, cass, ccfg, logger)
	if err != nil {
		tb.Fatal(err)
	}
	backend, err := state.NewCassandraBackend(ctx, cass.Session, state.CassandraBackendConfig{
		MetaKeyspace: ccfg.Keyspace, DefaultFactor: 1, Local: gocql.LocalQuorum, Global: gocql.Quorum, Timeout: 10 * time.Second,
	}, logger)
	if err != nil {
		tb.Fatal(err)
	}
	zcfg := locks.DefaultZooKeeperConfig()
	zcfg.Servers = []string{testenv.ZooKeeper(tb)}
	zcfg.SessionTimeout = 6 * time.Second
	zcfg.Root = "/" + testenv.UniqueName("musicd-test-api-")
	z, err := locks.DialZooKeeperWith(ctx, zcfg, logger, zkDialer)
	if err != nil {
		tb.Fatal(err)
	}
	lockSvc, err := locks.NewZooKeeperService(ctx, z, locks.ZooKeeperServiceConfig{ReapInterval: 200 * time.Millisecond, Logger: logger})
	if err != nil {
		z.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = lockSvc.Close()
		z.Close()
		_ = backend.Close()
	})
	return state.Deps{Backend: backend, Journal: store, Locks: lockSvc, Clock: journal.NewClock(time.Now, 0), Logger: logger}, cass, closeCass
}
