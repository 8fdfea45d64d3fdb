package state

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// cluster is a set of daemons' state services over the same servers: in distributed mode each
// daemon has its own journal store, backend and ZooKeeper session (as separate processes would);
// in embedded mode they share the one process's store, backend and in-process lock service.
type cluster struct {
	t       *testing.T
	mode    string
	ks      string         // the test's keyspace (unique on the shared Cassandra)
	session *gocql.Session // distributed mode: a session of the test's own
	newSvc  func(i int) *Service
	journal journal.Store // a store for the test's own inspection
	daemons []*Service
}

// daemon returns daemon i, starting daemons up to it.
func (c *cluster) daemon(i int) *Service {
	for len(c.daemons) <= i {
		c.daemons = append(c.daemons, c.newSvc(len(c.daemons)))
	}
	return c.daemons[i]
}

// forEachMode runs f against an embedded cluster and a distributed one (Cassandra + ZooKeeper).
func forEachMode(t *testing.T, f func(t *testing.T, c *cluster)) {
	t.Run("embedded", func(t *testing.T) { f(t, embeddedCluster(t, DefaultConfig())) })
	t.Run("distributed", func(t *testing.T) { f(t, distributedCluster(t, DefaultConfig())) })
}

// runService starts s.Run until the test ends.
func runService(t *testing.T, s *Service) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = s.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func embeddedCluster(t *testing.T, cfg Config) *cluster { return embeddedClusterWith(t, cfg, nil) }

// embeddedClusterWith is embeddedCluster with the daemons' journal wrapped by wrap (the test's own
// inspection reads the store itself).
func embeddedClusterWith(t *testing.T, cfg Config, wrap func(journal.Store) journal.Store) *cluster {
	dir := t.TempDir()
	store, err := journal.OpenEmbedded(dir+"/journal", discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	backend, err := OpenEmbeddedBackend(dir+"/state", discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	lockSvc := locks.NewInProcess(locks.InProcessConfig{FirstToken: uint64(time.Now().UnixMicro())})
	clock := journal.NewClock(time.Now, 0)
	t.Cleanup(func() {
		_ = lockSvc.Close()
		_ = backend.Close()
		_ = store.Close()
	})
	c := &cluster{t: t, mode: "embedded", journal: store, ks: "app"}
	c.newSvc = func(i int) *Service {
		cfg := cfg
		cfg.Site, cfg.Instance = "site-a", "d"+string(rune('0'+i))
		var j journal.Store = store
		if wrap != nil {
			j = wrap(store)
		}
		s, err := New(cfg, Deps{Backend: backend, Journal: j, Locks: lockSvc, Clock: clock, Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		runService(t, s)
		return s
	}
	return c
}

func distributedCluster(t *testing.T, cfg Config) *cluster {
	return distributedClusterWith(t, cfg, nil)
}

// distributedClusterWith is distributedCluster with each daemon's backend configuration changed
// by backendCfg.
func distributedClusterWith(t *testing.T, cfg Config, backendCfg func(*CassandraBackendConfig)) *cluster {
	ccfg := journal.DefaultCassandraConfig()
	ccfg.ContactPoints = []string{testenv.Cassandra(t)}
	ccfg.Keyspace = testenv.UniqueName("musicd_state_")

	ccfg.Timeout = 10 * time.Second
	zroot := "/" + testenv.UniqueName("musicd-test-state-")
	zaddr := testenv.ZooKeeper(t)
	open := func() (*journal.Cassandra, *journal.CassandraStore) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cass, err := journal.DialCassandra(ctx, ccfg, discardLogger())
		if err != nil {
			t.Fatal(err)
		}
		store, err := journal.OpenCassandraStore(ctx, cass, ccfg, discardLogger())
		if err != nil {
			cass.Close()
			t.Fatal(err)
		}
		return cass, store
	}
	first, store := open()
	userKS := testenv.UniqueName("app_")
	t.Cleanup(func() {
		_ = first.Session.Query(`DROP KEYSPACE ` + ccfg.Keyspace).Exec()
		_ = first.Session.Query(`DROP KEYSPACE IF EXISTS ` + userKS).Exec()
		first.Close()
	})
	c := &cluster{t: t, mode: "distributed", journal: store, ks: userKS, session: first.Session}
	c.newSvc = func(i int) *Service {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cass, store := open()
		t.Cleanup(cass.Close)
		bcfg := CassandraBackendConfig{
			MetaKeyspace: ccfg.Keyspace, DefaultFactor: 1, Local: gocql.LocalQuorum, Global: gocql.Quorum,
			Timeout: 10 * time.Second,
		}
		if backendCfg != nil {
			backendCfg(&bcfg)
		}
		backend, err := NewCassandraBackend(ctx, cass.Session, bcfg, discardLogger())
		if err != nil {
			t.Fatal(err)
		}
		zcfg := locks.DefaultZooKeeperConfig()
		zcfg.Servers = []string{zaddr}
		zcfg.SessionTimeout = 6 * time.Second
		zcfg.Root = zroot
		z, err := locks.DialZooKeeper(ctx, zcfg, discardLogger())
		if err != nil {
			t.Fatal(err)
		}
		lockSvc, err := locks.NewZooKeeperService(ctx, z, locks.ZooKeeperServiceConfig{ReapInterval: 200 * time.Millisecond, Logger: discardLogger()})
		if err != nil {
			z.Close()
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = lockSvc.Close()
			z.Close()
			_ = backend.Close()
		})
		cfg := cfg
		cfg.Site, cfg.Instance = "site-a", "d"+string(rune('0'+i))
		s, err := New(cfg, Deps{Backend: backend, Journal: store, Locks: lockSvc, Clock: journal.NewClock(time.Now, 0), Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		runService(t, s)
		return s
	}
	return c
}
