package state

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	gocql "github.com/apache/cassandra-gocql-driver/v2"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
)

// bkDialCassandra connects to the test Cassandra and creates a metadata keyspace of the test's
// own (dropped at the end), standing for musicd's keyspace.
func bkDialCassandra(t *testing.T) (*gocql.Session, string) {
	t.Helper()
	c := bkDialSession(t)
	meta := testenv.UniqueName("musicd_test_")
	if err := c.Session.Query(`CREATE KEYSPACE ` + meta + ` WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`).Exec(); err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Session.Query(`DROP KEYSPACE ` + meta).Exec(); err != nil {
			t.Errorf("drop keyspace %s: %v", meta, err)
		}
		c.Close()
	})
	return c.Session, meta
}

// bkDialSession opens a session of its own to the test Cassandra (closed by the caller).
func bkDialSession(t *testing.T) *journal.Cassandra {
	t.Helper()
	cfg := journal.DefaultCassandraConfig()
	cfg.ContactPoints = []string{testenv.Cassandra(t)}
	cfg.Timeout = 10 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := journal.DialCassandra(ctx, cfg, bkDiscardLogger())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func bkNewCassandra(t *testing.T, s *gocql.Session, cfg CassandraBackendConfig) *CassandraBackend {
	t.Helper()
	b, err := NewCassandraBackend(bkTestCtx(t), s, cfg, bkDiscardLogger())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCassandraBackend(t *testing.T) {
	s, meta := bkDialCassandra(t)
	cfg := DefaultCassandraBackendConfig(meta)
	cfg.Timeout = 10 * time.Second
	b := bkNewCassandra(t, s, cfg)
	runBackendConformance(t, func(t *testing.T) Backend { return b })
}

// The tables are real Cassandra tables: plain CQL reads the rows, music_ts and the write
// timestamps.
func TestCassandraBackendPlainCQL(t *testing.T) {
	s, meta := bkDialCassandra(t)
	b := bkNewCassandra(t, s, CassandraBackendConfig{MetaKeyspace: meta})
	ks := bkTestKeyspace(t, b)
	tbl := bkMustCreateTable(t, b, bkSimpleTable(ks, "plain"))
	bkMustApply(t, b, tbl, bkPut(bkRow("id", journal.String("k")), 1234567, bkRow("a", journal.String("x"))))
	var a string
	var ts, wt int64
	var b2 *int32
	if err := s.Query(`SELECT a, b, music_ts, writetime(a) FROM `+ks+`.plain WHERE id = ?`, "k").Scan(&a, &b2, &ts, &wt); err != nil {
		t.Fatal(err)
	}
	if a != "x" || b2 != nil || ts != 1234567 || wt != 1234567 {
		t.Errorf("plain CQL: a=%q b=%v music_ts=%d writetime(a)=%d; want x, null, 1234567, 1234567", a, b2, ts, wt)
	}
	var def string
	if err := s.Query(`SELECT definition FROM `+meta+`.state_tables WHERE "keyspace" = ? AND name = ?`, ks, "plain").Scan(&def); err != nil ||
		!strings.Contains(def, `"partition_key":["id"]`) || !strings.Contains(def, `"generation":`) {
		t.Errorf("metadata row: %q, %v; want the definition and a generation", def, err)
	}

	// A keyspace that exists in Cassandra but is not musicd's is neither listed nor taken over.
	foreign := testenv.UniqueName("st_")
	if err := s.Query(`CREATE KEYSPACE ` + foreign + ` WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`).Exec(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Query(`DROP KEYSPACE ` + foreign).Exec() })
	err := b.CreateKeyspace(bkTestCtx(t), Keyspace{Name: foreign})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), foreign) {
		t.Errorf("CreateKeyspace over a foreign keyspace: %v, want ErrExists naming it", err)
	}
	if _, err := b.Keyspace(bkTestCtx(t), foreign); !errors.Is(err, ErrNotFound) {
		t.Errorf("Keyspace of a foreign keyspace: %v, want ErrNotFound", err)
	}
	if err := b.DropKeyspace(bkTestCtx(t), foreign); !errors.Is(err, ErrNotFound) {
		t.Errorf("DropKeyspace of a foreign keyspace: %v, want ErrNotFound", err)
	}
}

// A query that runs out of time is ErrUnavailable; a caller's cancellation is not.
func TestCassandraBackendUnavailable(t *testing.T) {
	s, meta := bkDialCassandra(t)
	b := bkNewCassandra(t, s, CassandraBackendConfig{MetaKeyspace: meta})
	ks := bkTestKeyspace(t, b)
	tbl := bkMustCreateTable(t, b, bkSimpleTable(ks, "slow"))

	hasty := bkNewCassandra(t, s, CassandraBackendConfig{MetaKeyspace: meta, Timeout: time.Nanosecond})
	_, _, err := hasty.Get(context.Background(), tbl, LevelLocal, bkRow("id", journal.String("k")))
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), ks+".slow") {
		t.Errorf("Get with a 1ns timeout: %v, want ErrUnavailable naming the table", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err = b.Get(ctx, tbl, LevelLocal, bkRow("id", journal.String("k")))
	if err == nil || errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestCassandraBackendErrorMapping(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		err  error
		want error
	}{
		{gocql.ErrTimeoutNoResponse, ErrUnavailable},
		{gocql.ErrNoConnections, ErrUnavailable},
		{fmt.Errorf("wrapped: %w", gocql.ErrConnectionClosed), ErrUnavailable},
		{context.DeadlineExceeded, ErrUnavailable},
		{&gocql.RequestErrUnavailable{}, ErrUnavailable},
		{&gocql.RequestErrReadTimeout{}, ErrUnavailable},
		{&gocql.RequestErrWriteTimeout{}, ErrUnavailable},
		{&gocql.RequestErrOverloaded{}, ErrUnavailable},
		{&gocql.RequestErrInvalid{}, nil},
		{gocql.ErrNotFound, ErrNotFound},
		{errors.New("boom"), nil},
	} {
		got := cassErr(ctx, tc.err, "read table ks.t")
		if tc.want != nil && !errors.Is(got, tc.want) {
			t.Errorf("%v: %v, want %v", tc.err, got, tc.want)
		}
		if tc.want == nil && (errors.Is(got, ErrUnavailable) || errors.Is(got, ErrNotFound)) {
			t.Errorf("%v: %v, want no sentinel", tc.err, got)
		}
		if !errors.Is(got, tc.err) || !strings.Contains(got.Error(), "ks.t") {
			t.Errorf("%v: %v does not wrap the cause or name the table", tc.err, got)
		}
	}
}

func TestCassandraBackendConfig(t *testing.T) {
	for _, tc := range []struct {
		mut func(*CassandraBackendConfig)
		ok  bool
	}{
		{func(c *CassandraBackendConfig) {}, true},
		{func(c *CassandraBackendConfig) { c.DefaultReplication = map[string]int{"dc1": 3, "dc2": 2} }, true},
		{func(c *CassandraBackendConfig) { c.MetaKeyspace = "" }, false},
		{func(c *CassandraBackendConfig) { c.MetaKeyspace = "a.b" }, false},
		{func(c *CassandraBackendConfig) { c.DefaultReplication = map[string]int{"dc'1": 3} }, false},
		{func(c *CassandraBackendConfig) { c.DefaultReplication = map[string]int{"dc1": 0} }, false},
		{func(c *CassandraBackendConfig) { c.DefaultFactor = -1 }, false},
		{func(c *CassandraBackendConfig) { c.Local = gocql.Serial }, false},
		{func(c *CassandraBackendConfig) { c.Global = gocql.EachQuorum }, false},
		{func(c *CassandraBackendConfig) { c.Timeout = -time.Second }, false},
		{func(c *CassandraBackendConfig) { c.TableRecheck = -time.Second }, false},
	} {
		c := DefaultCassandraBackendConfig("music")
		tc.mut(&c)
		if err := c.withDefaults().Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v, want ok=%v", c, err, tc.ok)
		}
	}
	// Zero fields take the defaults.
	c := CassandraBackendConfig{MetaKeyspace: "music"}.withDefaults()
	if c.Local != gocql.LocalQuorum || c.Global != gocql.Quorum || c.Timeout != 5*time.Second || c.DefaultFactor != 1 || c.TableRecheck != time.Second {
		t.Errorf("defaults: %+v", c)
	}
	b := &CassandraBackend{cfg: c}
	if got := b.replicationCQL(Keyspace{Name: "k"}); got != "{'class': 'SimpleStrategy', 'replication_factor': 1}" {
		t.Errorf("default replication: %s", got)
	}
	if got := b.replicationCQL(Keyspace{Name: "k", Replication: map[string]int{"b": 2, "a": 1}}); got != "{'class': 'NetworkTopologyStrategy', 'a': 1, 'b': 2}" {
		t.Errorf("replication: %s", got)
	}
}

// Another daemon (another backend, another session, the same metadata) drops a table and creates
// it again. This backend writes to the new table once it has read the new generation: when
// Table() is read (the service does every SchemaTTL), and at the latest TableRecheck after its
// previous read; a definition of the dropped table is then ErrNotFound.
func TestCassandraBackendRecreatedElsewhere(t *testing.T) {
	s, meta := bkDialCassandra(t)
	other := bkDialSession(t)
	t.Cleanup(other.Close)
	ctx := bkTestCtx(t)
	b := bkNewCassandra(t, s, CassandraBackendConfig{MetaKeyspace: meta})
	eager := bkNewCassandra(t, s, CassandraBackendConfig{MetaKeyspace: meta, TableRecheck: time.Nanosecond})
	elsewhere := bkNewCassandra(t, other.Session, CassandraBackendConfig{MetaKeyspace: meta})
	ks := bkTestKeyspace(t, b)
	tbl := bkMustCreateTable(t, b, bkSimpleTable(ks, "shared"))
	k := func(s string) journal.Row { return bkRow("id", journal.String(s)) }
	recreate := func(def Table) {
		t.Helper()
		if err := elsewhere.DropTable(ctx, ks, def.Name); err != nil {
			t.Fatal(err)
		}
		bkMustCreateTable(t, elsewhere, def)
	}
	for _, be := range []*CassandraBackend{b, eager} {
		bkMustApply(t, be, tbl, bkPut(k("before"), 1, nil)) // statements of the first generation
	}

	recreate(tbl)
	if _, err := b.Table(ctx, ks, tbl.Name); err != nil {
		t.Fatal(err)
	}
	bkMustApply(t, b, tbl, bkPut(k("after_table"), 2, bkRow("a", journal.String("x"))))
	bkMustGet(t, elsewhere, tbl, k("after_table"), 2, bkRow("a", journal.String("x")))
	bkMustApply(t, eager, tbl, bkPut(k("after_recheck"), 3, bkRow("a", journal.String("y"))))
	bkMustGet(t, elsewhere, tbl, k("after_recheck"), 3, bkRow("a", journal.String("y")))
	bkMustBeAbsent(t, elsewhere, tbl, k("before"))

	// Created again with another type for a column: the same statement texts but for the
	// generation.
	retyped := bkSimpleTable(ks, "shared")
	retyped.Columns[2].Type = Bigint
	recreate(retyped)
	if err := eager.Apply(ctx, tbl, LevelGlobal, bkPut(k("stale"), 4, nil)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Apply with the dropped definition: %v, want ErrNotFound", err)
	}
	bkMustApply(t, eager, retyped, bkPut(k("retyped"), 5, bkRow("b", journal.Int(1<<40))))
	bkMustGet(t, elsewhere, retyped, k("retyped"), 5, bkRow("b", journal.Int(1<<40)))

	// Dropped elsewhere and not created again: ErrNotFound, also with a fresh cache entry.
	if err := elsewhere.DropTable(ctx, ks, retyped.Name); err != nil {
		t.Fatal(err)
	}
	for _, be := range []*CassandraBackend{b, eager} {
		if err := be.Apply(ctx, retyped, LevelGlobal, bkPut(k("gone"), 6, nil)); !errors.Is(err, ErrNotFound) {
			t.Errorf("Apply to a table dropped elsewhere: %v, want ErrNotFound", err)
		}
	}
}

// A table recorded before generations existed (no generation in its metadata row) keeps its
// statements without the generation comment.
func TestCassandraBackendTableWithoutGeneration(t *testing.T) {
	s, meta := bkDialCassandra(t)
	b := bkNewCassandra(t, s, CassandraBackendConfig{MetaKeyspace: meta})
	ks := bkTestKeyspace(t, b)
	tbl := bkSimpleTable(ks, "legacy")
	if err := s.Query(`CREATE TABLE ` + ks + `.legacy (id text PRIMARY KEY, a text, b int, music_ts bigint)`).Exec(); err != nil {
		t.Fatal(err)
	}
	def := `{"keyspace":"` + ks + `","name":"legacy","columns":[{"name":"id","type":"text"},{"name":"a","type":"text"},{"name":"b","type":"int"}],"partition_key":["id"]}`
	if err := s.Query(`INSERT INTO `+meta+`.state_tables ("keyspace", name, definition) VALUES (?, ?, ?)`, ks, "legacy", def).Exec(); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Table(bkTestCtx(t), ks, "legacy"); err != nil || !sameTable(got, tbl) {
		t.Fatalf("Table: %+v, %v; want %+v", got, err, tbl)
	}
	k := bkRow("id", journal.String("k"))
	bkMustApply(t, b, tbl, bkPut(k, 7, bkRow("a", journal.String("x"))))
	bkMustGet(t, b, tbl, k, 7, bkRow("a", journal.String("x")))
	ct, err := b.rowTable(bkTestCtx(t), tbl)
	if err != nil || ct.gen != 0 || ct.suffix() != "" {
		t.Errorf("generation of a table without one: %+v, %v; want 0 and no comment", ct, err)
	}
}

// Page tokens with a valid checksum and fingerprint but a position that is not a key of the
// query are ErrInvalid, never a CQL error.
func TestCassandraBackendForgedPageTokens(t *testing.T) {
	s, meta := bkDialCassandra(t)
	b := bkNewCassandra(t, s, CassandraBackendConfig{MetaKeyspace: meta})
	ctx := bkTestCtx(t)
	tbl := bkMustCreateTable(t, b, bkCompoundTable(bkTestKeyspace(t, b)))
	key := func(region string, shard, seq int64, name string) journal.Row {
		return bkRow("region", journal.String(region), "shard", journal.Int(shard), "seq", journal.Int(seq), "name", journal.String(name))
	}
	for i := range int64(5) {
		bkMustApply(t, b, tbl, bkPut(key("eu", 1, i, "n"), 1, nil))
	}
	bt, err := newBkTable(tbl)
	if err != nil {
		t.Fatal(err)
	}
	inPartition := []Filter{{Column: "region", Value: journal.String("eu")}, {Column: "shard", Value: journal.Int(1)}}
	valid := []journal.Value{journal.String("eu"), journal.Int(1), journal.Int(2), journal.String("n")}
	for _, q := range []Query{{Limit: 2}, {Filters: inPartition, Limit: 2}} {
		bq, err := bt.checkQuery(q)
		if err != nil {
			t.Fatal(err)
		}
		fp := bt.fingerprint('k', bq)
		p, err := b.Select(ctx, tbl, LevelLocal, Query{Filters: q.Filters, Limit: 2, Page: bkEncodeToken(fp, bt.appendKeyRecord(nil, valid))})
		if err != nil || len(p.Rows) != 2 || p.Rows[0].Values[1].Value.Int != 3 {
			t.Errorf("%+v: a token after seq 2: %d rows, %v; want seq 3 and 4", q, len(p.Rows), err)
		}
		for _, payload := range [][]byte{
			nil,
			bt.appendKeyRecord(nil, valid[:3]),
			append(bt.appendKeyRecord(nil, valid), 0),
			bt.appendKeyRecord(nil, []journal.Value{journal.String("eu"), journal.Null(), journal.Int(2), journal.String("n")}),
			bt.appendKeyRecord(nil, []journal.Value{journal.String("eu"), journal.String("1"), journal.Int(2), journal.String("n")}),
			bt.appendKeyRecord(nil, []journal.Value{journal.String("eu"), journal.Int(1 << 40), journal.Int(2), journal.String("n")}),
			bt.appendKeyRecord(nil, valid)[:5],
		} {
			_, err := b.Select(ctx, tbl, LevelLocal, Query{Filters: q.Filters, Limit: 2, Page: bkEncodeToken(fp, payload)})
			bkWantErr(t, fmt.Sprintf("%+v: token with payload %x", q, payload), err, ErrInvalid)
		}
	}
	// A position in another partition than the filtered one.
	bq, _ := bt.checkQuery(Query{Filters: inPartition})
	other := bt.appendKeyRecord(nil, []journal.Value{journal.String("us"), journal.Int(1), journal.Int(2), journal.String("n")})
	_, err = b.Select(ctx, tbl, LevelLocal, Query{Filters: inPartition, Page: bkEncodeToken(bt.fingerprint('k', bq), other)})
	bkWantErr(t, "token outside the filtered partition", err, ErrInvalid)
}
