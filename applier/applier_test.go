package applier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/musicd/musicd/internal/testenv"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/policies"
)

const typesTable = `(
	id INT PRIMARY KEY,
	tiu TINYINT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
	dec65 DECIMAL(65,30), f FLOAT, d DOUBLE, b64 BIT(64),
	dt DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL, tm TIME(3), yr YEAR,
	vc VARCHAR(100) CHARACTER SET utf8mb4, l1 VARCHAR(20) CHARACTER SET latin1,
	bin BINARY(4), bl BLOB, en ENUM('red','green','blue'), st SET('a','b','c','d'), js JSON, n INT NULL
) DEFAULT CHARSET=utf8mb4`

const typesRow = `(1, 255, -9223372036854775808, 18446744073709551615,
	'-12345678901234567890123456789012345.123456789012345678901234567890', 1.5, -2.2250738585072014e-308,
	b'1111111111111111111111111111111111111111111111111111111111111111',
	'2024-02-29', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.123456', '-838:59:59.000', 2155,
	'ünïcødé ✓ 😀', 'café €', X'00010200', X'deadbeef00', 'green', 'a,c,d', '{"k": [1, 2.5]}', NULL)`

// captureAtoB opens the test's database at sites a and b and an embedded journal, and runs a
// capture of a into it; the applier stored in notify (once there is one) is notified of appends.
func captureAtoB(t *testing.T) (db string, a, b *siteDB, store journal.Store, stream string, notify *atomic.Pointer[Applier]) {
	t.Helper()
	db = testenv.UniqueName("apl_")
	a = openSite(t, "a", testenv.MariaDBA(t), db)
	b = openSite(t, "b", testenv.MariaDBB(t), db)
	store = openJournal(t)
	notify = &atomic.Pointer[Applier]{}
	stream = startCapture(t, a, store, func(s string, seq uint64) {
		if ap := notify.Load(); ap != nil {
			ap.Notify(s, seq)
		}
	})
	return db, a, b, store, stream, notify
}

// A change committed at site a appears in site b: the table's DDL, every type exactly, inserts,
// updates (including one of the primary key) and deletes in multi-row transactions, each source
// transaction as one target transaction.
func TestApplyEndToEnd(t *testing.T) {
	db, a, b, store, stream, notify := captureAtoB(t)

	// While the applier is paused inside a transaction, the target shows none of it.
	paused, resume := make(chan uint64, 1), make(chan struct{})
	pauseAt := ""
	app := startApplier(t, testConfig(t, b, stream), store, func(r *running, _ string, seq uint64) {
		if pauseAt != "" {
			return
		}
		es, _ := store.Read(context.Background(), stream, seq, 1)
		if len(es) == 1 && es[0].Table == "t" && es[0].Op == journal.OpInsert && es[0].Tx.Index == 1 {
			pauseAt = es[0].Tx.ID
			paused <- seq
			<-resume
		}
	})

	notify.Store(app.a)

	a.exec("CREATE TABLE " + db + ".types " + typesTable)
	a.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(20), n INT)")
	a.exec("INSERT INTO " + db + ".types VALUES " + typesRow)
	a.tx("INSERT INTO "+db+".t VALUES (1, 'one', 1)", "INSERT INTO "+db+".t VALUES (2, 'two', 2)", "INSERT INTO "+db+".t VALUES (3, 'three', 3)")

	select {
	case <-paused:
	case <-time.After(30 * time.Second):
		t.Fatal("the applier did not reach the second row of the transaction")
	}
	if n := b.count("SELECT COUNT(*) FROM " + db + ".t"); n != 0 {
		t.Fatalf("target shows %d rows of a transaction still being applied", n)
	}
	close(resume)

	a.tx("UPDATE "+db+".t SET v = 'ONE', n = n + 10 WHERE id = 1", "UPDATE "+db+".t SET id = 20 WHERE id = 2", "DELETE FROM "+db+".t WHERE id = 3")
	a.tx("INSERT INTO "+db+".t VALUES (4, NULL, 4)", "UPDATE "+db+".t SET n = NULL WHERE id = 4")
	waitJournaled(t, store, stream, "t", 9)
	app.waitApplied(store, stream)

	for _, q := range []string{
		"SELECT * FROM " + db + ".t ORDER BY id",
		"SELECT id, tiu, bi, biu, dec65, f, d, b64 + 0, dt, dtm, ts, tm, yr, vc, l1, HEX(bin), HEX(bl), en, st, js, n FROM " + db + ".types",
	} {
		if ga, gb := a.dump(q), b.dump(q); ga != gb {
			t.Errorf("%s\nsite a:\n%s\nsite b:\n%s", q, ga, gb)
		}
	}
	if got := b.dump("SELECT id, v, n FROM " + db + ".t ORDER BY id"); got != "1|ONE|11\n4|\\N|\\N\n20|two|2\n" {
		t.Errorf("site b rows:\n%s", got)
	}
	h, _ := store.Head(context.Background(), stream)
	if got := b.dump("SELECT seq FROM " + app.a.cfg.MetaDatabase + ".positions"); got != fmt.Sprintf("%d\n", h.Seq) {
		t.Errorf("position %q, want %d", got, h.Seq)
	}
	// 2 DDL + 4 row transactions.
	if got := app.metric("music_applier_applied_transactions_total", map[string]string{"source_site": "a"}); got != 4 {
		t.Errorf("applied transactions metric %v, want 4 (DDL is counted apart)", got)
	}
	if got := app.metric("music_applier_lag_entries", map[string]string{"source_site": "a"}); got != 0 {
		t.Errorf("lag %v entries after catching up", got)
	}
	if c := app.conflicts(); len(c) != 0 {
		t.Errorf("conflicts: %+v", c)
	}
}

// Cancelled in the middle of a transaction (its rows half applied in the target), the applier
// resumes from the position committed with the rows: every transaction has its effect once. A
// transaction applied twice would show as conflicts (each update's before image would no longer
// match), a lost one as a wrong total.
func TestExactlyOnceAcrossCrash(t *testing.T) {
	db := testenv.UniqueName("apl_")
	a := openSite(t, "a", testenv.MariaDBA(t), db)
	b := openSite(t, "b", testenv.MariaDBB(t), db)
	a.exec("CREATE TABLE " + db + ".acct (id INT PRIMARY KEY, bal INT NOT NULL)")
	b.exec("CREATE TABLE " + db + ".acct (id INT PRIMARY KEY, bal INT NOT NULL)")
	a.exec("INSERT INTO " + db + ".acct VALUES (1, 0), (2, 0), (3, 0)")
	b.exec("INSERT INTO " + db + ".acct VALUES (1, 0), (2, 0), (3, 0)")
	store := openJournal(t)
	stream := startCapture(t, a, store, nil)
	const txs = 12
	for i := range txs {
		a.tx(fmt.Sprintf("UPDATE %s.acct SET bal = bal + %d WHERE id = 1", db, i+1),
			fmt.Sprintf("UPDATE %s.acct SET bal = bal + %d WHERE id = 2", db, i+1),
			fmt.Sprintf("UPDATE %s.acct SET bal = bal - %d WHERE id = 3", db, 2*(i+1)))
	}
	waitJournaled(t, store, stream, "acct", 3*txs)
	cfg := testConfig(t, b, stream)

	// Crash at a few points inside transactions: after the first, second or third row.
	for run, crashAfter := range []int{2, 4, 5, 3, 1, 6} {
		r := startApplierUntil(t, cfg, store, crashAfter, nil)
		r.stop()
		// The target holds whole transactions only, and the position says which.
		pos := b.count("SELECT COALESCE(MAX(seq), 0) FROM " + cfg.MetaDatabase + ".positions")
		es, err := store.Read(context.Background(), stream, 1, journal.MaxReadEntries)
		if err != nil {
			t.Fatal(err)
		}
		applied := 0
		for _, e := range es {
			if e.Seq <= uint64(pos) && e.Table == "acct" && e.Tx.Last {
				applied++
			}
		}
		sum := applied * (applied + 1) / 2
		want := fmt.Sprintf("1|%d\n2|%d\n3|%d\n", sum, sum, -2*sum)
		if got := b.dump("SELECT id, bal FROM " + db + ".acct ORDER BY id"); got != want {
			t.Fatalf("run %d: after a crash at position %d (%d transactions): rows\n%swant\n%s", run, pos, applied, got, want)
		}
		if c := r.conflicts(); len(c) != 0 {
			t.Fatalf("run %d: conflicts (a transaction applied twice?): %+v", run, c)
		}
	}
	r := startApplier(t, cfg, store, nil)
	r.waitApplied(store, stream)
	sum := txs * (txs + 1) / 2
	if got, want := b.dump("SELECT id, bal FROM "+db+".acct ORDER BY id"), fmt.Sprintf("1|%d\n2|%d\n3|%d\n", sum, sum, -2*sum); got != want {
		t.Fatalf("rows\n%swant\n%s", got, want)
	}
	if c := r.conflicts(); len(c) != 0 {
		t.Fatalf("conflicts: %+v", c)
	}
}

// What the applier writes at site b is not captured by site b's capture (no echo), while a row
// written natively at b is; the applied events are in b's binary log, flagged
// skip_replication, so that native replicas of b still receive them.
// sitesWithT opens the test's database at sites a and b with table t (id, v) at both, a journal,
// and site a's capture into it.
func sitesWithT(t *testing.T) (db string, a, b *siteDB, store journal.Store, streamA string) {
	db = testenv.UniqueName("apl_")
	a = openSite(t, "a", testenv.MariaDBA(t), db)
	b = openSite(t, "b", testenv.MariaDBB(t), db)
	a.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(20))")
	b.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(20))")
	store = openJournal(t)
	return db, a, b, store, startCapture(t, a, store, nil)
}

func TestNoEcho(t *testing.T) {
	db, a, b, store, streamA := sitesWithT(t)
	streamB := startCapture(t, b, store, nil)
	startPos := strings.TrimSpace(b.dump("SELECT @@gtid_binlog_pos"))

	a.tx("INSERT INTO "+db+".t VALUES (1, 'from a')", "INSERT INTO "+db+".t VALUES (2, 'from a')")
	a.exec("UPDATE " + db + ".t SET v = 'again' WHERE id = 1")
	waitJournaled(t, store, streamA, "t", 3)
	r := startApplier(t, testConfig(t, b, streamA), store, nil)
	r.waitApplied(store, streamA)
	if got := b.dump("SELECT id, v FROM " + db + ".t ORDER BY id"); got != "1|again\n2|from a\n" {
		t.Fatalf("site b rows:\n%s", got)
	}
	b.exec("INSERT INTO " + db + ".t VALUES (3, 'native b')")
	got := waitJournaled(t, store, streamB, "t", 1)
	if len(got) != 1 || got[0].Op != journal.OpInsert || got[0].After[0].Value.Int != 3 {
		t.Fatalf("site b's stream holds %+v, want only the native insert of row 3", got)
	}

	// b's binary log (what a native replica reads) holds the applied rows, flagged.
	host, port, _ := net.SplitHostPort(b.addr)
	p, _ := strconv.Atoi(port)
	syncer := replication.NewBinlogSyncer(replication.BinlogSyncerConfig{
		ServerID: 5000 + rand.Uint32N(1_000_000), Flavor: mysql.MariaDBFlavor, Host: host, Port: uint16(p),
		User: testenv.MariaDBUser, Password: testenv.MariaDBPassword, MaxReconnectAttempts: 1, DisableRetrySync: true,
		Logger: discard(),
	})
	defer syncer.Close()
	gset, err := mysql.ParseMariadbGTIDSet(startPos)
	if err != nil {
		t.Fatal(err)
	}
	streamer, err := syncer.StartSyncGTID(gset)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tables := map[uint64]bool{}
	flagged, native := 0, 0
	for native == 0 {
		ev, err := streamer.GetEvent(ctx)
		if err != nil {
			t.Fatalf("reading b's binlog: %v (flagged rows so far %d)", err, flagged)
		}
		switch e := ev.Event.(type) {
		case *replication.TableMapEvent:
			tables[e.TableID] = string(e.Schema) == db && string(e.Table) == "t"
		case *replication.RowsEvent:
			if !tables[e.TableID] {
				continue
			}
			if ev.Header.Flags&0x8000 != 0 {
				flagged += len(e.Rows)
			} else {
				native += len(e.Rows)
			}
		}
	}
	if flagged != 4 { // two inserts, one update (before and after)
		t.Errorf("b's binlog holds %d flagged row images of the applied changes, want 4", flagged)
	}
}

// A row the target refuses stops its stream with an error naming stream, seq and GTID, and
// nothing after it is applied; with on_error: dead_letter, the entry goes to the dead-letter table
// and the stream goes on. A DDL entry under ddl: stop stops the stream.
func TestRowErrorStopsOrDeadLetters(t *testing.T) {
	db := testenv.UniqueName("apl_")
	a := openSite(t, "a", testenv.MariaDBA(t), db)
	b := openSite(t, "b", testenv.MariaDBB(t), db)
	a.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(20), extra INT)")
	b.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(5), extra INT)") // v shorter
	store := openJournal(t)
	stream := startCapture(t, a, store, nil)
	a.exec("INSERT INTO " + db + ".t (id, v) VALUES (1, 'ok')")
	a.exec("INSERT INTO " + db + ".t (id, v, extra) VALUES (2, 'much too long', 7)")
	a.exec("INSERT INTO " + db + ".t (id, v) VALUES (3, 'ok')")
	es := waitJournaled(t, store, stream, "t", 3)
	bad := es[1]

	// Stop (the default).
	r := startApplier(t, testConfig(t, b, stream), store, nil)
	var st StreamStatus
	testenv.WaitFor(t, 30*time.Second, "the stream to stop", func() bool {
		st = r.status(stream)
		return st.Stopped
	})
	want := fmt.Sprintf("stream %s seq %d gtid %s (insert %s.t)", stream, bad.Seq, bad.Source.GTID, db)
	if !errors.Is(st.Err, ErrStopped) || !strings.Contains(st.Err.Error(), want) || !strings.Contains(st.Err.Error(), "Data too long for column 'v'") {
		t.Fatalf("stream error %v, want ErrStopped naming %q and the column", st.Err, want)
	}
	if st.Applied != bad.Seq-1 {
		t.Errorf("applied up to %d, want %d (just before the bad row)", st.Applied, bad.Seq-1)
	}
	if got := b.dump("SELECT id FROM " + db + ".t ORDER BY id"); got != "1\n" {
		t.Errorf("site b rows after the stop:\n%s", got)
	}
	if got := r.metric("music_applier_errors_total", map[string]string{"source_site": "a"}); got < 1 {
		t.Errorf("errors metric %v", got)
	}
	r.stop()

	// Dead letter.
	cfg := testConfig(t, b, stream)
	cfg.OnError = OnErrorDeadLtr
	b.exec("DELETE FROM " + db + ".t")
	r = startApplier(t, cfg, store, nil)
	r.waitApplied(store, stream)
	if got := b.dump("SELECT id FROM " + db + ".t ORDER BY id"); got != "1\n3\n" {
		t.Errorf("site b rows with dead letters:\n%s", got)
	}
	got := b.dump("SELECT stream, seq, gtid, tbl, op, reason, error LIKE '%Data too long%', JSON_VALUE(entry, '$.after.extra') FROM " + cfg.MetaDatabase + ".dead_letters")
	if wantDL := fmt.Sprintf("%s|%d|%s|t|insert|error|1|7\n", stream, bad.Seq, bad.Source.GTID); got != wantDL {
		t.Errorf("dead letters:\n%swant\n%s", got, wantDL)
	}
	r.stop()

	// DDL under ddl: stop.
	cfg = testConfig(t, b, stream)
	cfg.DDL, cfg.OnError = DDLStop, OnErrorDeadLtr
	a.exec("ALTER TABLE " + db + ".t ADD COLUMN more INT")
	ddl := waitJournaled(t, store, stream, "t", 4)[3]
	r = startApplier(t, cfg, store, nil)
	testenv.WaitFor(t, 30*time.Second, "the stream to stop at the DDL", func() bool {
		st = r.status(stream)
		return st.Stopped
	})
	if !strings.Contains(st.Err.Error(), fmt.Sprintf("seq %d", ddl.Seq)) || !strings.Contains(st.Err.Error(), "ddl: stop") {
		t.Fatalf("stream error %v, want the DDL entry and the policy named", st.Err)
	}
}

// Both sites change the same row before either sees the other's change; each applier applies the
// other's change. Last writer by HLC wins at both sites; each side counts and reports the
// conflict with both versions; deletes take part the same way.
func TestConflictLastWriterWinsAtBothSites(t *testing.T) {
	db := testenv.UniqueName("apl_")
	a := openSite(t, "a", testenv.MariaDBA(t), db)
	b := openSite(t, "b", testenv.MariaDBB(t), db)
	for _, s := range []*siteDB{a, b} {
		s.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(20))")
		s.exec("INSERT INTO " + db + ".t VALUES (1, 'v0'), (2, 'v0')")
	}
	store := openJournal(t) // stands for the journal shared by the sites
	streamA := startCapture(t, a, store, nil)
	streamB := startCapture(t, b, store, nil)

	// Row 1: a updates, then b updates (b is the last writer). Row 2: b updates, then a deletes.
	a.exec("UPDATE " + db + ".t SET v = 'a' WHERE id = 1")
	waitJournaled(t, store, streamA, "t", 1)
	b.exec("UPDATE " + db + ".t SET v = 'b' WHERE id = 1")
	b.exec("UPDATE " + db + ".t SET v = 'b' WHERE id = 2")
	waitJournaled(t, store, streamB, "t", 2)
	a.exec("DELETE FROM " + db + ".t WHERE id = 2")
	ea := waitJournaled(t, store, streamA, "t", 2)
	eb := waitJournaled(t, store, streamB, "t", 2)
	if !ea[0].HLC.Less(eb[0].HLC) || !eb[1].HLC.Less(ea[1].HLC) {
		t.Fatalf("the writes were not stamped in the order made: %v %v %v %v", ea[0].HLC, eb[0].HLC, eb[1].HLC, ea[1].HLC)
	}

	cfgA := testConfig(t, a, streamB)
	cfgA.LocalStreams = []string{streamA}
	cfgB := testConfig(t, b, streamA)
	cfgB.LocalStreams = []string{streamB}
	ra := startApplier(t, cfgA, store, nil)
	rb := startApplier(t, cfgB, store, nil)
	ra.waitApplied(store, streamB)
	rb.waitApplied(store, streamA)

	for _, s := range []*siteDB{a, b} {
		if got := s.dump("SELECT id, v FROM " + db + ".t ORDER BY id"); got != "1|b\n" {
			t.Errorf("site %s rows:\n%swant row 1 = b (last writer) and row 2 deleted (last writer)", s.site, got)
		}
	}
	// At a: b's update of row 1 wins over a's; b's update of row 2 loses to a's later delete.
	// At b: a's update of row 1 loses; a's delete of row 2 wins.
	check := func(r *running, site string, want map[int64]Resolution) {
		t.Helper()
		cs := r.conflicts()
		if len(cs) != len(want) {
			t.Fatalf("site %s: conflicts %+v, want %d", site, cs, len(want))
		}
		for _, c := range cs {
			id := c.Incoming.Before["id"]
			if c.Resolution != want[id.(int64)] || c.Target.Clock == nil || c.Target.Clock.Origin != site || c.Target.Exists != (c.Target.Row != nil) {
				t.Errorf("site %s: conflict %+v (target clock %+v), want resolution %s against the local write", site, c, c.Target.Clock, want[id.(int64)])
			}
			if n := r.metric("music_applier_conflicts_total", map[string]string{"table": db + ".t", "resolution": string(c.Resolution)}); n < 1 {
				t.Errorf("site %s: conflicts metric for %s is %v", site, c.Resolution, n)
			}
		}
	}
	check(ra, "a", map[int64]Resolution{1: IncomingWins, 2: TargetKept})
	check(rb, "b", map[int64]Resolution{1: TargetKept, 2: IncomingWins})
	// No echo: neither applier's writes came back as local changes.
	if n := len(waitJournaled(t, store, streamA, "t", 2)); n != 2 {
		t.Errorf("site a's stream has %d entries of t, want its own 2", n)
	}
}

// Transactions applied in runs (batch.go): large ones (more rows than a run or a statement holds)
// with inserts, updates and deletes; rows touched twice in one transaction (insert then update,
// delete then insert, a key changed and its new key changed again); a two-column key; and a
// transaction whose batched statement the target refuses, applied again entry by entry and
// dead-lettered there, with later rows still applied. Both sites end identical, without
// conflicts.
func TestBatchedRuns(t *testing.T) {
	db, a, b, store, stream, notify := captureAtoB(t)
	cfg := testConfig(t, b, stream)
	cfg.BatchEntries = 500
	cfg.OnError = OnErrorDeadLtr
	app := startApplier(t, cfg, store, nil)
	notify.Store(app.a)

	for _, s := range []*siteDB{a, b} { // created at both, so that b's column can be narrower
		s.exec("SET SESSION sql_log_bin = 0")
		s.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(20), n INT)")
		s.exec("CREATE TABLE " + db + ".k (a INT, b VARCHAR(10), v TEXT, PRIMARY KEY (a, b))")
		s.exec("SET SESSION sql_log_bin = 1")
	}
	b.exec("ALTER TABLE " + db + ".t MODIFY v VARCHAR(5)") // b refuses longer values

	var big []string
	for i := 1; i <= 300; i++ {
		big = append(big, fmt.Sprintf("INSERT INTO %s.t VALUES (%d, 'r%d', %d)", db, i, i, i))
	}
	a.tx(big...)
	a.tx("UPDATE "+db+".t SET n = n * 2 WHERE id <= 200", "DELETE FROM "+db+".t WHERE id > 250")
	a.tx(
		"INSERT INTO "+db+".t VALUES (1000, 'new', 1)", "UPDATE "+db+".t SET n = 2 WHERE id = 1000",
		"DELETE FROM "+db+".t WHERE id = 5", "INSERT INTO "+db+".t VALUES (5, 'again', 5)",
		"UPDATE "+db+".t SET id = 2001 WHERE id = 6", "UPDATE "+db+".t SET id = 2002 WHERE id = 2001",
		"INSERT INTO "+db+".k VALUES (1, 'x', 'one'), (1, 'y', 'two'), (2, 'x', 'three')",
		"UPDATE "+db+".k SET v = 'ONE' WHERE a = 1 AND b = 'x'", "DELETE FROM "+db+".k WHERE a = 2",
	)
	// Refused at b (too long for its column): dead-lettered; the other rows of the transaction go in.
	a.tx("INSERT INTO "+db+".t VALUES (3000, 'ok', 1)", "INSERT INTO "+db+".t VALUES (3001, 'too long here', 1)")
	a.tx("INSERT INTO " + db + ".t VALUES (3002, 'after', 1)")
	waitJournaled(t, store, stream, "t", 300+250+6+3)
	app.waitApplied(store, stream)

	want := a.dump("SELECT id, v, n FROM " + db + ".t WHERE id <> 3001 ORDER BY id")
	if got := b.dump("SELECT id, v, n FROM " + db + ".t ORDER BY id"); got != want {
		t.Errorf("site b rows differ from site a's (but 3001):\n%s", diffLines(want, got))
	}
	if ga, gb := a.dump("SELECT * FROM "+db+".k ORDER BY a, b"), b.dump("SELECT * FROM "+db+".k ORDER BY a, b"); ga != gb {
		t.Errorf("two-column keys: site a\n%s\nsite b\n%s", ga, gb)
	}
	if n := b.count("SELECT COUNT(*) FROM " + cfg.MetaDatabase + ".dead_letters WHERE reason = 'error'"); n != 1 {
		t.Errorf("%d dead letters, want 1 (row 3001)", n)
	}
	if c := app.conflicts(); len(c) != 0 {
		t.Errorf("conflicts: %+v", c)
	}
}

// diffLines lists the lines of want missing from got and those of got not in want.
func diffLines(want, got string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	w, g := in(want), in(got)
	var out []string
	for l := range w {
		if !g[l] {
			out = append(out, "missing: "+l)
		}
	}
	for l := range g {
		if !w[l] {
			out = append(out, "extra:   "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out[:min(20, len(out))], "\n")
}

// While the target's own capture snapshots a table (its stream's last snapshot state mark names
// a table in progress), the other sites' streams wait: the snapshot would read what they write
// and journal it again as this site's. When the mark says the snapshot is done, they go on.
func TestWaitsForTheTargetsSnapshot(t *testing.T) {
	db, a, b, store, streamA := sitesWithT(t)
	ctx := context.Background()
	const local = "binlog/b/b"
	if _, err := store.Fence(ctx, local, 1); err != nil {
		t.Fatal(err)
	}
	clock := journal.NewClock(time.Now, 0)
	mark := func(seq uint64, table string) {
		e := journal.Entry{Seq: seq, HLC: clock.Now(), Origin: "b", Op: journal.OpMark, Statement: "snapshot",
			Tx: journal.Tx{ID: journal.SnapshotStateTx, Count: 1, Last: true}, Database: db, Table: table}
		if table == "" {
			e.Database = ""
		}
		if err := store.Append(ctx, local, 1, []journal.Entry{e}); err != nil {
			t.Fatal(err)
		}
	}
	mark(1, "t") // b's capture is snapshotting t
	cfg := testConfig(t, b, streamA)
	cfg.LocalStreams = []string{local}
	r := startApplier(t, cfg, store, nil)
	testenv.WaitFor(t, 30*time.Second, "the local stream's mark to be read", func() bool { return r.status(local).Applied >= 1 })

	a.exec("INSERT INTO " + db + ".t VALUES (1, 'from a')")
	waitJournaled(t, store, streamA, "t", 1)
	r.a.Notify(streamA, 0)
	testenv.WaitFor(t, 30*time.Second, "a's stream to wait for b's snapshot", func() bool { return r.status(streamA).WaitingSnapshot })
	if n := b.count("SELECT COUNT(*) FROM " + db + ".t"); n != 0 {
		t.Fatalf("%d rows applied at b while its capture snapshots the table", n)
	}

	mark(2, "") // the snapshot is done
	r.a.Notify(local, 2)
	r.waitApplied(store, streamA)
	if got := b.dump("SELECT id, v FROM " + db + ".t"); got != "1|from a\n" {
		t.Fatalf("site b rows after the snapshot:\n%s", got)
	}
	if r.status(streamA).WaitingSnapshot {
		t.Fatal("a's stream still waiting after the snapshot is done")
	}
}

// Each table resolves its conflicts by its rule in the applier's tables policy: here site b's
// own write wins over site a's later one, kept with a dead letter for one table and by site
// priority (b before a) for another, while a third table, with no resolution given, takes the
// last writer (a).
func TestConflictResolutionByTablePolicy(t *testing.T) {
	db := testenv.UniqueName("apl_")
	a := openSite(t, "a", testenv.MariaDBA(t), db)
	b := openSite(t, "b", testenv.MariaDBB(t), db)
	tables := []string{"dl", "prio", "lww"}
	for _, s := range []*siteDB{a, b} {
		for _, tbl := range tables {
			s.exec("CREATE TABLE " + db + "." + tbl + " (id INT PRIMARY KEY, v VARCHAR(20))")
			s.exec("INSERT INTO " + db + "." + tbl + " VALUES (1, 'v0')")
		}
	}
	store := openJournal(t)
	streamA := startCapture(t, a, store, nil)
	streamB := startCapture(t, b, store, nil)
	for _, tbl := range tables { // b writes first, a later: a is the last writer
		b.exec("UPDATE " + db + "." + tbl + " SET v = 'b' WHERE id = 1")
	}
	waitJournaled(t, store, streamB, "lww", 1)
	for _, tbl := range tables {
		a.exec("UPDATE " + db + "." + tbl + " SET v = 'a' WHERE id = 1")
	}
	waitJournaled(t, store, streamA, "lww", 1)

	cfg := testConfig(t, b, streamA)
	cfg.LocalStreams = []string{streamB}
	cfg.Tables = policies.Tables{
		{Match: db + ".dl", Mode: policies.ModeAsync, Conflicts: policies.ResolveDeadLetter},
		{Match: db + ".prio", Mode: policies.ModeAsync, Conflicts: policies.ResolvePriority},
		{Match: db + ".*", Mode: policies.ModeAsync},
	}
	cfg.SitePriority = []string{"b", "a"}
	r := startApplier(t, cfg, store, nil)
	r.waitApplied(store, streamA)
	for tbl, want := range map[string]string{"dl": "b", "prio": "b", "lww": "a"} {
		if got := b.dump("SELECT v FROM " + db + "." + tbl); got != want+"\n" {
			t.Errorf("site b's %s: %q, want %s", tbl, got, want)
		}
	}
	if got := b.dump("SELECT tbl, op, reason, JSON_VALUE(entry, '$.after.v') FROM " + cfg.MetaDatabase + ".dead_letters WHERE db = '" + db + "'"); got != "dl|update|conflict|a\n" {
		t.Errorf("dead letters:\n%swant dl|update|conflict|a", got)
	}
	got := map[string]Resolution{}
	for _, c := range r.conflicts() {
		got[c.Table] = c.Resolution
	}
	if want := map[string]Resolution{"dl": DeadLettered, "prio": TargetKept, "lww": IncomingWins}; !maps.Equal(got, want) {
		t.Errorf("conflicts %v, want %v", got, want)
	}
}

// CatchUp returns once the target holds every entry journaled before the call, whichever
// instance applies: here the instance that waits does not run the applier itself (another one
// does, as when a site's applier is elected apart from the instance that won a partition).
func TestCatchUp(t *testing.T) {
	db, a, b, store, stream, notify := captureAtoB(t)
	a.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(20))")
	for i := range 20 {
		var qs []string
		for k := range 50 {
			qs = append(qs, fmt.Sprintf("INSERT INTO %s.t VALUES (%d, 'r')", db, i*50+k))
		}
		a.tx(qs...)
	}
	waitJournaled(t, store, stream, "t", 1000)
	cfg := testConfig(t, b, stream)
	waiter, err := New(cfg, store, discard(), nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err = waiter.CatchUp(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CatchUp with no applier running: %v, want a deadline error", err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		done <- waiter.CatchUp(ctx)
	}()
	app := startApplier(t, cfg, store, nil)
	notify.Store(app.a)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := b.count("SELECT COUNT(*) FROM " + db + ".t"); n != 1000 {
		t.Errorf("after CatchUp the target holds %d of 1000 rows", n)
	}
}

// siteAStream opens an embedded journal with site a's stream binlog/a/a created at epoch 1, for
// tests that journal entries by hand.
func siteAStream(t *testing.T) (journal.Store, string) {
	store := openJournal(t)
	const stream = "binlog/a/a"
	if _, err := store.Fence(context.Background(), stream, 1); err != nil {
		t.Fatal(err)
	}
	return store, stream
}

// Inserts are applied without reading their rows first, as if neither the rows nor their clocks
// existed (batch.go, applyFresh). Where one does, the transaction is applied again the usual way,
// and the outcome is the one that reading first gives: an older insert does not bring back a row
// a later delete removed (its clock, a tombstone, is there, though the row is not), a row written
// natively (no clock) loses to the incoming one, and the rest of the transaction goes in.
func TestFreshInserts(t *testing.T) {
	db := testenv.UniqueName("apl_")
	b := openSite(t, "b", testenv.MariaDBB(t), db)
	b.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(20))")
	b.exec("INSERT INTO " + db + ".t VALUES (1, 'native')")

	store, stream := siteAStream(t)
	ctx := context.Background()
	seq := uint64(0)
	row := func(id int64, v string) journal.Row {
		return journal.Row{{Name: "id", Value: journal.Int(id)}, {Name: "v", Value: journal.String(v)}}
	}
	key := func(id int64) journal.Row { return journal.Row{{Name: "id", Value: journal.Int(id)}} }
	// tx journals one transaction of site a at HLC wall.
	tx := func(wall int64, es ...journal.Entry) {
		t.Helper()
		id := fmt.Sprintf("a-%d", wall)
		for i := range es {
			seq++
			es[i].Seq, es[i].HLC, es[i].Origin, es[i].Database, es[i].Table = seq, journal.Timestamp{Wall: wall}, "a", db, "t"
			es[i].Tx = journal.Tx{ID: id, Index: uint32(i), Count: uint32(len(es)), Last: i == len(es)-1}
		}
		if err := store.Append(ctx, stream, 1, es); err != nil {
			t.Fatal(err)
		}
	}
	insert := func(id int64, v string) journal.Entry {
		return journal.Entry{Op: journal.OpInsert, Key: key(id), After: row(id, v)}
	}
	tx(300e9, insert(1, "remote")) // over the native row
	// A transaction whose fresh insert failed and the freshBackoffTxs-1 after it read first.
	for id := int64(2000); id < 2000+freshBackoffTxs; id++ {
		tx(150e9, insert(id, "filler"))
	}
	tx(200e9, journal.Entry{Op: journal.OpDelete, Key: key(2), Before: row(2, "x")}) // nothing to delete: a tombstone
	tx(100e9, insert(3, "new"), insert(2, "older"))                                  // row 2's clock is later
	var many []journal.Entry
	for id := int64(1000); id < 1100; id++ {
		many = append(many, insert(id, "bulk"))
	}
	tx(400e9, many...)

	r := startApplier(t, testConfig(t, b, stream), store, nil)
	r.waitApplied(store, stream)
	want := "1|remote\n3|new\n"
	for id := 1000; id < 1100; id++ {
		want += fmt.Sprintf("%d|bulk\n", id)
	}
	for id := 2000; id < 2000+freshBackoffTxs; id++ {
		want += fmt.Sprintf("%d|filler\n", id)
	}
	if got := b.dump("SELECT id, v FROM " + db + ".t ORDER BY id"); got != want {
		t.Errorf("site b rows:\n%s", diffLines(want, got))
	}
	got := map[int64]Resolution{}
	for _, c := range r.conflicts() {
		got[c.Incoming.After["id"].(int64)] = c.Resolution
	}
	if want := map[int64]Resolution{1: IncomingWins, 2: TargetKept}; !maps.Equal(got, want) {
		t.Errorf("conflicts %v, want %v", got, want)
	}
	if n := r.a.freshTaken.Load(); n != 2 {
		t.Errorf("%d transactions applied again after a fresh insert found its row or clock, want 2", n)
	}
}

// Consecutive insert-only transactions are applied in parallel groups and committed in order
// (parallel.go): stopped at any point, the target holds exactly the transactions up to its
// position, and started again it goes on from there to the same rows as the source, through a
// conflict (a row written natively at b) and updates that split the groups.
func TestParallelGroupsAcrossCrash(t *testing.T) {
	db, a, b, store, stream, notify := captureAtoB(t)
	for _, s := range []*siteDB{a, b} {
		s.exec("SET SESSION sql_log_bin = 0")
		s.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, v VARCHAR(20))")
		s.exec("SET SESSION sql_log_bin = 1")
	}
	b.exec("INSERT INTO " + db + ".t VALUES (50, 'native')")
	id := 0
	for i := range 80 {
		var qs []string
		for range 1 + i%6 {
			id++
			qs = append(qs, fmt.Sprintf("INSERT INTO %s.t VALUES (%d, 'r%d')", db, id, i))
		}
		if i%20 == 19 {
			qs = append(qs, fmt.Sprintf("UPDATE %s.t SET v = 'u%d' WHERE id = %d", db, i, id-5))
		}
		a.tx(qs...)
	}
	es := waitJournaled(t, store, stream, "t", id+4)
	cfg := testConfig(t, b, stream)
	cfg.BatchEntries, cfg.Parallel = 500, 4

	// model is what b holds once the entries up to pos are applied.
	model := func(pos uint64) string {
		rows := map[int64]string{50: "native"}
		for _, e := range es {
			if e.Seq <= pos && e.Table == "t" {
				rows[e.After.Map()["id"].(int64)] = e.After.Map()["v"].(string)
			}
		}
		var out string
		for _, k := range slices.Sorted(maps.Keys(rows)) {
			out += fmt.Sprintf("%d|%s\n", k, rows[k])
		}
		return out
	}
	var parallel float64
	// The stops add up to fewer entries than the stream has: each run reaches its stop.
	for run, stopAfter := range []int{7, 20, 35, 50, 64} {
		r := startApplierUntil(t, cfg, store, stopAfter, func(r *running) {
			notify.Store(r.a)
			r.a.Notify(stream, 0)
		})
		r.stop()
		parallel += r.metric("music_applier_parallel_transactions_total", map[string]string{"source_site": "a"})
		pos := uint64(b.count("SELECT COALESCE(MAX(seq), 0) FROM " + cfg.MetaDatabase + ".positions"))
		if got, want := b.dump("SELECT id, v FROM "+db+".t ORDER BY id"), model(pos); got != want {
			t.Fatalf("run %d, stopped after %d entries at position %d: rows at b differ from the stream's up to there:\n%s", run, stopAfter, pos, diffLines(want, got))
		}
	}
	r := startApplier(t, cfg, store, nil)
	notify.Store(r.a)
	r.waitApplied(store, stream)
	parallel += r.metric("music_applier_parallel_transactions_total", map[string]string{"source_site": "a"})
	if got, want := b.dump("SELECT id, v FROM "+db+".t ORDER BY id"), a.dump("SELECT id, v FROM "+db+".t ORDER BY id"); got != want {
		t.Errorf("rows at b differ from a's:\n%s", diffLines(want, got))
	}
	if parallel == 0 {
		t.Error("no transaction was applied in a parallel group")
	}
	t.Logf("%v transactions committed in parallel groups", parallel)
}

// A constraint only the target has (here a unique column) can make transactions of a parallel
// group wait for one another's locks; whichever way it goes, the group gives way to applying one
// transaction at a time, which dead-letters the row the target refuses, and the rest goes in.
func TestParallelGroupMeetsATargetOnlyConstraint(t *testing.T) {
	db := testenv.UniqueName("apl_")
	b := openSite(t, "b", testenv.MariaDBB(t), db)
	b.exec("CREATE TABLE " + db + ".t (id INT PRIMARY KEY, u VARCHAR(20), UNIQUE KEY (u))")
	store, stream := siteAStream(t)
	ctx := context.Background()
	// The first transaction inserts 100 rows, its last with u = x; the second one row with u = x
	// (the source has no such constraint): the second's INSERT, shorter, usually takes x first,
	// and the first then waits for it while it waits for the first to commit.
	var es []journal.Entry
	add := func(tx int, id int64, u string, last bool) {
		es = append(es, journal.Entry{Seq: uint64(len(es) + 1), HLC: journal.Timestamp{Wall: int64(len(es)+1) * 1e9}, Origin: "a",
			Tx: journal.Tx{ID: fmt.Sprintf("a-%d", tx), Index: uint32(id % 100), Last: last}, Op: journal.OpInsert, Database: db, Table: "t",
			Key:   journal.Row{{Name: "id", Value: journal.Int(id)}},
			After: journal.Row{{Name: "id", Value: journal.Int(id)}, {Name: "u", Value: journal.String(u)}}})
	}
	single := func(tx int, id int64, u string) {
		add(tx, id, u, true)
		es[len(es)-1].Tx.Index = 0
	}
	// Two first, so that both connections are open when the two that matter start together.
	single(-2, 1000, "w1")
	single(-1, 1001, "w2")
	for id := int64(100); id < 200; id++ {
		u := fmt.Sprintf("u%d", id)
		if id == 199 {
			u = "x"
		}
		add(0, id, u, id == 199)
	}
	for i, u := range []string{"x", "y", "z"} {
		single(i+1, int64(i+2), u)
	}
	if err := store.Append(ctx, stream, 1, es); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, b, stream)
	cfg.BatchEntries, cfg.Parallel, cfg.OnError = 200, 2, OnErrorDeadLtr
	start := time.Now()
	r := startApplier(t, cfg, store, nil)
	r.waitApplied(store, stream)
	t.Logf("applied in %v", time.Since(start).Round(time.Millisecond))
	if got, want := b.count("SELECT COUNT(*) FROM "+db+".t WHERE id >= 100 AND id < 200"), 100; got != want {
		t.Errorf("%d rows of the first transaction at b, want %d", got, want)
	}
	if got, want := b.dump("SELECT id, u FROM "+db+".t WHERE id < 100 ORDER BY id"), "3|y\n4|z\n"; got != want {
		t.Errorf("rows at b:\n%swant\n%s", got, want)
	}
	if got := b.dump("SELECT seq, reason FROM " + cfg.MetaDatabase + ".dead_letters"); got != "103|error\n" {
		t.Errorf("dead letters: %q, want the row with u = x of the later transaction (seq 103)", got)
	}
}
